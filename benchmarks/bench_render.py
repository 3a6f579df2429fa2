"""Benchmark the render primitives on the ICT-FaceKit mesh (CPU-friendly).

Measures forward and forward+backward time per image (jit-warm; median and 10th percentile of
the calls made in about a second, at least 3 and at most 300) for the hard rasteriser +
interpolate, hard + antialias and the soft path, at 224², 512² and 1024², for the ICT face
region (triangles whose vertices all have id <= 11247: face, head and neck, 22,288 triangles),
the face region with the mouth and eye sockets (id <= 14061, 28,068 triangles: the issue's
"~30k-triangle face") and the full ICT mesh (52,220 triangles), batch 1 and 16, plus
peak-memory indicators. Writes JSON.

    python benchmarks/bench_render.py --out bench_render.json [--quick] [--paths hard+interpolate]

Needs ``$JAXFACE_DATA/ict-facekit/ict_face_model_light.npz``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.render import (
    antialias,
    edge_neighbors,
    interpolate,
    rasterize,
    soft_blend,
    soft_interpolate,
    soft_rasterize,
)
from jaxface.render.reference import fit_to_image

# ICT-FaceKit vertex ranges (0-based, inclusive): face 0-9408, head and neck 9409-11247, mouth
# socket 11248-13293, eye sockets 13294-14061, then gums, teeth, eyeballs, ...
FACE_MAX_VERTEX = 11247  # "ict_face": face, head and neck (22,288 triangles)
SOCKETS_MAX_VERTEX = 14061  # "ict_face_sockets": and the mouth and eye sockets (28,068, ~30k)
MESHES = ["ict_face", "ict_face_sockets", "ict_full"]


def load_meshes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    root = os.environ.get("JAXFACE_DATA")
    if not root:
        sys.exit("JAXFACE_DATA is not set (it must point at the staged data folder)")
    path = Path(root) / "ict-facekit" / "ict_face_model_light.npz"
    if not path.is_file():
        sys.exit(f"missing {path}")
    d = np.load(path)
    v, f = d["neutral"].astype(np.float32), d["triangles"].astype(np.int32)
    def region(last: int) -> tuple[np.ndarray, np.ndarray]:
        return v[: last + 1], f[(f <= last).all(axis=1)]

    return {"ict_face": region(FACE_MAX_VERTEX), "ict_face_sockets": region(SOCKETS_MAX_VERTEX),
            "ict_full": (v, f)}


def make_path(path: str, f: np.ndarray, size: tuple[int, int], nv: int):
    colors = jnp.asarray(np.random.default_rng(0).uniform(size=(nv, 3)).astype(np.float32))
    nb = edge_neighbors(f)
    tri = jnp.asarray(f)

    def image(sv):
        if path == "soft":
            sigma = 0.2
            sf = soft_rasterize(sv, tri, size, sigma=sigma, faces_per_pixel=4)
            c = soft_interpolate(colors, sf, tri)
            return soft_blend(c, sf, sigma=sigma, gamma=0.05, znear=-40.0, zfar=40.0)
        fr = rasterize(sv, tri, size)
        img = interpolate(colors, fr, tri)
        if path == "hard+antialias":
            img = antialias(img, fr, sv, tri, neighbors=nb)
        return img

    def loss(sv):
        img = image(sv)
        return jnp.sum(img * img)

    return jax.jit(image), jax.jit(jax.grad(loss))


def timeit(fn, x, min_time: float, max_reps: int) -> tuple[float, int, float]:
    """Median wall time, number of calls, and 10th percentile (s) of jit-warm calls."""
    jax.block_until_ready(fn(x))
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < 3 or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), len(times), float(np.percentile(times, 10))


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def device_peak_mb() -> float | None:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - not every backend has memory stats
        return None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


PATHS = ["hard+interpolate", "hard+antialias", "soft"]
# --quick: every path at 224² and 512², batch 1; the hard path also at 1024² (batch 1) and at
# 224² with batch 16, so that the table has those rows in a run of a few minutes
QUICK_EXTRA = [("hard+interpolate", 1024, 1), ("hard+interpolate", 224, 16)]


def plan(quick: bool, paths: list[str]) -> list[tuple[int, int, str]]:
    """(size, batch, path) combinations to measure, in order."""
    if quick:
        combos = [(s, 1, p) for s in (224, 512) for p in PATHS]
        combos += [(s, b, p) for p, s, b in QUICK_EXTRA]
    else:
        combos = [(s, b, p) for s in (224, 512, 1024) for b in (1, 16) for p in PATHS]
    return [c for c in combos if c[2] in paths]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON output path")
    ap.add_argument("--quick", action="store_true",
                    help="reduced run (224² and 512² batch 1; hard path also 1024² and batch 16)")
    ap.add_argument("--paths", nargs="+", choices=PATHS, default=PATHS,
                    help="render paths to measure (default: all)")
    ap.add_argument("--meshes", nargs="+", choices=MESHES, default=MESHES,
                    help="meshes to measure (default: all three)")
    args = ap.parse_args(argv)
    meshes = load_meshes()
    results = []
    for mesh_name in args.meshes:
        v, f = meshes[mesh_name]
        for s, batch, path in plan(args.quick, args.paths):
            size = (s, s)
            sv1 = fit_to_image(v, size)
            jitter = np.random.default_rng(1).normal(0, 0.3, (batch, *sv1.shape))
            svb = jnp.asarray((sv1[None] + jitter).astype(np.float32))
            x = svb[0] if batch == 1 else svb
            if path == "soft" and batch > 1 and s > 512:
                results.append({"mesh": mesh_name, "size": s, "batch": batch,
                                "path": path, "skipped": "too slow for a CPU run"})
                continue
            fwd, fb = make_path(path, f, size, v.shape[0])
            rss0 = maxrss_mb()
            t_f, n_f, p_f = timeit(fwd, x, 1.0, 300)
            t_b, n_b, p_b = timeit(fb, x, 1.0, 300)
            row = {
                "mesh": mesh_name, "triangles": int(f.shape[0]), "size": s,
                "batch": batch, "path": path,
                "forward_ms_per_image": 1e3 * t_f / batch,
                "forward_backward_ms_per_image": 1e3 * t_b / batch,
                # shared machines (2 vCPUs here) switch between a fast and a slow mode (the
                # slow one runs about as fast as one core alone): the 10th percentiles show
                # the fast one
                "forward_ms_per_image_p10": 1e3 * p_f / batch,
                "forward_backward_ms_per_image_p10": 1e3 * p_b / batch,
                "reps": [n_f, n_b],
                "maxrss_delta_mb": maxrss_mb() - rss0,
                "maxrss_mb": maxrss_mb(),
                "device_peak_mb": device_peak_mb(),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    dev = jax.devices()[0]
    out = {
        "benchmark": "render",
        "machine": {
            "jax_version": jax.__version__, "backend": jax.default_backend(),
            "device_kind": getattr(dev, "device_kind", str(dev)), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        "quick": args.quick,
        "timing": "median (and 10th percentile, *_p10) wall time of jit-warm calls, divided by "
                  "the batch size",
        "results": results,
    }
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
