"""External load generators: wrk (HTTP/1.1, closed loop) and h2load (gRPC closed loop; open loop).

The process under test is never asked for its own timings: every figure comes from the generator's
side of the socket. ``Result`` is what one run measured.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import payloads

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
{headers}
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout + summary.errors.status
  io.write(string.format(
    "WRK_JSON {{\\"requests\\": %d, \\"duration_us\\": %d, \\"errors\\": %d, "
    .. "\\"p50_us\\": %d, \\"p99_us\\": %d}}\\n",
    summary.requests, summary.duration, errors, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Result:
    rps: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    generator_cpu_s: float = 0.0
    """CPU the generator itself used (user+sys of the child), to show it was not the bottleneck."""
    seconds: float = 0.0


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal for ASCII text


async def _run(argv: list[str], limit_s: float) -> str:
    """Run a generator to its end; returns its output."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), limit_s)
    text = out.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({process.returncode}): {text[-2000:]}")
    return text


WRK_PATHS = """
paths = {{{paths}}}
sent = 0
request = function()
  sent = sent + 1
  return wrk.format(nil, paths[(sent % #paths) + 1])
end
"""


async def wrk(
    url: str,
    body: str,
    headers: Mapping[str, str],
    *,
    connections: int,
    seconds: float,
    paths: Sequence[str] = (),
) -> Result:
    """Closed loop: ``connections`` keep-alive connections, each sending its next request on reply;
    with ``paths``, requests take those paths of ``url``'s server in turn."""
    script = WRK_SCRIPT.format(
        body=_lua_string(body),
        headers="\n".join(f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()),
    )
    if paths:
        script += WRK_PATHS.format(paths=", ".join(_lua_string(path) for path in paths))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", handle.name, url]
    try:
        before = _children_cpu()
        text = await _run(argv, seconds + 30)
        cpu = _children_cpu() - before
    finally:
        _remove(handle.name)
    line = next(x for x in text.splitlines() if x.startswith("WRK_JSON "))
    data = json.loads(line.removeprefix("WRK_JSON "))
    duration = data["duration_us"] / 1e6
    return Result(
        rps=data["requests"] / duration,
        requests=data["requests"],
        errors=data["errors"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        generator_cpu_s=cpu,
        seconds=duration,
    )


WARM_UP_S = 0.5  # h2load's warm-up before its measured run (not in its figures)


async def h2load(
    url: str,
    body_file: Path,
    headers: Mapping[str, str],
    *,
    clients: int,
    seconds: float,
    h1: bool = False,
    rps_per_client: float | None = None,
    warm_up: float = WARM_UP_S,
) -> Result:
    """h2load, one thread. Closed loop by default (``clients`` streams, one in flight each);
    with ``rps_per_client`` each client starts requests at that fixed rate (open loop, as long as
    the rate is well under what one connection can carry). Latency from its per-request log."""
    with tempfile.NamedTemporaryFile(suffix=".log", delete=False) as handle:
        log_file = Path(handle.name)
    argv = [
        "h2load",
        "-t1",
        f"-c{clients}",
        "-m1",
        f"-D{int(seconds * 1000)}ms",
        f"--warm-up-time={int(warm_up * 1000)}ms",
        "-d",
        str(body_file),
        f"--log-file={log_file}",
    ]
    if h1:
        argv.append("--h1")
    if rps_per_client is not None:
        argv.append(f"--rps={rps_per_client:g}")
    for key, value in headers.items():
        argv += ["-H", f"{key}: {value}"]
    argv.append(url)
    try:
        before = _children_cpu()
        text = await _run(argv, seconds + warm_up + 30)
        cpu = _children_cpu() - before
        rows = read_log(log_file)
    finally:
        _remove(log_file)
    ok = [int(r[2]) for r in rows if r[1] == "200"]
    errors = len(rows) - len(ok)  # non-200 (h2load also logs failed requests)
    if not ok:
        raise RuntimeError(f"h2load got no successful responses: {text[-1500:]}")
    starts = sorted(int(r[0]) for r in rows)
    span = max((starts[-1] - starts[0]) / 1e6, 1e-9) if len(starts) > 1 else seconds
    return Result(
        rps=len(ok) / span,
        requests=len(ok),
        errors=errors,
        p50_ms=percentile(ok, 50) / 1000,
        p99_ms=percentile(ok, 99) / 1000,
        generator_cpu_s=cpu,
        seconds=span,
    )


def read_log(path: Path) -> list[list[str]]:
    """h2load's --log-file rows: start (µs since epoch), status, duration (µs)."""
    return [line.split("\t") for line in path.read_text().splitlines() if line.strip()]


def _remove(path: str | Path) -> None:
    Path(path).unlink(missing_ok=True)


def percentile(values: list[int] | list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return float(ordered[rank])


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def paired_ratio(ours: list[float], baseline: list[float]) -> tuple[float, list[float]]:
    """The median of each round's ratio ours / baseline, and those ratios.

    Runs of one round are adjacent in time, so a load swing on the shared machine moves both alike;
    comparing each target's own median across rounds lets the swings between rounds decide instead.
    """
    ratios = [a / b for a, b in zip(ours, baseline, strict=True) if b > 0]
    return median(ratios), ratios


def paired_difference(ours: list[float], baseline: list[float]) -> tuple[float, list[float]]:
    """The median of each round's difference ours - baseline, and those differences (as above)."""
    differences = [a - b for a, b in zip(ours, baseline, strict=True)]
    return median(differences), differences


def median_interval(values: list[float], confidence: float = 0.9) -> tuple[float, float]:
    """A distribution-free interval for the median of ``values`` (the sign test's): the k-th smallest
    and the k-th largest value, k the largest rank whose two tails together hold at most
    ``1 - confidence`` of a Binomial(n, 1/2). Too few values for that: their whole range."""
    ordered = sorted(values)
    n = len(ordered)
    tail, k = 0.0, 0
    for rank in range(n // 2):
        tail += math.comb(n, rank) / 2**n  # P(fewer than rank + 1 values below the median)
        if 2 * tail > 1 - confidence:
            break
        k = rank + 1
    if k == 0:
        return ordered[0], ordered[-1]
    return ordered[k - 1], ordered[n - k]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def generator_ceiling(
    *,
    rest_url: str,
    rest_headers: Mapping[str, str],
    grpc_url: str,
    grpc_body: Path,
    grpc_headers: Mapping[str, str],
    connections: int,
    seconds: float,
) -> dict[str, Result]:
    """The generators, as the figures run them, against an Envoy that answers by itself: the most
    they can drive, so a figure far below it was not limited by its generator."""
    return {
        "wrk (REST)": await wrk(
            rest_url, payloads.IRIS_REST, rest_headers, connections=connections, seconds=seconds
        ),
        "h2load (gRPC)": await h2load(
            grpc_url, grpc_body, grpc_headers, clients=connections, seconds=seconds
        ),
    }
