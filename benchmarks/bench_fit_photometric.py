"""Benchmark: photometric fitting (``jaxface.fit.fit_photometric``) on synthetic faces.

    python benchmarks/bench_fit_photometric.py --out bench-out/fit_photometric.json [--quick]

Data: Generate & Render faces (:mod:`jaxface.eval.synthetic`) at 224 x 224 (random identity,
expression, pose, SH light, harmonic albedo, smooth background; seeds 0..N-1).

* ``seconds_per_image``: one full photometric fit (default ``PhotometricConfig``: 96 px
  working crop, 55 Adam steps of which the first ``coarse_steps`` = 30 at 48 px, 3-level
  residual pyramid, 3 linear rounds; ``steps`` and ``coarse_steps`` are in the row) from a
  landmark fit,
  jit-warm, median over repeats (landmark fit not included; ``landmark_seconds_per_image``
  reports it).
* ``batched_seconds_per_image``: the same fit ``jax.vmap``-ed over ``--batch`` images, per image.
* ``median_vertex_error_mm_landmark`` / ``median_vertex_error_mm_photometric``: the median
  over samples of the per-sample median similarity-aligned vertex error (mm) over the model's
  ``narrow_face`` region, of the landmark-only fit (landmarks + N(0, 1.5^2 px) noise) and of the
  photometric fit started from it (:func:`jaxface.eval.synthetic.evaluate_fits`).

The first result row is the default (``mode="antialias"``); the second renders with
``mode="hard"`` (no silhouette gradients) for comparison (single-image timing and errors).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np

from benchmarks.common import machine_info, parse_args, report, timeit
from jaxface.eval.synthetic import evaluate_fits, generate
from jaxface.fit import PhotometricConfig, fit_landmarks, fit_photometric
from jaxface.models import load_default


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv, extra=lambda p: p.add_argument(
        "--batch", type=int, default=4, help="images per vmapped batch"))
    size = (224, 224)
    n_seeds = 3 if args.quick else 10
    repeat = 2 if args.quick else 5
    model = load_default()
    cfg = PhotometricConfig()
    t0 = time.perf_counter()
    errors = evaluate_fits(model, range(n_seeds), size, photometric_config=cfg)
    t_eval = time.perf_counter() - t0

    keys = jax.random.split(jax.random.PRNGKey(100), args.batch)
    batch = jax.jit(jax.vmap(lambda k: generate(model, k, size)))(keys)
    lm_fit = jax.jit(jax.vmap(lambda lm: fit_landmarks(model, lm, size)))
    inits = lm_fit(batch.landmarks2d)
    one = jax.tree.map(lambda x: x[0], inits)

    def single():
        return fit_photometric(model, batch.image[0], init=one, landmarks=batch.landmarks2d[0],
                               config=cfg)

    batched_fn = jax.jit(jax.vmap(lambda im, ini, lm: fit_photometric(
        model, im, init=ini, landmarks=lm, config=cfg)))
    t_single = timeit(single, warmup=1, repeat=repeat)
    t_batch = timeit(batched_fn, batch.image, inits, batch.landmarks2d, warmup=1,
                     repeat=max(1, repeat // 2))
    t_lm = timeit(lambda: fit_landmarks(model, batch.landmarks2d[0], size), warmup=1,
                  repeat=repeat)
    result = {
        "image_size": list(size),
        "working_size": cfg.size,
        "steps": cfg.steps,
        "coarse_steps": cfg.coarse_steps,
        "mode": cfg.mode,
        "seconds_per_image": t_single.median,
        "batched_seconds_per_image": t_batch.median / args.batch,
        "batch": args.batch,
        "landmark_seconds_per_image": t_lm.median,
        "median_vertex_error_mm_landmark": errors["median_vertex_error_mm_landmark"],
        "median_vertex_error_mm_photometric": errors["median_vertex_error_mm_photometric"],
        "relative_improvement": errors["relative_improvement"],
        "n_synthetic": n_seeds,
        "evaluation_seconds": t_eval,
    }
    # the same fit rendering with mode="hard" (no silhouette gradients), for comparison
    cfg_h = PhotometricConfig(mode="hard")
    err_h = evaluate_fits(model, range(n_seeds), size, photometric_config=cfg_h)
    t_hard = timeit(lambda: fit_photometric(model, batch.image[0], init=one,
                                            landmarks=batch.landmarks2d[0], config=cfg_h),
                    warmup=1, repeat=repeat)
    hard = {"image_size": list(size), "working_size": cfg_h.size, "steps": cfg_h.steps,
            "mode": "hard", "seconds_per_image": t_hard.median,
            "median_vertex_error_mm_landmark": err_h["median_vertex_error_mm_landmark"],
            "median_vertex_error_mm_photometric": err_h["median_vertex_error_mm_photometric"],
            "relative_improvement": err_h["relative_improvement"], "n_synthetic": n_seeds}
    detail = {k: errors[k] for k in ("seeds", "median_mm_landmark", "median_mm_photometric",
                                     "mean_mm_landmark", "mean_mm_photometric",
                                     "photometric_error")}
    report({"benchmark": "fit_photometric", "machine": machine_info(), "results": [result, hard],
            "per_sample": detail, "notes": "errors over model.regions['narrow_face'], mm; "
            "landmark noise 1.5 px; 2 shared CPU cores"}, args.out)
    print(np.round([result["seconds_per_image"], result["batched_seconds_per_image"]], 3))


if __name__ == "__main__":
    main()
