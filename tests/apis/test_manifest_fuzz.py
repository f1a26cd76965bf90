"""Property tests over the Model/Server manifest parser (issue 8, fuzzing).

Whatever the YAML, the parser either returns requests that pass the scheduler's own validation and
fit its size limit, or raises its documented error types: never a stray exception. Budgets come from
the hypothesis profile (tests/conftest.py): ``ci`` in ``make test``, ``fuzz`` in ``make fuzz``.
"""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from apis import limits, manifests
from apis.validation import InvalidResource, validate_model, validate_server

EDGE_INTEGERS = st.sampled_from(
    [
        0,
        1,
        2,
        limits.MAX_REPLICAS,
        limits.MAX_REPLICAS + 1,
        2**31 - 1,
        2**31,
        2**32 - 1,
        2**32,
        2**63,
        2**64,
        -1,
    ]
)
NAMES = st.one_of(
    st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True),
    st.sampled_from(["iris", "iris\n", "Iris", "iris_1", "\u0456ris", "", "x" * 64, "a" * 63]),
    st.text(max_size=70),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), EDGE_INTEGERS, st.floats(), st.text(max_size=40), NAMES
)
ANY_VALUE = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
QUANTITIES = st.one_of(
    st.sampled_from(["100Ki", "1.5Gi", "2Ei", "0.5", "1Pi", "1025Ti", "-1", "1e3", "Mi"]),
    st.integers(),
    ANY_VALUE,
)
PARAMETERS = (
    st.lists(
        st.fixed_dictionaries(
            {"name": st.one_of(st.text(max_size=10), ANY_VALUE)}, optional={"value": ANY_VALUE}
        ),
        max_size=5,
    )
    | ANY_VALUE
)
MODEL_SPEC = st.fixed_dictionaries(
    {},
    optional={
        "storageUri": st.one_of(
            st.just("gs://models/iris"), st.text(max_size=60).map(lambda t: "s3://b/" + t), ANY_VALUE
        ),
        "requirements": st.one_of(st.lists(st.one_of(NAMES, st.text(max_size=12)), max_size=6), ANY_VALUE),
        "memory": QUANTITIES,
        "server": NAMES,
        "artifactVersion": st.one_of(EDGE_INTEGERS, ANY_VALUE),
        "parameters": PARAMETERS,
        "replicas": st.one_of(EDGE_INTEGERS, ANY_VALUE),
        "minReplicas": st.one_of(EDGE_INTEGERS, ANY_VALUE),
        "maxReplicas": st.one_of(EDGE_INTEGERS, ANY_VALUE),
        "logPayloads": ANY_VALUE,
        "dataflow": st.one_of(st.fixed_dictionaries({"cleanTopicsOnDelete": ANY_VALUE}), ANY_VALUE),
        "explainer": st.one_of(
            st.fixed_dictionaries({"type": ANY_VALUE}, optional={"modelRef": NAMES, "pipelineRef": NAMES}),
            ANY_VALUE,
        ),
        "llm": st.one_of(
            st.fixed_dictionaries({}, optional={"modelRef": NAMES, "pipelineRef": NAMES}), ANY_VALUE
        ),
        "secretName": st.one_of(st.text(max_size=20), ANY_VALUE),
        "surprise": ANY_VALUE,
    },
)
METADATA = st.fixed_dictionaries(
    {"name": st.one_of(NAMES, ANY_VALUE)},
    optional={"namespace": st.one_of(NAMES, ANY_VALUE), "generation": st.one_of(EDGE_INTEGERS, ANY_VALUE)},
)


def _document(kind: str, spec: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    resource = st.fixed_dictionaries(
        {
            "apiVersion": st.one_of(st.just(manifests.API_VERSION), ANY_VALUE),
            "kind": st.one_of(st.just(kind), ANY_VALUE),
            "metadata": st.one_of(METADATA, ANY_VALUE),
            "spec": st.one_of(spec, ANY_VALUE),
        }
    )
    return st.one_of(resource, resource, resource, ANY_VALUE)  # mostly resource-shaped


SERVER_SPEC = st.fixed_dictionaries(
    {},
    optional={
        "serverConfig": st.one_of(st.just("mlserver"), ANY_VALUE),
        "replicas": st.one_of(EDGE_INTEGERS, ANY_VALUE),
        "minReplicas": st.one_of(EDGE_INTEGERS, ANY_VALUE),
        "maxReplicas": st.one_of(EDGE_INTEGERS, ANY_VALUE),
        "capabilities": st.one_of(st.lists(st.text(max_size=10), max_size=5), ANY_VALUE),
        "extraCapabilities": st.one_of(st.lists(NAMES, max_size=5), ANY_VALUE),
    },
)


def _parse(text: str) -> list[Any]:
    return manifests.parse_model_requests(text, source="fuzz.yaml", base_dir="/nonexistent-fuzz-dir")


def _accepted_requests_are_valid(requests: list[Any]) -> None:
    for request in requests:
        validate_model(request.model)  # what the parser accepts, the scheduler accepts
        assert request.model.ByteSize() <= limits.MAX_RESOURCE_BYTES


@given(st.lists(_document(manifests.KIND, MODEL_SPEC), min_size=1, max_size=3))
def test_model_documents_parse_or_fail_with_a_manifest_error(documents: list[Any]) -> None:
    try:
        text = yaml.safe_dump_all(documents, allow_unicode=True)
    except yaml.YAMLError:
        return  # not every Python value is representable; nothing to parse
    try:
        requests = _parse(text)
    except manifests.ManifestFileError as error:
        assert str(error).startswith("fuzz.yaml: ")
        return
    _accepted_requests_are_valid(requests)


@given(st.text(max_size=400))
def test_any_text_parses_or_fails_with_a_manifest_error(text: str) -> None:
    try:
        requests = _parse(text)
    except manifests.ManifestFileError:
        return
    _accepted_requests_are_valid(requests)


@given(
    st.lists(
        st.sampled_from(
            [
                "apiVersion: mlops.seldon.io/v1alpha1\n",
                "kind: Model\n",
                "metadata: {name: iris}\n",
                "spec:\n",
                "  storageUri: gs://m/iris\n",
                "  replicas: 4294967296\n",
                "  memory: 3Ei\n",
                "  parameters: [{name: a, value: 2001-13-01}]\n",
                '  requirements: ["\\ud800"]\n',
                "  requirements: &a [*a]\n",
                "---\n",
                "[[[[[[[[[[[[[[[[[[\n",
                "  server: !!python/object:os.system x\n",
                "  x: *undefined\n",
                "\t\n",
                "  generation: 99999999999999999999999\n",
            ]
        ),
        max_size=12,
    )
)
def test_manifest_fragments_parse_or_fail_with_a_manifest_error(lines: list[str]) -> None:
    try:
        requests = _parse("".join(lines))
    except manifests.ManifestFileError:
        return
    _accepted_requests_are_valid(requests)


@given(_document(manifests.SERVER_KIND, SERVER_SPEC))
def test_server_documents_parse_or_fail_with_a_manifest_error(document: Any) -> None:
    try:
        manifest = manifests.server_manifest(document)
    except (manifests.ManifestError, InvalidResource):
        return
    validate_server(manifest.notify)
    assert manifest.capabilities
