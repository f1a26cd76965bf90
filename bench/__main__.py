"""``python -m bench``: run every figure (or ``--only`` some), write docs/benchmarks.md, print it."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import report

ROOT = Path(__file__).resolve().parent.parent
FIGURES = (
    "dataplane",
    "route",
    "scale",
    "placement",
    "envoy-memory",
    "experiments",
    "tls",
    "overcommit",
    "pipelines",
    "pipeline-idle",
    "dataplane-pipelines",
    "lag-reporting",
)


async def _figure(name: str, work: Path, quick: bool) -> list[report.Section]:
    if name == "dataplane":
        from bench import dataplane

        return [await dataplane.run(work, quick)]
    if name == "route":
        from bench import time_to_route

        return [await time_to_route.run(work, quick)]
    if name == "scale":
        from bench import scale

        return [await scale.run(work, quick)]
    if name == "envoy-memory":
        from bench import envoy_memory

        return [await envoy_memory.run(work, quick)]
    if name == "experiments":
        from bench import experiments

        return [await experiments.run(work, quick)]
    if name == "tls":
        from bench import tls

        return [await tls.run(work, quick)]
    if name == "overcommit":
        from bench import overcommit

        return [await overcommit.run(work, quick)]
    if name == "pipelines":
        from bench import pipelines

        return [await pipelines.run(work, quick)]
    if name in ("pipeline-idle", "dataplane-pipelines"):
        from bench import pipeline_side

        if name == "pipeline-idle":
            return [await pipeline_side.run_idle(work, quick)]
        return [await pipeline_side.run_dataplane(work, quick)]
    if name == "lag-reporting":
        from bench import lag_reporting

        return [await lag_reporting.run(work, quick)]
    return []


def _placement(quick: bool) -> str | None:
    """bench/placement.py (placement policies, in-process) is its own module; run it when present."""
    if importlib.util.find_spec("bench.placement") is None:
        return None
    from bench import placement

    started = time.monotonic()
    rows = placement.run(runs=1) if quick else placement.run()
    if not rows:
        return None
    table = report.Table([str(k) for k in rows[0]])
    for row in rows:
        table.rows.append([_cell(v) for v in row.values()])
    return "\n".join(
        [
            "## 4. Placement policies",
            "",
            "Time in each placement policy's `place()` per decision, in-process (`bench/placement.py`; "
            f"module docstring for the workload). Command: `python -m bench --only placement` "
            f"({time.monotonic() - started:.0f} s).",
            "",
            table.markdown(),
            "",
        ]
    )


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, tuple):
        return "-".join(str(v) for v in value)
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", choices=FIGURES, action="append", help="run only this figure (repeatable)")
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test; not for the docs)")
    parser.add_argument(
        "--output",
        type=Path,
        help="the page to write (default docs/benchmarks.md; a --quick run writes none unless given)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace only the figures run (and their summary rows) in the existing --output page",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs) afterwards")
    args = parser.parse_args(argv)
    output: Path | None = args.output or (None if args.quick else ROOT / "docs" / "benchmarks.md")
    for tool in ("wrk", "h2load"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (make bench installs wrk and nghttp2-client)")
    chosen = args.only or list(FIGURES)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="meshserve-bench-"))
    sections: list[report.Section] = []
    extra: list[str] = []
    try:
        for name in chosen:
            print(f"== {name}", file=sys.stderr, flush=True)
            if name == "placement":
                text = _placement(args.quick)
                if text:
                    extra.append(text)
                continue
            sections += asyncio.run(_figure(name, work / name, args.quick))
    finally:
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.merge and output is not None and output.exists():
        text = report.merge(output.read_text(), sections, extra)
        output.write_text(text)
        print("\n\n".join([s.markdown() for s in sections] + extra))
        print(f"updated {', '.join(chosen)} in {output}", file=sys.stderr)
        return 0
    text = report.document(sections, report.machine(), time.monotonic() - started)
    if extra:
        text += "\n" + "\n\n".join(extra) + "\n"
    if args.quick:
        text = text.replace("# Benchmarks\n", "# Benchmarks (quick run: short, not for publication)\n", 1)
    print(text)
    if output is not None:
        output.write_text(text)
        print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
