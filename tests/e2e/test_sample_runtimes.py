"""The sample runtimes (samples/runtimes) in a real MLServer behind the real stack: every sample Model
YAML loads with ``meshserve model load -f``, answers the reference's example inputs with its expected
outputs over REST and gRPC through Envoy, and refuses bad tensors with a 400 / INVALID_ARGUMENT that
says why; every sample Pipeline YAML loads with ``meshserve pipeline load -f``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from apis import manifests
from apis.mlops.scheduler import scheduler_pb2
from apis.v2_dataplane import v2_dataplane_pb2 as pb
from tests.e2e.conftest import Stack
from tests.e2e.test_cli import cli

SAMPLES = Path(__file__).parents[2] / "samples"
MODELS = (
    "tfsimple1", "tfsimple2", "tfsimple3", "add10", "mul10", "conditional",
    "counter", "identity-loop", "identity-output", "choice-is-one", "choice-is-two", "drift",
)  # fmt: skip
I = list(range(1, 17))  # noqa: E741 - the reference's name
D = [2 * x for x in I]
Z = [0] * 16

# A tensor as (name, datatype, shape, data); requests and expected outputs alike.
Tensor = tuple[str, str, list[int], list[Any]]


def t(name: str, datatype: str, shape: list[int], data: list[Any]) -> Tensor:
    return (name, datatype, shape, data)


# (model, request tensors, expected outputs): the reference's examples (seldon-pipelines.md §13).
CASES: list[tuple[str, list[Tensor], list[Tensor]]] = [
    *[
        (
            f"tfsimple{n}",
            [t("INPUT0", "INT32", [1, 16], I), t("INPUT1", "INT32", [1, 16], I)],
            [t("OUTPUT0", "INT32", [1, 16], D), t("OUTPUT1", "INT32", [1, 16], Z)],
        )
        for n in (1, 2, 3)
    ],
    (
        "tfsimple1",  # a batch of two, and INPUT1 > INPUT0: negative differences
        [t("INPUT0", "INT32", [2, 16], I + D), t("INPUT1", "INT32", [2, 16], D + I)],
        [
            t("OUTPUT0", "INT32", [2, 16], [3 * x for x in I] * 2),
            t("OUTPUT1", "INT32", [2, 16], [-x for x in I] + I),
        ],
    ),
    ("add10", [t("INPUT", "FP32", [4], [1, 2, 3, 4])], [t("OUTPUT", "FP32", [4], [11, 12, 13, 14])]),
    ("mul10", [t("INPUT", "FP32", [4], [1, 2, 3, 4])], [t("OUTPUT", "FP32", [4], [10, 20, 30, 40])]),
    ("mul10", [t("INPUT", "FP32", [4], [5, 6, 7, 8])], [t("OUTPUT", "FP32", [4], [50, 60, 70, 80])]),
    *[
        (
            "conditional",
            [
                t("CHOICE", "INT32", [1], [choice]),
                t("INPUT0", "FP32", [4], [1, 2, 3, 4]),
                t("INPUT1", "FP32", [4], [5, 6, 7, 8]),
            ],
            [expected],
        )
        for choice, expected in (
            (0, t("OUTPUT0", "FP32", [4], [1, 2, 3, 4])),
            (1, t("OUTPUT1", "FP32", [4], [5, 6, 7, 8])),
            (7, t("OUTPUT1", "FP32", [4], [5, 6, 7, 8])),
        )
    ],
    *[
        (
            "counter",
            [t(name, "INT32", shape, [start])],
            [t("output", "INT32", [1, 1], [start + 1]), t(flag, "BYTES", [1, 1], [""])],
        )
        for name, shape, start, flag in (
            ("counter-pipeline.inputs", [1], 0, "continue"),
            ("output", [1, 1], 8, "continue"),
            ("output", [1, 1], 9, "stop"),
            ("counter-pipeline.inputs", [1], 15, "stop"),
        )
    ],
    *[
        (
            model,
            [t("output", "INT32", [1, 1], [4]), t("stop", "BYTES", [1, 1], [""])],
            [t("output", "INT32", [1, 1], [4]), t("stop", "BYTES", [1, 1], [""])],
        )
        for model in ("identity-loop", "identity-output")
    ],
    (
        "choice-is-one",
        [t("choice", "INT32", [1], [1]), t("INPUT", "FP32", [4], [5, 6, 7, 8])],
        [t("choice", "INT32", [1], [1]), t("status", "BYTES", [1, 1], ["row satisfied choice == 1"])],
    ),
    (
        "choice-is-one",
        [t("choice", "INT32", [1], [2]), t("INPUT", "FP32", [4], [5, 6, 7, 8])],
        [t("status", "BYTES", [1, 1], ["no rows satisfied choice == 1"])],
    ),
    (
        "choice-is-two",
        [t("choice", "INT32", [1], [2]), t("INPUT", "FP32", [4], [5, 6, 7, 8])],
        [t("choice", "INT32", [1], [2]), t("status", "BYTES", [1, 1], ["row satisfied choice == 2"])],
    ),
    (
        "drift",  # a batch of three requests' rows like the reference's data: no drift
        [t("INPUT0", "INT32", [3, 16], I * 3), t("INPUT1", "INT32", [3, 16], I * 3)],
        [t("is_drift", "INT64", [1, 1], [0])],
    ),
    (
        "drift",
        [t("INPUT0", "INT32", [1, 16], [x + 2 for x in I]), t("INPUT1", "INT32", [1, 16], I)],
        [t("is_drift", "INT64", [1, 1], [1])],
    ),
]

# (model, request tensors, words the error must contain).
BAD: list[tuple[str, list[Tensor], str]] = [
    ("tfsimple1", [t("INPUT0", "INT32", [1, 16], I)], "'INPUT1' is missing"),
    ("tfsimple1", [t("INPUT0", "FP32", [1, 16], I), t("INPUT1", "INT32", [1, 16], I)], "must be INT32"),
    ("tfsimple1", [t("INPUT0", "INT32", [1, 8], I[:8]), t("INPUT1", "INT32", [1, 8], I[:8])], "[1..8,16]"),
    ("tfsimple1", [t("INPUT0", "INT32", [9, 16], I * 9), t("INPUT1", "INT32", [9, 16], I * 9)], "[1..8,16]"),
    (
        "tfsimple1",
        [t("INPUT0", "INT32", [1, 16], I), t("INPUT1", "INT32", [1, 16], I), t("EXTRA", "INT32", [1], [1])],
        "unexpected input 'EXTRA'",
    ),
    ("add10", [t("INPUT", "FP32", [5], [1, 2, 3, 4, 5])], "must be FP32 [4]"),
    ("mul10", [t("INPUT", "INT32", [4], [1, 2, 3, 4])], "must be FP32 [4]"),
    (
        "conditional",
        [t("CHOICE", "INT32", [2], [0, 1]), t("INPUT0", "FP32", [4], I[:4]), t("INPUT1", "FP32", [4], I[:4])],
        "'CHOICE' must be INT32 [1]",
    ),
    ("counter", [t("a", "INT32", [1], [1]), t("b", "INT32", [1], [1])], "exactly one input"),
    ("counter", [t("x", "FP32", [1], [1])], "must hold one INT32 or INT64"),
    ("choice-is-one", [t("INPUT", "FP32", [4], [5, 6, 7, 8])], "needs exactly one input 'choice'"),
    ("drift", [t("INPUT0", "INT32", [1, 16], I)], "'INPUT1' is missing"),
]
# Only REST can send data that does not match its own declaration (gRPC contents are typed).
BAD_REST_ONLY: list[tuple[str, list[Tensor], str]] = [
    ("tfsimple1", [t("INPUT0", "INT32", [1, 16], [1.5] * 16), t("INPUT1", "INT32", [1, 16], I)], "whole"),
    ("tfsimple1", [t("INPUT0", "INT32", [1, 16], I[:15]), t("INPUT1", "INT32", [1, 16], I)], "holds 15"),
    ("tfsimple1", [t("INPUT0", "INT32", [1, 16], [2**40] * 16), t("INPUT1", "INT32", [1, 16], I)], "range"),
    ("add10", [t("INPUT", "FP32", [4], ["a", "b", "c", "d"])], "must be numbers"),
]


@pytest.fixture(scope="module")
async def samples(stack: Stack) -> AsyncIterator[Stack]:
    """Every sample model, loaded with the CLI from its YAML, available; unloaded afterwards."""
    loads = await asyncio.gather(
        *(cli(stack, "model", "load", "-f", str(SAMPLES / "models" / f"{m}.yaml")) for m in MODELS)
    )
    for model, load in zip(MODELS, loads, strict=True):
        assert (load.returncode, load.stdout.strip()) == (0, "{}"), (model, load.stderr)
    try:
        for model in MODELS:
            await stack.wait_state(model, "ModelAvailable", timeout=120)
        yield stack
    finally:
        for model in MODELS:
            await stack.scheduler.UnloadModel(
                scheduler_pb2.UnloadModelRequest(model=scheduler_pb2.ModelReference(name=model)), timeout=10
            )
        for model in MODELS:
            await stack.wait_gone(model, timeout=60)


def rest_body(tensors: Sequence[Tensor]) -> dict[str, Any]:
    return {"inputs": [{"name": n, "datatype": d, "shape": s, "data": v} for n, d, s, v in tensors]}


async def rest(stack: Stack, model: str, tensors: Sequence[Tensor]) -> tuple[int, Any]:
    async with stack.http.post(
        f"{stack.url}/v2/models/{model}/infer", json=rest_body(tensors), headers={"seldon-model": model}
    ) as response:
        return response.status, await response.json(content_type=None)


CONTENTS = {"INT32": "int_contents", "INT64": "int64_contents", "FP32": "fp32_contents"}
STRUCT = {"INT32": "i", "INT64": "q", "FP32": "f"}


def grpc_request(model: str, tensors: Sequence[Tensor], *, raw: bool = False) -> pb.ModelInferRequest:
    """Typed contents, or raw_input_contents (little-endian values; BYTES as length-prefixed items)."""
    request = pb.ModelInferRequest(model_name=model)
    for name, datatype, shape, data in tensors:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            request.raw_input_contents.append(_pack(datatype, data))
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(v.encode() for v in data)
        else:
            getattr(tensor.contents, CONTENTS[datatype]).extend(data)
    return request


def grpc_outputs(reply: pb.ModelInferResponse) -> list[Tensor]:
    """The reply's tensors, read from raw_output_contents (answers to raw requests) or typed contents."""
    tensors = []
    for index, out in enumerate(reply.outputs):
        if reply.raw_output_contents:
            data = _unpack(out.datatype, reply.raw_output_contents[index])
        elif out.datatype == "BYTES":
            data = [v.decode() for v in out.contents.bytes_contents]
        else:
            data = list(getattr(out.contents, CONTENTS[out.datatype]))
        tensors.append(t(out.name, out.datatype, list(out.shape), data))
    return tensors


def _pack(datatype: str, data: list[Any]) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in data)
    return struct.pack(f"<{len(data)}{STRUCT[datatype]}", *data)


def _unpack(datatype: str, raw: bytes) -> list[Any]:
    if datatype != "BYTES":
        return list(struct.unpack(f"<{len(raw) // struct.calcsize(STRUCT[datatype])}{STRUCT[datatype]}", raw))
    values, offset = [], 0
    while offset < len(raw):
        (size,) = struct.unpack_from("<I", raw, offset)
        values.append(raw[offset + 4 : offset + 4 + size].decode())
        offset += 4 + size
    return values


def rest_outputs(body: dict[str, Any]) -> list[Tensor]:
    return [t(o["name"], o["datatype"], o["shape"], o["data"]) for o in body["outputs"]]


@pytest.mark.parametrize(("model", "request_tensors", "expected"), CASES)
async def test_reference_examples_over_rest_and_grpc(
    samples: Stack, model: str, request_tensors: list[Tensor], expected: list[Tensor]
) -> None:
    status, body = await rest(samples, model, request_tensors)
    assert status == 200, body
    assert body["model_name"] == f"{model}_1" and body["model_version"] == "1"
    assert rest_outputs(body) == expected

    for raw in (False, True):
        reply = await samples.inference.ModelInfer(
            grpc_request(model, request_tensors, raw=raw), metadata=(("seldon-model", model),), timeout=30
        )
        assert reply.model_name == f"{model}_1"
        assert bool(reply.raw_output_contents) == raw
        assert grpc_outputs(reply) == expected, raw


async def test_counter_and_identity_keep_the_reference_content_types(samples: Stack) -> None:
    status, body = await rest(samples, "counter", [t("counter-pipeline.inputs", "INT32", [1], [0])])
    assert status == 200
    assert [o.get("parameters") for o in body["outputs"]] == [{"content_type": "np"}, {"content_type": "str"}]
    echoed = {
        "name": "x",
        "datatype": "INT32",
        "shape": [1],
        "data": [3],
        "parameters": {"content_type": "np"},
    }
    async with samples.http.post(
        f"{samples.url}/v2/models/identity-output/infer",
        json={"inputs": [echoed]},
        headers={"seldon-model": "identity-output"},
    ) as response:
        assert response.status == 200
        assert (await response.json())["outputs"] == [echoed]


@pytest.mark.parametrize(("model", "request_tensors", "words"), BAD + BAD_REST_ONLY)
async def test_bad_tensors_are_a_400_naming_the_problem(
    samples: Stack, model: str, request_tensors: list[Tensor], words: str
) -> None:
    status, body = await rest(samples, model, request_tensors)
    assert status == 400, body
    assert words in body["error"] and f"model {model}_1" in body["error"], body


@pytest.mark.parametrize(("model", "request_tensors", "words"), BAD)
async def test_bad_tensors_are_invalid_argument_over_grpc(
    samples: Stack, model: str, request_tensors: list[Tensor], words: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await samples.inference.ModelInfer(
            grpc_request(model, request_tensors), metadata=(("seldon-model", model),), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("sample", "parameter", "words"),
    [
        ("choice-is-one.yaml", ("query", "__import__('os').system('true')"), "'<tensor> == <integer>'"),
        ("identity-loop.yaml", ("delay", "3600"), "within 0..10s"),
        ("identity-loop.yaml", ("delay", "soon"), "a number of seconds"),
    ],
)
async def test_bad_parameters_fail_the_load_with_the_reason(
    stack: Stack, sample: str, parameter: tuple[str, str], words: str
) -> None:
    [request] = manifests.read_model_requests(str(SAMPLES / "models" / sample))
    name = f"bad-{parameter[0]}"
    request.model.meta.name = name
    del request.model.modelSpec.parameters[:]
    request.model.modelSpec.parameters.append(
        scheduler_pb2.ParameterSpec(name=parameter[0], value=parameter[1])
    )
    await stack.scheduler.LoadModel(request, timeout=10)
    try:
        status = await stack.wait_state(name, "ModelFailed", timeout=120)
        assert words in status.versions[-1].state.reason, status
    finally:
        await stack.scheduler.UnloadModel(
            scheduler_pb2.UnloadModelRequest(model=scheduler_pb2.ModelReference(name=name)), timeout=10
        )
        await stack.wait_gone(name, timeout=60)


async def test_every_sample_pipeline_loads_with_the_cli(stack: Stack, tmp_path: Path) -> None:
    # One file, one CLI process (each costs a second or two); tfsimple first, as the
    # pipeline-to-pipeline samples read it.
    files = sorted((SAMPLES / "pipelines").glob("*.yaml"), key=lambda p: (p.name != "tfsimple.yaml", p.name))
    combined = tmp_path / "pipelines.yaml"
    combined.write_text("\n---\n".join(path.read_text() for path in files))
    names = [r.pipeline.name for r in manifests.read_pipeline_requests(str(combined))]
    assert len(names) == len(set(names)) >= 17
    try:
        loaded = await cli(stack, "pipeline", "load", "-f", str(combined))
        assert loaded.returncode == 0, loaded.stderr
        listed = await cli(stack, "pipeline", "list", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        assert set(names) <= {p["pipelineName"] for p in json.loads(listed.stdout)}
    finally:
        for name in reversed(names):
            with contextlib.suppress(grpc.aio.AioRpcError):  # not loaded if the CLI failed early
                await stack.scheduler.UnloadPipeline(
                    scheduler_pb2.UnloadPipelineRequest(name=name), timeout=10
                )
