"""``jaxface bench``: run every ``benchmarks/bench_*.py --out`` and print one table."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default="benchmarks",
                   help="folder holding bench_*.py (default: ./benchmarks of a source checkout)")
    p.add_argument("--out", default="bench-out", help="folder for the JSON results")
    p.add_argument("--only", nargs="*", default=None, help="run only these (e.g. model render)")
    p.add_argument("--quick", action="store_true", help="pass --quick to each benchmark")


def run(args: argparse.Namespace) -> int:
    bench_dir = Path(args.dir)
    scripts = sorted(bench_dir.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.only]
    if not scripts:
        print(f"jaxface bench: no bench_*.py in {bench_dir.resolve()} (run it from a source "
              "checkout or pass --dir)", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    rows: list[tuple[str, str, str]] = []
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        path = out / f"{name}.json"
        cmd = [sys.executable, str(script), "--out", str(path)]
        cmd += ["--quick"] if args.quick else []
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            failed.append(name)
            continue
        rows.extend(table_rows(name, json.loads(path.read_text())))
    print(format_table(rows))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def table_rows(name: str, payload: dict) -> list[tuple[str, str, str]]:
    """Flatten a benchmark JSON's ``results`` list into (benchmark, case, figures) rows."""
    rows = []
    for r in payload.get("results", []):
        case = ", ".join(f"{k}={v}" for k, v in r.items()
                         if not isinstance(v, float) and not isinstance(v, dict | list))
        figs = ", ".join(f"{k}={v:.4g}" for k, v in r.items() if isinstance(v, float))
        rows.append((name, case, figs))
    return rows


def format_table(rows: list[tuple[str, str, str]]) -> str:
    if not rows:
        return "(no results)"
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows)
