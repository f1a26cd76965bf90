"""Where each executor :class:`Source` lives on Kafka, and back (seldon-pipelines.md §5.1, §4.10).

A pipeline's own inputs and outputs have their topics (``….pipeline.<p>.inputs|outputs``); a step's
requests and responses go to its model's topics (``….model.<m>.inputs|outputs``), shared by every
pipeline using that model and told apart by the ``pipeline`` header.
"""

from __future__ import annotations

from collections.abc import Mapping

from apis.kafka import PIPELINE_HEADER
from apis.kafka_topics import Topics
from apis.validation import InvalidResource, validate_name
from pipelines.references import Direction, Source


def topic_of(topics: Topics, source: Source) -> str:
    if source.step is None:
        if source.direction is Direction.INPUTS:
            return topics.pipeline_inputs(source.pipeline)
        return topics.pipeline_outputs(source.pipeline)
    if source.direction is Direction.INPUTS:
        return topics.model_inputs(source.step)
    return topics.model_outputs(source.step)


def source_of(topics: Topics, topic: str, headers: Mapping[str, bytes]) -> Source | None:
    """The source a consumed record belongs to; None for a topic or header this engine cannot place."""
    head = f"{topics.prefix}.{topics.namespace}."
    if not topic.startswith(head):
        return None
    kind, _, rest = topic[len(head) :].partition(".")
    name, _, word = rest.rpartition(".")
    if word not in (Direction.INPUTS, Direction.OUTPUTS):
        return None
    try:
        validate_name(name)
        if kind == "pipeline":
            return Source(name, None, Direction(word))
        if kind == "model":
            owner = headers.get(PIPELINE_HEADER)
            if owner is None:
                return None
            return Source(
                validate_name(owner.decode(errors="replace"), kind="pipeline"), name, Direction(word)
            )
    except InvalidResource:
        return None
    return None
