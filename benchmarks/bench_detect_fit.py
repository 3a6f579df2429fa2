"""Benchmark: NME of landmark fits with a detector in the loop on the AFLW2000-3D subset.

    python benchmarks/bench_detect_fit.py --out bench-out/detect_fit.json [--quick]

Issue 6 item 7, mode (a): each photo of ``$JAXFACE_DATA/aflw2000-3d-subset`` (11 images) goes
through a landmark detector, the default model restricted to its ICT face region (as in
``bench_fit_landmarks.py``) is fitted to the detections with :func:`jaxface.fit.fit_landmarks`,
and the fit's ``landmarks2d`` (the fitted model's iBUG-68 landmarks projected into the image) are
compared with the ground truth ``pt3d_68[:2]``: NME with bounding-box normalisation
(``sqrt(w h)`` of the ground-truth box, the 3DDFA protocol), mean and per yaw bin
([0, 30], (30, 60], (60, 90] degrees of |yaw|). The detections themselves are scored the same way
(``raw``). Mode (b), the fit of the re-annotated 2D landmarks, is the reference ``gt2d``.

Variants:
  * ``mediapipe_plain``: MediaPipe FaceMesh without refinement or mirroring (the earlier default);
    ``mediapipe_refined``: with ``refine_landmarks=True`` only.
  * ``mediapipe``: the current default (``refine_landmarks=True, flip=True``).
  * ``dlib``: dlib's 68-point predictor (faces it does not find are listed and left out).
  * ``mediapipe+dlib``: the two averaged (MediaPipe alone where dlib finds no face).
  * ``dense_mediapipe_wD``: :func:`jaxface.detect.dense.fit_mediapipe_dense` on MediaPipe's 468
    points (dense weight D) plus its mapped 68; ``dense_mediapipe+dlib_wD``: the same with the
    68 of ``mediapipe+dlib``. The 468 points are located on the model by
    :func:`jaxface.models.correspondence.mediapipe_correspondence` (computed in this run).

Timing (``detect_ms_per_image``): median wall time of one detector call on a 450 x 450 photo,
on this machine, loaded by other work: indicative only.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import machine_info, parse_args, report
from jaxface.eval.datasets import YAW_BINS, load_aflw2000, yaw_bin
from jaxface.eval.metrics import nme
from jaxface.models.ict import load_default
from jaxface.models.morphable import restrict

DENSE_WEIGHTS = (0.1, 0.3)


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _summary(rows: list[dict], key: str) -> dict:
    """Mean and per-yaw-bin NME (percent) of ``rows[i][key]`` over the rows that have it."""
    got = [r for r in rows if r.get(key) is not None]
    out = {"n_images": len(got),
           "nme_%": float(100 * np.mean([r[key] for r in got])) if got else None}
    for b in YAW_BINS:
        v = [r[key] for r in got if r["yaw_bin"] == b]
        out[f"nme_%_{b}"] = float(100 * np.mean(v)) if v else None
        out[f"n_{b}"] = len(v)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.split("\n\n")[0], argv)
    t_start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    from jaxface.detect import get_detector
    from jaxface.detect.dense import fit_mediapipe_dense
    from jaxface.fit import fit_landmarks
    from jaxface.models.correspondence import mediapipe_correspondence, with_mediapipe_landmarks

    samples = load_aflw2000()
    if args.quick:
        samples = samples[:3]
    full = load_default()
    corr = mediapipe_correspondence(full)
    say(f"MediaPipe canonical mesh on the default model: RMS distance {corr.rms_mm:.2f} mm, "
        f"max {float(corr.distance_mm.max()):.2f} mm")
    full = with_mediapipe_landmarks(full, corr)
    model = jax.device_put(restrict(full, np.asarray(full.regions["face"], bool)))

    detectors = {"mediapipe_plain": get_detector("mediapipe", refine_landmarks=False, flip=False),
                 "mediapipe_refined": get_detector("mediapipe", flip=False),
                 "mediapipe": get_detector("mediapipe"),
                 "mediapipe468": get_detector("mediapipe", scheme="mediapipe468"),
                 "dlib": get_detector("dlib"),
                 "mediapipe+dlib": get_detector("mediapipe+dlib")}
    fits: dict[tuple[str, int, int], object] = {}

    def fit68(y: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        key = ("68",) + hw
        if key not in fits:
            fits[key] = jax.jit(lambda m, y, hw=hw: fit_landmarks(m, y, hw).landmarks2d)
        return np.asarray(fits[key](model, jnp.asarray(y, jnp.float32)))

    def fit_dense(p468: np.ndarray, head: np.ndarray, w: float, hw: tuple[int, int]
                  ) -> np.ndarray:
        key = ("dense",) + hw
        if key not in fits:
            fits[key] = jax.jit(lambda m, p, h, w, hw=hw: fit_mediapipe_dense(
                m, p, hw, ibug68=h, dense_weight=w).landmarks2d)
        return np.asarray(fits[key](model, jnp.asarray(p468, jnp.float32),
                                    jnp.asarray(head, jnp.float32), jnp.float32(w)))

    rows: list[dict] = []
    det_times: dict[str, list[float]] = {k: [] for k in detectors}
    missed: dict[str, list[str]] = {k: [] for k in detectors}
    for s in samples:
        img = _read_rgb(s.image_path)
        hw = tuple(int(v) for v in img.shape[:2])
        gt = s.landmarks2d
        row: dict = {"image": s.name, "yaw_deg": s.yaw_degrees, "yaw_bin": yaw_bin(s.yaw_degrees)}
        found = {}
        for name, det in detectors.items():
            t0 = time.perf_counter()
            faces = det(img, source=s.name)
            det_times[name].append(time.perf_counter() - t0)
            if faces:
                found[name] = faces[0].landmarks
            else:
                missed[name].append(s.name)

        def score(key: str, pred: np.ndarray, row: dict = row, gt: np.ndarray = gt) -> None:
            row[key] = float(nme(pred, gt, "bbox"))

        score("gt2d_raw", s.landmarks2d_reannotated)
        score("gt2d_fit", fit68(s.landmarks2d_reannotated, hw))
        for name in ("mediapipe_plain", "mediapipe_refined", "mediapipe", "dlib",
                     "mediapipe+dlib"):
            if name in found:
                score(f"{name}_raw", found[name])
                score(f"{name}_fit", fit68(found[name], hw))
        if "mediapipe468" in found:
            for w in DENSE_WEIGHTS:
                for head in ("mediapipe", "mediapipe+dlib"):
                    if head in found:
                        score(f"dense_{head}_w{w}_fit",
                              fit_dense(found["mediapipe468"], found[head], w, hw))
        rows.append(row)
        say(f"{s.name} yaw {s.yaw_degrees:6.1f}: " + ", ".join(
            f"{k} {100 * v:.2f}%" for k, v in row.items() if k.endswith("_fit")))

    keys = [k for k in rows[0] if k.endswith(("_raw", "_fit"))]
    for r in rows[1:]:
        keys += [k for k in r if k.endswith(("_raw", "_fit")) and k not in keys]
    variants = {k: _summary(rows, k) for k in keys}
    results = [{"variant": k, **{f: v for f, v in variants[k].items()
                                 if f.startswith("nme_%") or f == "n_images"}} for k in keys]
    det_ms = {k: 1e3 * statistics.median(v) for k, v in det_times.items() if v}
    payload = {"benchmark": "detect_fit", "machine": machine_info(), "quick": args.quick,
               "n_images": len(samples), "protocol": "NME of the fitted model's iBUG-68 "
               "landmarks2d vs pt3d_68[:2], bounding-box normalisation sqrt(w h) of the "
               "ground truth (3DDFA); face-region default model; jaxface.fit.fit_landmarks "
               "default config", "yaw_bins": list(YAW_BINS),
               "correspondence": {"rms_mm": corr.rms_mm,
                                  "max_mm": float(corr.distance_mm.max())},
               "no_face": missed, "detect_ms_per_image": det_ms,
               "variants": variants, "per_image": rows, "results": results}
    report(payload, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
