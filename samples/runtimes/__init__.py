"""MLServer custom runtimes that reproduce the reference's example models without Triton.

The Seldon docs' pipeline examples run Triton models (``tfsimple``, ``add10``, ``mul10``,
``conditional``) and small MLServer models (``counter``, the identity models, ``pandasquery``). These
``MLModel`` subclasses answer the same tensors with the same names, datatypes and shapes, so the
reference's requests and expected outputs hold unchanged (docs/pipelines.md, "Sample models"):

* :mod:`samples.runtimes.arithmetic`: ``AddSub`` (tfsimple), ``Add10``, ``Mul10``, ``Conditional``;
* :mod:`samples.runtimes.cyclic`: ``Counter`` and ``Identity`` (the cyclic counter example);
* :mod:`samples.runtimes.query`: ``ChoiceQuery`` (the choice-is-one/two query models);
* :mod:`samples.runtimes.drift`: ``Drift`` (a drift detector, run as a batched step).

Those are thin MLServer adapters (:mod:`~samples.runtimes.serving`); what each model computes and
refuses lives in :mod:`~samples.runtimes.examples` and :mod:`~samples.runtimes.tensors`, which import
numpy only. The artifacts under ``samples/models/runtimes/`` name them in
their ``model-settings.json`` (``implementation``), so any MLServer whose environment has this
package installed serves them.
"""
