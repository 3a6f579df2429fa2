"""``jaxface train``: train a parameter-regression encoder (survey §5).

    jaxface train --config CONFIG.toml [--out DIR] [--steps N] [--fresh] [--no-progress]

CONFIG is a TOML file whose top-level keys are :class:`jaxface.nets.TrainConfig` fields
(``regime = "generate" | "fit" | "self"``, ``data``, ``batch_size``, ``steps``, loss weights,
...); ``configs/train_cpu.toml`` (about 10 minutes on a 2-core CPU) and
``configs/train_gpu.toml`` are examples. The run directory (``--out``, default
``runs/<config stem>``) receives ``config.json``, orbax checkpoints in ``checkpoints/N``,
``metrics.jsonl`` and, at the end, ``encoder.npz`` (the weights alone, for ``jaxface predict
--checkpoint``). Run the same command again after a kill: it resumes from the newest
checkpoint and continues exactly as an uninterrupted run would (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="CONFIG",
                   help="TOML training configuration (TrainConfig fields)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="run directory (default runs/<config stem>)")
    p.add_argument("--steps", type=int, default=None, help="override the config's steps")
    p.add_argument("--fresh", action="store_true",
                   help="ignore checkpoints in DIR and start from step 0")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from jaxface.nets.train import load_config, train

    cfg_path = Path(args.config)
    if not cfg_path.is_file():
        raise FileNotFoundError(f"config {str(cfg_path)!r} not found")
    try:
        cfg = load_config(cfg_path, steps=args.steps)
    except (ValueError, TypeError) as e:
        print(f"jaxface train: error: {cfg_path}: {e}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else Path("runs") / cfg_path.stem
    res = train(cfg, out, resume=not args.fresh, progress=not args.no_progress)
    last = res.metrics[-1] if res.metrics else {}
    print(f"jaxface train: {cfg.steps} steps; final loss "
          f"{last.get('loss', float('nan')):.4f}; run in {out} (weights: {out / 'encoder.npz'})",
          file=sys.stderr)
    return 0
