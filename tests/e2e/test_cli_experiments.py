"""``meshserve experiment`` (the console script) against the real stack: start, wait, list, call the
experiment through real Envoy (split, default takeover, sticky REST and gRPC), stop."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from samples import train
from tests.e2e.conftest import Stack
from tests.e2e.test_cli import IRIS_JSON, cli, model_yaml

EXPERIMENT_YAML = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: Experiment
metadata:
  name: cli-exp
spec:
  default: cli-exp-a
  candidates:
  - name: cli-exp-a
    weight: 50
  - name: cli-exp-b
    weight: 50
"""
A, B = ":cli-exp-a_1:", ":cli-exp-b_1:"


def route_counts(stdout: str) -> dict[str, int]:
    """``Success: map[:a_1::3 :b_1::2]`` -> ``{":a_1:": 3, ":b_1:": 2}``."""
    text = stdout.strip()
    assert text.startswith("Success: map[") and text.endswith("]"), text
    pairs = text[len("Success: map[") : -1].split()
    return {key: int(count) for key, count in (pair.rsplit(":", 1) for pair in pairs)}


async def test_cli_experiment_start_status_infer_list_stop(stack: Stack, tmp_path: Path) -> None:
    iris = str(train.ARTIFACTS / "iris")
    models = tmp_path / "models.yaml"
    models.write_text(model_yaml("cli-exp-a", iris) + "---\n" + model_yaml("cli-exp-b", iris))
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(EXPERIMENT_YAML)
    load = await cli(stack, "model", "load", "-f", str(models))
    assert (load.returncode, load.stdout.split()) == (0, ["{}", "{}"]), load.stderr
    try:
        for name in ("cli-exp-a", "cli-exp-b"):
            wait = await cli(stack, "model", "status", name, "-w", "ModelAvailable", "--wait-timeout", "60")
            assert wait.returncode == 0, wait.stderr

        start = await cli(stack, "experiment", "start", "-f", str(experiment))
        assert (start.returncode, start.stdout.strip()) == (0, "{}"), start.stderr
        wait = await cli(stack, "experiment", "status", "cli-exp", "-w", "--wait-timeout", "60")
        assert wait.returncode == 0, wait.stderr
        assert json.loads(wait.stdout) == {
            "experimentName": "cli-exp",
            "active": True,
            "candidatesReady": True,
            "mirrorReady": True,
            "statusDescription": "experiment active",
            "kubernetesMeta": {},
        }

        listing = await cli(stack, "experiment", "list")
        assert listing.returncode == 0, listing.stderr
        assert ["cli-exp", "true", "true", "true", "experiment", "active"] in [
            line.split() for line in listing.stdout.splitlines()
        ]
        shown = json.loads((await cli(stack, "experiment", "list", "-o", "json")).stdout)
        assert "cli-exp" in {item["experimentName"] for item in shown}

        # 60 calls at 50/50: either arm missing has probability 2 * 0.5**60, below 1e-17.
        for args in (
            ("cli-exp-a", "--header", "seldon-model=cli-exp.experiment"),  # as the seldon CLI does
            ("cli-exp.experiment",),
            ("cli-exp-a",),  # the default's own endpoint is taken over while the experiment is active
            ("cli-exp-a", "--inference-mode", "grpc"),
        ):
            split = await cli(stack, "model", "infer", *args, "-i", "60", IRIS_JSON)
            assert split.returncode == 0, split.stderr
            counts = route_counts(split.stdout)
            assert set(counts) == {A, B} and sum(counts.values()) == 60, (args, split.stdout)

        for mode in ("rest", "grpc"):
            sticky = await cli(
                stack,
                "model",
                "infer",
                "cli-exp.experiment",
                "--inference-mode",
                mode,
                "-s",
                "-i",
                "30",
                IRIS_JSON,
            )
            assert sticky.returncode == 0, sticky.stderr
            [(route, count)] = route_counts(sticky.stdout).items()
            assert route in {A, B} and count == 30, (mode, sticky.stdout)

        stop = await cli(stack, "experiment", "stop", "cli-exp")
        assert (stop.returncode, stop.stdout.strip()) == (0, "{}"), stop.stderr
        gone = await cli(stack, "experiment", "status", "cli-exp")
        assert gone.returncode == 1 and "experiment 'cli-exp' not found" in gone.stderr, gone.stderr
        again = await cli(stack, "experiment", "stop", "cli-exp")
        assert again.returncode == 1 and "not found" in again.stderr, again.stderr

        # The default model's endpoint is given back once Envoy has the plain route again.
        deadline = time.monotonic() + 30
        while True:
            plain = await cli(stack, "model", "infer", "cli-exp-a", "-i", "20", IRIS_JSON)
            if plain.returncode == 0 and route_counts(plain.stdout) == {A: 20}:
                break
            assert time.monotonic() < deadline, plain.stdout + plain.stderr
            await asyncio.sleep(0.2)
    finally:
        await cli(stack, "experiment", "stop", "cli-exp")
        for name in ("cli-exp-a", "cli-exp-b"):
            await cli(stack, "model", "unload", name)
        for name in ("cli-exp-a", "cli-exp-b"):
            await stack.wait_gone(name)
