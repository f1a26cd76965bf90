import sys

from apis import runtime

runtime.fewer_grpc_thread_hops()  # before scheduler.app imports grpc

import structlog  # noqa: E402

from apis.exits import FATAL_CONFIG  # noqa: E402
from scheduler.app import main  # noqa: E402
from scheduler.store_schema import StoreError  # noqa: E402

try:
    main()
except StoreError as error:  # unusable state: one clear line, and an exit code nobody restarts on
    structlog.get_logger("meshserve.scheduler").error("scheduler cannot start", error=str(error))
    sys.exit(FATAL_CONFIG)
