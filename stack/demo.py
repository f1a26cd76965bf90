"""The demo model ``meshserve up`` loads: Model manifests sent to the scheduler, then awaited.

The stack speaks the Scheduler API itself (the CLI sits above the stack, never below it) and
reads manifests with the shared ``apis.manifests``, so a relative ``storageUri`` resolves against
the YAML file's folder exactly as ``meshserve model load -f`` resolves it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from apis import manifests
from apis.limits import GRPC_RECEIVE_LIMIT
from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from apis.tls import ClientTls, channel

if TYPE_CHECKING:
    from apis.mlops.scheduler.scheduler_pb2_grpc import SchedulerAsyncStub

DEMO_MODEL = Path(__file__).resolve().parent.parent / "samples" / "models" / "iris.yaml"
SUBSCRIBER = "meshserve-stack"
POLL_INTERVAL_S = 0.2
AVAILABLE = scheduler_pb2.ModelStatus.ModelState.ModelAvailable


class DemoError(RuntimeError):
    """The demo model could not be loaded; the message says why."""


async def load_models(
    target: str,
    path: Path = DEMO_MODEL,
    *,
    wait_timeout: float = 120.0,
    rpc_timeout: float = 10.0,
    tls: ClientTls | None = None,
) -> list[str]:
    """Load every Model in ``path`` and wait until each is ModelAvailable; returns their names."""
    try:
        requests = manifests.read_model_requests(str(path))
    except manifests.ManifestFileError as exc:
        raise DemoError(str(exc)) from exc
    names = [request.model.meta.name for request in requests]
    async with channel(target, tls, options=[GRPC_RECEIVE_LIMIT]) as grpc_channel:
        stub: SchedulerAsyncStub = scheduler_pb2_grpc.SchedulerStub(grpc_channel)
        try:
            for request in requests:
                await stub.LoadModel(request, timeout=rpc_timeout)
            async with asyncio.timeout(wait_timeout):
                for name in names:
                    await _wait_available(stub, name, rpc_timeout)
        except grpc.aio.AioRpcError as exc:
            raise DemoError(f"scheduler at {target}: {exc.code().name}: {exc.details()}") from exc
        except TimeoutError:
            raise DemoError(f"{', '.join(names)} not available within {wait_timeout:g} s") from None
    return names


async def _wait_available(stub: SchedulerAsyncStub, name: str, rpc_timeout: float) -> None:
    # Polling, like the CLI's `model status -w`: each call sees the scheduler's latest view.
    while True:
        if await _available(stub, name, rpc_timeout):
            return
        await asyncio.sleep(POLL_INTERVAL_S)


async def _available(stub: SchedulerAsyncStub, name: str, rpc_timeout: float) -> bool:
    request = scheduler_pb2.ModelStatusRequest(
        subscriberName=SUBSCRIBER, model=scheduler_pb2.ModelReference(name=name), allVersions=False
    )
    call = stub.ModelStatus(request, timeout=rpc_timeout)
    try:
        response = await anext(aiter(call), None)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return False  # not registered yet
        raise
    finally:
        call.cancel()
    latest = max(response.versions, key=lambda v: v.version, default=None) if response else None
    return latest is not None and latest.state.state == AVAILABLE
