"""The Python gRPC floor: a no-op ``Scheduler.LoadModel`` on a bare grpc.aio server, run as the
scheduler runs its servers (``apis.runtime``: uvloop, fewer collections, gRPC's poller-served
listener, no BDP probe), so that only the servicer differs.

``python -m bench.grpc_floor --port N [--interceptor]`` serves LoadModel answering an empty
response and nothing else (``--interceptor``: behind the scheduler's own ``StatusMapping``
interceptor, to show what that costs). The scale benchmark drives it exactly as it drives the
scheduler (same client, same requests, same number in flight) and reads its CPU time from
``/proc``, so the scheduler's CPU per model can be shown as a multiple of what one unary call costs
Python gRPC on this machine at that moment: what is the floor, and what is meshserve's.
"""

from __future__ import annotations

from apis import runtime

runtime.fewer_grpc_thread_hops()  # as scheduler/__main__.py does: before anything imports grpc

import argparse  # noqa: E402
from typing import Any  # noqa: E402

import grpc  # noqa: E402

from apis.limits import GRPC_RECEIVE_LIMIT  # noqa: E402
from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc  # noqa: E402
from scheduler.errors import StatusMapping  # noqa: E402


class NoopScheduler(scheduler_pb2_grpc.SchedulerServicer):
    async def LoadModel(
        self, request: scheduler_pb2.LoadModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> scheduler_pb2.LoadModelResponse:
        return scheduler_pb2.LoadModelResponse()


async def serve(port: int, *, interceptor: bool) -> None:
    # The scheduler's server options (scheduler/app.py SchedulerApp._server).
    server = grpc.aio.server(
        interceptors=[StatusMapping()] if interceptor else None,
        options=[
            GRPC_RECEIVE_LIMIT,
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            runtime.NO_BDP_PROBE,
        ],
    )
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(NoopScheduler(), server)  # type: ignore[abstract]
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise OSError(f"cannot listen on 127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_floor", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interceptor", action="store_true", help="behind scheduler.errors.StatusMapping")
    args = parser.parse_args()
    runtime.run(serve(args.port, interceptor=args.interceptor))


if __name__ == "__main__":
    main()
