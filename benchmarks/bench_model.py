"""Benchmark: evaluating a morphable model (``jaxface.vertices``), jit-compiled and warm.

    python benchmarks/bench_model.py --out bench-out/model.json [--quick]

Models: the full ICT-FaceKit light model (26,719 vertices, 100 identity + 53 expression modes,
read from ``$JAXFACE_DATA``) and the embedded default model (17,202 vertices, same modes).
Batches 1 (a single face) and 64 (``jax.vmap``). The model is put on the device once and
passed as a jit argument, as a fitting loop would.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np

from benchmarks.common import machine_info, parse_args, report, timeit
from jaxface.models import MorphableModel, load_default, load_ict, vertices


def _batched(model: MorphableModel, a: jax.Array, e: jax.Array) -> jax.Array:
    return jax.vmap(vertices, in_axes=(None, 0, 0))(model, a, e)


def bench(model: MorphableModel, label: str, batches: list[int], repeat: int) -> list[dict]:
    model = jax.device_put(model)
    single, batched = jax.jit(vertices), jax.jit(_batched)
    rng = np.random.default_rng(0)
    rows = []
    for b in batches:
        a = jax.device_put(rng.standard_normal((b, model.n_identity)).astype(np.float32))
        e = jax.device_put(rng.uniform(0, 1, (b, model.n_expression)).astype(np.float32))
        if b == 1:
            t = timeit(single, model, a[0], e[0], warmup=3, repeat=repeat)
        else:
            t = timeit(batched, model, a, e, warmup=3, repeat=repeat)
        rows.append({"model": label, "op": "vertices", "batch": b,
                     "n_vertices": model.n_vertices,
                     "n_modes": model.n_identity + model.n_expression,
                     "seconds": t.median, "seconds_min": t.min,
                     "ms_per_face": 1e3 * t.median / b})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.split("\n\n")[0], argv)
    repeat = 5 if args.quick else 30
    batches = [1, 64]
    results = bench(load_ict(), "ict-facekit (full)", batches, repeat)
    results += bench(load_default(), "default (embedded)", batches, repeat)
    report({"benchmark": "model", "machine": machine_info(), "quick": args.quick,
            "results": results}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
