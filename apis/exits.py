"""Process exit codes every meshserve process and the local stack's supervisor agree on."""

from __future__ import annotations

# A process exits with this when restarting it cannot help: its configuration or its state is
# unusable (e.g. a corrupt state database). The supervisor gives up on it at once and shows why in
# `meshserve status`, instead of a restart loop. 78 is sysexits' EX_CONFIG.
FATAL_CONFIG = 78
