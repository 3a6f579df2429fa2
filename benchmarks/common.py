"""Shared helpers of the ``benchmarks/bench_*.py`` scripts.

Every benchmark script is run from the repository root as

    python benchmarks/bench_X.py --out PATH [--quick]

and writes one JSON file ``{"benchmark": ..., "machine": machine_info(), "results": [...]}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: versions, backend, device kind, CPUs, platform."""
    devices = jax.devices()
    try:
        import jaxlib

        jaxlib_version = jaxlib.__version__
    except (ImportError, AttributeError):  # pragma: no cover - jaxlib always ships with jax
        jaxlib_version = None
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable_cpus = os.cpu_count()
    return {
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib_version,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "x64_enabled": bool(jax.config.read("jax_enable_x64")),
        "utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


class Timing(NamedTuple):
    """Wall-clock seconds of one call: median and minimum over ``repeat`` timed calls."""

    median: float
    min: float
    times: tuple[float, ...]


def timeit(fn: Callable[..., Any], *args: Any, warmup: int = 2, repeat: int = 10,
           **kwargs: Any) -> Timing:
    """Time ``fn(*args, **kwargs)``, blocking until every output array is ready.

    The first ``warmup`` calls (compilation for a jitted ``fn``) are not timed.

    Returns:
      ``Timing(median, min, times)`` in seconds.
    """
    if repeat < 1 or warmup < 0:
        raise ValueError(f"need repeat >= 1 and warmup >= 0, got {repeat}, {warmup}")
    for _ in range(warmup):
        jax.block_until_ready(fn(*args, **kwargs))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args, **kwargs))
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), min(times), tuple(times))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray | jax.Array):
        return np.asarray(x).tolist()
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (NumPy/JAX scalars and arrays allowed) as indented JSON; make parents."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")
    return p


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--out PATH`` (required JSON output) and ``--quick`` (fewer sizes and repeats)."""
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and fewer repeats (smoke test)")
    return parser


def parse_args(description: str, argv: Sequence[str] | None = None,
               extra: Callable[[argparse.ArgumentParser], None] | None = None
               ) -> argparse.Namespace:
    """An ``ArgumentParser`` with the common arguments (plus ``extra(parser)``), parsed."""
    parser = add_common_args(argparse.ArgumentParser(description=description))
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def report(payload: dict[str, Any], out: str | os.PathLike) -> None:
    """Write the JSON and print a one-line summary per result."""
    p = write_json(out, payload)
    m = payload.get("machine", {})
    print(f"{payload.get('benchmark')}: {m.get('backend')} {m.get('device_kind')} "
          f"-> {p}", file=sys.stderr)
    for r in payload.get("results", []):
        print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in r.items()), file=sys.stderr)
