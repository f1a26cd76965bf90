import sys

import structlog

from apis.exits import FATAL_CONFIG
from scheduler.app import main
from scheduler.store import StoreError

try:
    main()
except StoreError as error:  # unusable state: one clear line, and an exit code nobody restarts on
    structlog.get_logger("meshserve.scheduler").error("scheduler cannot start", error=str(error))
    sys.exit(FATAL_CONFIG)
