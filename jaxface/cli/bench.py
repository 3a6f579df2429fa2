"""``jaxface bench``: run every ``benchmarks/bench_*.py --out`` and print one table.

Each benchmark runs in its own process under ``--timeout`` seconds (a stuck one is killed and
reported, the rest still run). Optional dependencies are handled per benchmark: without eos-py
or dlib, ``fit_landmarks`` runs with ``--no-eos`` / ``--no-dlib``; without the ``detect`` extra
(MediaPipe and dlib), ``detect_fit`` is skipped. ``--args NAME='...'`` adds arguments to one
benchmark (e.g. ``--args render=--quick fit_landmarks='--batch-timeout 100'``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default="benchmarks",
                   help="folder holding bench_*.py (default: ./benchmarks of a source checkout)")
    p.add_argument("--out", default="bench-out", help="folder for the JSON results")
    p.add_argument("--only", nargs="*", default=None, help="run only these (e.g. model render)")
    p.add_argument("--quick", action="store_true", help="pass --quick to each benchmark")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="kill a benchmark that runs longer than this (default: no limit)")
    p.add_argument("--args", nargs="*", default=[], metavar="NAME=ARGS",
                   help="extra arguments for one benchmark, e.g. render=--quick")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def optional_arguments(name: str) -> list[str] | None:
    """Arguments a benchmark needs for the optional dependencies that are missing here, or
    None when it cannot run without them."""
    if name == "fit_landmarks":
        return ([] if _has("eos") else ["--no-eos"]) + ([] if _has("dlib") else ["--no-dlib"])
    if name == "detect_fit" and not (_has("mediapipe") and _has("dlib")):
        return None
    return []


def run(args: argparse.Namespace) -> int:
    bench_dir = Path(args.dir)
    scripts = sorted(bench_dir.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.only]
    if not scripts:
        print(f"jaxface bench: no bench_*.py in {bench_dir.resolve()} (run it from a source "
              "checkout or pass --dir)", file=sys.stderr)
        return 1
    extra: dict[str, list[str]] = {}
    for item in args.args:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"jaxface bench: --args takes NAME=ARGS, got {item!r}", file=sys.stderr)
            return 1
        extra.setdefault(key.removeprefix("bench_"), []).extend(shlex.split(value))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    rows: list[tuple[str, str, str]] = []
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        needed = optional_arguments(name)
        if needed is None:
            print(f"== {name}: skipped (needs the detect extra: mediapipe and dlib)", flush=True)
            continue
        path = out / f"{name}.json"
        cmd = [sys.executable, str(script), "--out", str(path)]
        cmd += (["--quick"] if args.quick else []) + needed + extra.get(name, [])
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        try:
            code = subprocess.run(cmd, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            print(f"== {name}: killed after {args.timeout:g} s", file=sys.stderr, flush=True)
            code = None
        if code != 0:
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
