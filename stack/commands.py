"""``meshserve up | down | status``: the local stack as one command each."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from apis import settings
from apis.kafka import KafkaConfigError
from stack import probes
from stack.config import StackConfig, default_home, port_defaults
from stack.demo import DemoError, load_models
from stack.processes import terminate_group
from stack.supervisor import run

START_TIMEOUT = 300.0
console = Console(stderr=True)


def _home(args: argparse.Namespace) -> Path:
    return Path(args.home).resolve() if getattr(args, "home", None) else default_home()


def config_from(args: argparse.Namespace) -> StackConfig:
    """``up``'s flags; ``down`` and ``status`` read what ``up`` saved instead."""
    return settings.build(StackConfig, args, home=_home(args))


def read_state(config: StackConfig) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(config.state_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def up(args: argparse.Namespace) -> int:
    config = config_from(args)
    state = read_state(StackConfig.load(config.home))
    if state and alive(state["supervisor"]):
        console.print(
            f"meshserve is already running (supervisor pid {state['supervisor']}); `meshserve down` first"
        )
        return 1
    if state and (left := _stop_leftovers(state)):
        console.print(
            f"stopped {left} process(es) a killed supervisor (pid {state['supervisor']}) left running"
        )
    if config.kafka:
        try:
            config.kafka_settings_for_stack()
        except KafkaConfigError as exc:
            console.print(f"[red]meshserve cannot start[/red]: Kafka: {exc}")
            return 1
    if taken := _ports_taken(config):
        console.print(f"[red]meshserve cannot start[/red]: {taken}")
        return 1
    config.save()
    _ensure_demo_artifacts()
    if not args.detach:
        return asyncio.run(_foreground(config, demo=not args.no_demo))
    config.logs.mkdir(parents=True, exist_ok=True)
    with (config.logs / "supervisor.log").open("ab") as log_file:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "stack", "--home", str(config.home)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the terminal that ran `make up`
        )
    deadline = time.monotonic() + START_TIMEOUT
    with console.status("starting scheduler, Envoy, MLServer and agent…"):
        while time.monotonic() < deadline:
            state = read_state(config)
            if state and state.get("ready") and state.get("supervisor") == supervisor.pid:
                break
            if supervisor.poll() is not None:
                console.print(f"[red]meshserve failed to start[/red]; see {config.logs / 'supervisor.log'}")
                return 1
            time.sleep(0.3)
        else:
            console.print(f"[red]meshserve did not start within {START_TIMEOUT:.0f} s[/red]")
            return 1
    if not args.no_demo and not asyncio.run(_load_demo(config)):
        return 1
    _banner(config)
    return 0


async def _foreground(config: StackConfig, *, demo: bool) -> int:
    ready = asyncio.Event()
    stack = asyncio.create_task(run(config, ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({stack, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if ready.is_set():
        if demo:
            await _load_demo(config)
        _banner(config)
        console.print("press Ctrl-C to stop")
    else:
        waiter.cancel()
    return await stack


def _ensure_demo_artifacts() -> None:
    from samples import train

    train.ensure_artifacts()


async def _load_demo(config: StackConfig) -> bool:
    try:
        await load_models(f"{config.host}:{config.scheduler_port}", tls=config.client_tls("controller"))
    except DemoError as exc:
        console.print(f"[red]the demo model iris did not become available[/red]: {exc}")
        return False
    return True


def _banner(config: StackConfig) -> None:
    url = f"http://{config.host}:{config.http_port}"
    console.print(
        f"""[green]meshserve is up[/green]  (state and logs in {config.home})
  inference (Envoy)  {url}
  scheduler API      {config.host}:{config.scheduler_port}
  Kafka              {_kafka_line(config)}
Try:
  curl -H 'seldon-model: iris' {url}/v2/models/iris/infer \\
    -H 'content-type: application/json' \\
    -d '{{"inputs":[{{"name":"predict","shape":[1,4],"datatype":"FP32","data":[[1,2,3,4]]}}]}}'
  .venv/bin/meshserve model list
Stop with: make down""",
        soft_wrap=True,  # keep the curl line whole, whatever the terminal width
    )
    if config.tls:
        files = config.tls_files
        console.print(
            f"""[green]mutual TLS[/green] on the scheduler's ports; the CLI needs its certificate:
  export MESHSERVE_CLI_TLS_CA={files.ca} MESHSERVE_CLI_TLS_CERT={files.cert("cli")} \\
    MESHSERVE_CLI_TLS_KEY={files.key("cli")}
  Envoy's admin: curl --unix-socket {config.envoy_admin_socket} http://admin/ready  (docs/security.md)""",
            soft_wrap=True,
        )


def _kafka_line(config: StackConfig) -> str:
    if not config.kafka:
        return "off (--no-kafka)"
    servers = ",".join(config.kafka_settings_for_stack().bootstrap_servers)
    where = "embedded broker" if config.kafka_embedded else "cluster"
    return f"{servers} ({where}; model topics seldon.<ns>.model.<m>.inputs|outputs)"


def down(args: argparse.Namespace) -> int:
    config = StackConfig.load(_home(args))
    state = read_state(config)
    if state is None:
        console.print("meshserve is not running")
        return 0
    supervisor = int(state["supervisor"])
    if alive(supervisor):
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.2)
    # Whatever is left (supervisor killed, or it timed out) goes too.
    _stop_leftovers(state)
    if alive(supervisor):
        os.kill(supervisor, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        config.state_file.unlink()
    console.print("meshserve stopped")
    return 0


def status(args: argparse.Namespace) -> int:
    config = StackConfig.load(_home(args))
    state = read_state(config)
    if state is None:
        console.print("meshserve is not running")
        return 1
    health = asyncio.run(_health(config, state))
    pids: dict[str, int] = state.get("components", {})
    failed: dict[str, str] = state.get("failed", {})
    table = Table("component", "pid", "process", "healthy", "endpoint")
    supervisor = int(state["supervisor"])
    ok = alive(supervisor)
    table.add_row("supervisor", str(supervisor), "running" if ok else "stopped", "-", "-")
    for name, (healthy, endpoint) in health.items():
        pid = pids.get(name)
        running = pid is not None and alive(pid)
        ok = ok and running and healthy
        table.add_row(
            name, str(pid or "-"), "running" if running else "stopped", "yes" if healthy else "no", endpoint
        )
    for name, pid in pids.items():  # the controller's server replicas
        if name not in health:
            running = alive(pid)
            ok = ok and running
            table.add_row(name, str(pid), "running" if running else "stopped", "-", "-")
    for name in failed.keys() - health.keys() - pids.keys():
        table.add_row(name, "-", "stopped", "no", "-")
    Console().print(table)
    for name, reason in failed.items():
        ok = False
        console.print(f"[red]{name}[/red]: {reason}", soft_wrap=True)
    if not alive(supervisor):
        console.print(
            "[red]the supervisor is not running[/red] (killed?): nothing restarts a process that dies; "
            "`meshserve down` stops what is left, then `meshserve up`",
            soft_wrap=True,
        )
    return 0 if ok else 1


def _stop_leftovers(state: dict[str, Any]) -> int:
    """Kill the process group of every component ``stack.json`` lists; returns how many were alive."""
    pids = [int(pid) for pid in state.get("components", {}).values()]
    left = sum(alive(pid) for pid in pids)
    for pid in pids:
        terminate_group(pid, signal.SIGKILL)
    return left


def _ports_taken(config: StackConfig) -> str:
    """Which of the ports the user chose (scheduler, Envoy) another process holds; '' if none.

    MLServer's are not checked: the supervisor moves a replica whose port is taken to free ones.
    """
    unused = {"kafka_port"} if not config.kafka_embedded else set()
    kafka_only = {"modelgateway_port", "pipeline_http_port", "pipeline_grpc_port", "engine_port"}
    unused |= kafka_only if not config.kafka else set()
    taken = [
        f"port {port} (--{name.replace('_', '-')}) is in use"
        for name, port in port_defaults().items()
        if not name.startswith("mlserver_")
        and name not in unused
        and not probes.port_free(config.host, getattr(config, name))
    ]
    return "; ".join(taken) + ("; free it or choose another port" if taken else "")


async def _health(config: StackConfig, state: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    host = config.host
    # The first MLServer's port, as the supervisor last started it (it moves off a taken port).
    mlserver_http = int(state.get("ports", {}).get("mlserver_http", config.mlserver_http_port))
    tls = config.client_tls("controller")
    admin_socket = config.envoy_admin_socket  # with --tls; the URL's host is then ignored
    checks = {
        "scheduler": (
            probes.grpc_healthy(f"{host}:{config.scheduler_port}", tls=tls),
            f"{host}:{config.scheduler_port}",
        ),
        "envoy": (
            probes.http_ok(f"http://{host}:{config.envoy_admin_port}/ready", admin_socket),
            f"{host}:{config.http_port}",
        ),
        "mlserver": (
            probes.http_ok(f"http://{host}:{mlserver_http}/v2/health/ready"),
            f"{host}:{mlserver_http}",
        ),
        "agent": (
            probes.server_registered(f"{host}:{config.scheduler_port}", config.server_name, tls=tls),
            f"server {config.server_name}",
        ),
    }
    if config.kafka_embedded:
        checks["kafka"] = (probes.port_open(host, config.kafka_port), f"{host}:{config.kafka_port}")
    if config.kafka:
        gateway = f"http://{host}:{config.modelgateway_port}/ready"
        checks["modelgateway"] = (probes.http_ok(gateway), f"{host}:{config.modelgateway_port}")
        engine = f"http://{host}:{config.engine_port}/ready"
        checks["engine"] = (probes.http_ok(engine), f"{host}:{config.pipeline_http_port}")
    results = await asyncio.gather(*(check for check, _ in checks.values()))
    return {
        name: (result, endpoint)
        for (name, (_, endpoint)), result in zip(checks.items(), results, strict=True)
    }
