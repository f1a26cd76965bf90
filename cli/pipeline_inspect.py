"""``pipeline inspect``: a pipeline's data as it passed through Kafka (seldon-pipelines.md §7).

The reference ``NAME[.STEP[.inputs|outputs[.TENSOR]]]`` (or ``NAME.inputs|outputs[.TENSOR]`` for
the pipeline's own topics) is resolved against the pipeline's latest version as the scheduler
knows it, so an unknown pipeline or step is an error before Kafka is touched. NAME alone means
every step's ``model.<step>.inputs`` then ``.outputs`` (steps in name order), then
``pipeline.<p>.inputs`` and ``.outputs``.

Which messages: the newest ``--offset`` of each topic (default 1: the last request), or, with
``--request-id``, that request's messages among the newest ``--offset`` of each partition (default
:data:`REQUEST_SEARCH_WINDOW`). Kafka comes from ``--kafka-*`` flags (apis.kafka_flags.KafkaFlags, env
``MESHSERVE_CLI_KAFKA_*``), else the local stack's ``$MESHSERVE_HOME/kafka.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from rich.markup import escape

from apis import settings
from apis.kafka import KafkaConfig, KafkaConfigError
from apis.kafka_flags import KafkaFlags
from apis.kafka_topics import Topics
from apis.mlops.scheduler import scheduler_pb2
from cli import kafka_messages
from cli.config import ENV_PREFIX
from cli.errors import CliError
from cli.output import dumps, print_json, print_table
from cli.topic_reader import MAX_WINDOW, Message, read_newest
from stack.config import default_home

RAW = "raw"
JSON = "json"
TABLE = "table"
REQUEST_SEARCH_WINDOW = 100
MAX_TENSOR_NAME = 256
KINDS = ("inputs", "outputs")


@dataclass(frozen=True)
class Target:
    """What a reference names: the pipeline, a step (or the pipeline's own topics when ``step`` is
    None and ``kinds`` is one), which of inputs/outputs, and optionally one tensor."""

    pipeline: str
    step: str | None = None
    kinds: tuple[str, ...] = KINDS
    tensor: str | None = None
    whole: bool = True  # the bare pipeline name: every step's topics and the pipeline's

    def topics(self, names: Topics, steps: list[str]) -> list[str]:
        if self.whole:
            per_step = [t for s in sorted(steps) for t in (names.model_inputs(s), names.model_outputs(s))]
            return [*per_step, names.pipeline_inputs(self.pipeline), names.pipeline_outputs(self.pipeline)]
        if self.step is None:
            own = {"inputs": names.pipeline_inputs, "outputs": names.pipeline_outputs}
            return [own[kind](self.pipeline) for kind in self.kinds]
        model = {"inputs": names.model_inputs, "outputs": names.model_outputs}
        return [model[kind](self.step) for kind in self.kinds]


def register(inspect: argparse.ArgumentParser) -> None:
    inspect.add_argument(
        "reference",
        metavar="NAME[.STEP[.inputs|outputs[.TENSOR]]]",
        help="the pipeline, one step, one of its topics, or one tensor (NAME.inputs|outputs too)",
    )
    inspect.add_argument(
        "--offset",
        type=settings.int_within(1, MAX_WINDOW),
        metavar="N",
        help=f"how many of the newest messages to read per topic (default 1; {REQUEST_SEARCH_WINDOW} "
        "with --request-id)",
    )
    inspect.add_argument(
        "--request-id", metavar="ID", help="show only this request's messages (their Kafka key)"
    )
    inspect.add_argument("--format", choices=(RAW, JSON, TABLE), default=RAW, help="(default: %(default)s)")
    inspect.add_argument("-v", "--verbose", action="store_true", help="show Kafka headers too")
    inspect.add_argument(
        "-t", "--truncate", action="store_true", help="cut long tensor data to its first values"
    )
    settings.add_flags(inspect, KafkaFlags, prefix=ENV_PREFIX, env=os.environ)


def pipeline_name(reference: str) -> str:
    return reference.partition(".")[0]


def resolve(reference: str, pipeline: scheduler_pb2.Pipeline) -> Target:
    """The reference checked against the pipeline's steps; CliError naming what is wrong."""
    name, _, rest = reference.partition(".")
    if not rest:
        return Target(name)
    steps = sorted(step.name for step in pipeline.steps)
    head, _, tail = rest.partition(".")
    if head in steps:
        kind, _, tensor = tail.partition(".")
        if kind and kind not in KINDS:
            raise CliError(f"{reference!r}: after the step comes 'inputs' or 'outputs', not {kind!r}")
        return Target(name, head, (kind,) if kind else KINDS, _tensor(tensor, reference), whole=False)
    if head in KINDS:
        return Target(name, None, (head,), _tensor(tail, reference), whole=False)
    raise CliError(
        f"pipeline {name!r} has no step {head!r}; its steps are {', '.join(steps) or 'none'} "
        "(or use NAME.inputs / NAME.outputs)"
    )


def kafka_config(args: argparse.Namespace) -> KafkaConfig:
    """From the ``--kafka-*`` flags, else the local stack's kafka.json."""
    flags = settings.build(KafkaFlags, args)
    if not flags.kafka_config and not flags.kafka_bootstrap:
        stack_file = default_home() / "kafka.json"
        if not stack_file.is_file():
            raise CliError(
                "no Kafka to read: give --kafka-bootstrap or --kafka-config ('meshserve up' with Kafka, "
                f"the default, writes $MESHSERVE_HOME/kafka.json; there is no {stack_file})"
            )
        flags = dataclasses.replace(flags, kafka_config=str(stack_file))
    try:
        return flags.kafka_settings()
    except KafkaConfigError as exc:
        raise CliError(str(exc)) from exc


async def inspect(args: argparse.Namespace, pipeline: scheduler_pb2.Pipeline) -> int:
    target = resolve(args.reference, pipeline)
    config = kafka_config(args)
    try:
        topics = target.topics(config.topics, [step.name for step in pipeline.steps])
    except ValueError as exc:  # a name too long for a topic
        raise CliError(str(exc)) from exc
    key = args.request_id.encode() if args.request_id else None
    window = args.offset or (REQUEST_SEARCH_WINDOW if key else 1)
    found = await read_newest(config, topics, window=window, key=key, deadline_s=args.timeout)
    shown = {topic: _shown(messages, target, args.truncate) for topic, messages in found.items()}
    _print(shown, args.format, verbose=args.verbose)
    return 0


def _shown(messages: list[Message], target: Target, truncate: bool) -> list[tuple[Message, Any]]:
    rows = []
    for message in messages:
        value = kafka_messages.decode(message)
        if target.tensor is not None:
            value = kafka_messages.tensor(value, target.tensor)
            if value is None:
                continue
        rows.append((message, kafka_messages.truncated(value) if truncate else value))
    return rows


def _print(shown: dict[str, list[tuple[Message, Any]]], form: str, *, verbose: bool) -> None:
    if form == JSON:
        topics = [
            {
                "name": topic,
                "msgs": [kafka_messages.json_entry(m, v, verbose=verbose) for m, v in rows] or None,
            }
            for topic, rows in shown.items()
        ]
        print_json({"topics": topics})
    elif form == TABLE:
        columns = ["topic", "key", "value", *(["headers"] if verbose else [])]
        table = []
        for topic, rows in shown.items():
            for message, value in rows:
                row = [topic, kafka_messages.shown_key(message), dumps(value)]
                if verbose:
                    row.append(kafka_messages.headers_text(message))
                table.append([escape(cell) for cell in row])  # "[...]" is rich markup otherwise
        print_table(columns, table)
    else:
        for topic, rows in shown.items():
            for message, value in rows:
                print(kafka_messages.raw_line(topic, message, value, verbose=verbose), flush=True)


def _tensor(text: str, reference: str) -> str | None:
    if not text:
        return None
    if len(text) > MAX_TENSOR_NAME:
        raise CliError(f"{reference[:80]!r}: a tensor name is at most {MAX_TENSOR_NAME} characters")
    return text
