"""The CLI's connection settings: persistent flags of ``meshserve``, env ``MESHSERVE_CLI_*``.

Derived from :class:`CliConfig` by ``apis.settings`` (``--scheduler-host`` is
``MESHSERVE_CLI_SCHEDULER_HOST``; a flag wins over the environment).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from apis.settings import flag, positive_float

ENV_PREFIX = "MESHSERVE_CLI_"


@dataclass(frozen=True)
class CliConfig:
    scheduler_host: str = field(default="127.0.0.1:9004", metadata=flag("the Scheduler API, host:port"))
    inference_host: str = field(default="127.0.0.1:9000", metadata=flag("Envoy's data plane, host:port"))
    timeout: float = field(default=10.0, metadata=flag("per-call deadline in seconds", parse=positive_float))
    # Mutual TLS to the scheduler (`meshserve up --tls` writes these under $MESHSERVE_HOME/tls: ca.pem,
    # cli.pem, cli-key.pem; docs/security.md). All three, or none for plain text.
    tls_ca: Path | None = field(
        default=None, metadata=flag("CA (PEM) the scheduler's certificate must chain to")
    )
    tls_cert: Path | None = field(default=None, metadata=flag("the CLI's client certificate (PEM)"))
    tls_key: Path | None = field(default=None, metadata=flag("its private key (PEM)"))
