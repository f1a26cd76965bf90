"""Envoy's data-plane access log (``meshserve up --envoy-access-log``): a real stack, real requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.conftest import eventually, iris_model, running_stack, stack_config
from tests.e2e.test_serving_path import grpc_infer, load


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_envoy_logs_each_request_with_its_own_time_beside_the_model_servers(tmp_path: Path) -> None:
    config = stack_config(tmp_path / "stack", envoy_access_log=True, kafka=False)
    log = config.logs / "envoy-access.log"
    async with running_stack(config) as stack:
        await load(stack, iris_model("iris"))
        await stack.wait_state("iris", "ModelAvailable")
        assert (await stack.infer("iris", **{"x-request-id": "logged-rest"})).status == 200
        reply = await grpc_infer(stack, "iris")
        assert reply.model_name == "iris_1"
        assert (await stack.infer("nothing-here")).status == 404

        async def written() -> bool:  # Envoy writes its buffered lines every 10 s by default
            return len(_lines(log)) >= 3

        await eventually(written, timeout=20, what="three access-log lines")
    rest, grpc_call, missing = _lines(log)[-3:]

    assert rest["request_id"] == "logged-rest"
    assert (rest["method"], rest["path"], rest["model"], rest["status"]) == (
        "POST",
        "/v2/models/iris/infer",
        "iris",
        200,
    )
    assert grpc_call["path"] == "/inference.GRPCInferenceService/ModelInfer"
    assert (grpc_call["status"], grpc_call["grpc_status"], grpc_call["model"]) == (200, 0, "iris")
    for served in (rest, grpc_call):
        assert served["upstream_cluster"] and served["upstream_host"].startswith("127.0.0.1:")
        # Envoy's own time is what the whole request took beyond the model server's part.
        assert 0 < served["upstream_us"] < served["duration_us"]
    # No model: Envoy answered itself, nothing went upstream.
    assert (missing["status"], missing["model"]) == (404, "nothing-here")
    assert missing["upstream_us"] is None and missing["duration_us"] > 0
