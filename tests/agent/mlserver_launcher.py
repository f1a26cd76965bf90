"""Runs the ``mlserver`` CLI, working around a broken OpenTelemetry exporter import if present.

In this virtualenv ``xds-protos`` ships an older ``opentelemetry/proto/common/v1/common_pb2.py`` that
overwrites ``opentelemetry-proto``'s, so MLServer's unconditional import of the OTLP trace exporter
fails. Tracing is off in tests, so a stand-in exporter class is enough. When the environment is
healthy the real exporter is imported and nothing is patched.
"""

from __future__ import annotations

import sys
import types

try:
    import opentelemetry.exporter.otlp.proto.grpc.trace_exporter  # noqa: F401
except ImportError:
    _name = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"
    _stub = types.ModuleType(_name)

    class OTLPSpanExporter:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("OTLP tracing is unavailable in this environment")

    _stub.OTLPSpanExporter = OTLPSpanExporter  # type: ignore[attr-defined]
    sys.modules[_name] = _stub

from mlserver.cli.main import main  # type: ignore[import-untyped]

if __name__ == "__main__":
    sys.argv[0] = "mlserver"
    main()
