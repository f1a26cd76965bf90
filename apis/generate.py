"""Generate the Python code for meshserve's protos.

The .proto files keep Seldon's import paths (``mlops/scheduler/scheduler.proto``) so they stay
byte-compatible with the originals; protoc therefore emits absolute imports such as
``from mlops.chainer import chainer_pb2``. We rewrite those to ``apis.mlops...`` so the generated
code lives inside the ``apis`` package instead of claiming the top-level name ``mlops``.

Usage: ``python -m apis.generate`` (write) or ``python -m apis.generate --check`` (fail if stale).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

APIS_DIR = Path(__file__).resolve().parent
PROTO_ROOT = APIS_DIR / "protos"
GENERATED_PACKAGES = ("mlops", "v2_dataplane")
_IMPORT = re.compile(rb"^(from|import) (mlops|v2_dataplane)([.\s])", re.MULTILINE)


def _generate_into(out_dir: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    # protoc finds the mypy-protobuf plugins on PATH; they live beside this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for path in out_dir.rglob("*.py*"):
        path.write_bytes(_IMPORT.sub(rb"\1 apis.\2\3", path.read_bytes()))
    for package in GENERATED_PACKAGES:
        for folder in [out_dir / package, *(d for d in (out_dir / package).rglob("*") if d.is_dir())]:
            (folder / "__init__.py").touch()


def _differences(left: Path, right: Path) -> list[str]:
    cmp = filecmp.dircmp(left, right)
    found = [str(Path(left.name) / n) for n in cmp.left_only + cmp.right_only + cmp.diff_files]
    for sub in cmp.common_dirs:
        found += _differences(left / sub, right / sub)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        _generate_into(out)
        if args.check:
            stale = [d for p in GENERATED_PACKAGES for d in _differences(out / p, APIS_DIR / p)]
            if stale:
                print("generated code is stale; run `python -m apis.generate`:", *stale, sep="\n  ")
                return 1
            print("generated code is up to date")
            return 0
        for package in GENERATED_PACKAGES:
            shutil.rmtree(APIS_DIR / package, ignore_errors=True)
            shutil.copytree(out / package, APIS_DIR / package)
    return 0


if __name__ == "__main__":
    sys.exit(main())
