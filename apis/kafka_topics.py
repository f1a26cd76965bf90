"""Kafka topic names (seldon-reference-implementation.md §7.1), each checked before it becomes a topic.

:class:`Topics` builds ``<prefix>.<namespace>.model.<m>.inputs|outputs``,
``….pipeline.<p>.inputs|outputs`` and ``….errors.errors`` from names checked by full match first.
"""

from __future__ import annotations

from dataclasses import dataclass

from apis.validation import InvalidResource, validate_name

MAX_TOPIC_LENGTH = 249  # Kafka's own limit on a topic name


@dataclass(frozen=True)
class Topics:
    """Topic names of one prefix and namespace; every name is checked before it becomes a topic."""

    prefix: str
    namespace: str

    def model_inputs(self, model: str) -> str:
        return self._topic("model", validate_name(model), "inputs")

    def model_outputs(self, model: str) -> str:
        return self._topic("model", validate_name(model), "outputs")

    def pipeline_inputs(self, pipeline: str) -> str:
        return self._topic("pipeline", validate_name(pipeline, kind="pipeline"), "inputs")

    def pipeline_outputs(self, pipeline: str) -> str:
        return self._topic("pipeline", validate_name(pipeline, kind="pipeline"), "outputs")

    @property
    def errors(self) -> str:
        return self._topic("errors", "errors")

    def marker(self, component: str) -> str:
        """A topic only ``component`` creates and nothing writes: gone means the broker lost its state."""
        return self._topic("meshserve", "marker", validate_name(component))

    def model_of_input(self, topic: str) -> str | None:
        """The model whose input topic ``topic`` is, or None."""
        head = f"{self.prefix}.{self.namespace}.model."
        if not (topic.startswith(head) and topic.endswith(".inputs")):
            return None
        name = topic[len(head) : -len(".inputs")]
        try:
            return validate_name(name)
        except InvalidResource:
            return None

    def _topic(self, *parts: str) -> str:
        topic = ".".join((self.prefix, self.namespace, *parts))
        if len(topic) > MAX_TOPIC_LENGTH:
            raise InvalidResource(f"topic {topic[:80]}... is longer than Kafka's {MAX_TOPIC_LENGTH}")
        return topic
