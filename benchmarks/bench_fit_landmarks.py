"""Benchmark: landmark fitting on AFLW2000-3D photos, jaxface vs eos (eos-py 1.5.0).

    python benchmarks/bench_fit_landmarks.py --out bench-out/fit_landmarks.json [--quick]

Data: the AFLW2000-3D subset (``$JAXFACE_DATA/aflw2000-3d-subset``, 11 photos). Landmarks to fit,
two sources: the dataset's re-annotated 2D landmarks (``gt2d``) and dlib's 68-point detections
(``dlib``; images where dlib finds no face are listed and left out of that source). Errors of
each fit's projected 68 model landmarks: RMSE in pixels against the fitted landmarks (all 68 and
the inner 51) and NME (bounding-box normalisation, the 3DDFA protocol) against the ground truth
``pt3d_68[:2]``.

Model: the default jaxface model restricted to its ICT face region (9,409 vertices, 100 identity
modes, 53 blendshapes) for every method. eos gets the same model as an
``eos.morphablemodel.MorphableModel``: a ``PcaModel`` whose orthonormal basis is the normalised
ICT modes with eigenvalue_k = ||mode_k||^2 (ICT modes are sigma-scaled, so eos' rescaled basis
equals ours), the 53 blendshapes as ``Blendshape`` objects, a landmark mapper file from our
iBUG-68 vertex ids, and for eos' contour mode an ``EdgeTopology`` (1-based ids, ``[0, f]`` for
boundary edges), ``ContourLandmarks`` (iBUG 1-8 / 10-17) and a ``ModelContour`` (ICT's extended
jawlines).

Methods (all with 5 iterations where they iterate):
  * ``jaxface_nonlinear``: :func:`jaxface.fit.fit_landmarks`, default config (perspective LM
    with contour matching).
  * ``jaxface_linear``: :func:`jaxface.fit.linear.fit_linear` (affine camera, contour
    re-assignment along the jawline candidates).
  * ``eos_fixed``: eos ``fit_shape_and_pose`` without contours, all 68 landmarks on fixed
    vertices.
  * ``eos_contour``: eos ``fit_shape_and_pose`` with contour fitting.

Timing: per image, jit-warm, median over repeats (``seconds_per_image``); jaxface also batched
with ``jax.vmap`` over a batch of ``--batch`` fits (the images repeated), reported per image
(``batched_seconds_per_image``). ``speedup_vs_eos`` = eos' fastest mode's seconds per image over
jaxface's batched seconds per image (non-linear and linear fits), measured in the same run.
For eos' contour mode the 17 jaw landmarks' model points are the nearest jawline candidates
(eos does not return its contour correspondences); for ``eos_fixed`` they are the fixed vertices.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import machine_info, parse_args, report
from jaxface.eval.datasets import load_aflw2000
from jaxface.eval.metrics import landmark_rmse, nme
from jaxface.fit import fit_landmarks
from jaxface.fit.linear import fit_linear
from jaxface.models.ict import LEFT_EXTENDED_JAWLINE, RIGHT_EXTENDED_JAWLINE, load_default
from jaxface.models.morphable import MorphableModel, restrict

N_ITER = 5
INNER = np.arange(17, 68)
JAW = np.arange(17)


def _face_model() -> tuple[MorphableModel, np.ndarray]:
    full = load_default()
    mask = np.asarray(full.regions["face"], bool)
    old_to_new = np.cumsum(mask) - 1
    old_to_new[~mask] = -1
    return restrict(full, mask), old_to_new


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _dlib_landmarks(samples) -> tuple[dict[str, np.ndarray], list[str]]:
    from jaxface.detect import NoFaceError, detect_landmarks

    out, missed = {}, []
    for s in samples:
        try:
            out[s.name] = detect_landmarks(_read_rgb(s.image_path), "dlib", source=s.name).landmarks
        except NoFaceError:
            missed.append(s.name)
    return out, missed


# ------------------------------------------------------------------------------------------------
# eos
# ------------------------------------------------------------------------------------------------

def _edge_topology(triangles: np.ndarray):
    """eos EdgeTopology: per undirected edge its two faces (1-based, [0, f] on the boundary)
    and its two vertices (1-based)."""
    import eos

    faces: dict[tuple[int, int], list[int]] = {}
    for f, tri in enumerate(np.asarray(triangles, np.int64)):
        for a, b in ((tri[0], tri[1]), (tri[1], tri[2]), (tri[2], tri[0])):
            faces.setdefault((min(a, b), max(a, b)), []).append(f + 1)
    adj_faces, adj_verts = [], []
    for (a, b), fs in faces.items():
        adj_faces.append([fs[0], fs[1]] if len(fs) >= 2 else [0, fs[0]])
        adj_verts.append([int(a) + 1, int(b) + 1])
    return eos.morphablemodel.EdgeTopology(adj_faces, adj_verts)


class EosFitter:
    """eos-py 1.5.0 on our model: without contours and with contour fitting."""

    def __init__(self, model: MorphableModel, old_to_new: np.ndarray, workdir: Path):
        import eos

        self.eos = eos
        v = model.n_vertices
        mean = np.asarray(model.mean, np.float32).reshape(-1)
        modes = (np.asarray(model.identity_basis, np.float32)
                 * np.asarray(model.identity_std, np.float32)[:, None, None]).reshape(-1, 3 * v)
        norms = np.linalg.norm(modes, axis=1)
        basis = np.ascontiguousarray((modes / norms[:, None]).T)  # (3V, K) unit columns
        tris = np.asarray(model.triangles, np.int64).tolist()
        shape = eos.morphablemodel.PcaModel(mean, basis, (norms ** 2).astype(np.float32), tris)
        blend = [eos.morphablemodel.Blendshape(name, np.asarray(d, np.float32).reshape(-1))
                 for name, d in zip(model.expression_names, np.asarray(model.expression_basis),
                                    strict=True)]
        self.model = eos.morphablemodel.MorphableModel(shape, blend,
                                                       eos.morphablemodel.PcaModel())
        ids = np.asarray(model.landmarks["ibug68"].indices)[:, 0]
        self.ids = ids
        lines_all = ["[landmark_mappings]"] + [f"{i + 1} = {int(ids[i])}" for i in range(68)]
        (workdir / "all.txt").write_text("\n".join(lines_all) + "\n")
        inner = [i for i in range(68) if i == 8 or i >= 17]
        lines_c = (["[landmark_mappings]"] + [f"{i + 1} = {int(ids[i])}" for i in inner]
                   + ["", "[contour_landmarks]",
                      "right = [" + ", ".join(str(i) for i in range(1, 9)) + "]",
                      "left = [" + ", ".join(str(i) for i in range(10, 18)) + "]"])
        (workdir / "contour.txt").write_text("\n".join(lines_c) + "\n")
        right = [int(old_to_new[i]) for i in RIGHT_EXTENDED_JAWLINE if old_to_new[i] >= 0]
        left = [int(old_to_new[i]) for i in LEFT_EXTENDED_JAWLINE if old_to_new[i] >= 0]
        import json

        (workdir / "model_contour.json").write_text(json.dumps(
            {"model_contour": {"right_contour": right, "left_contour": left}}))
        self.mapper_all = eos.core.LandmarkMapper(str(workdir / "all.txt"))
        self.mapper_contour = eos.core.LandmarkMapper(str(workdir / "contour.txt"))
        self.contour_landmarks = eos.fitting.ContourLandmarks.load(str(workdir / "contour.txt"))
        self.model_contour = eos.fitting.ModelContour.load(str(workdir / "model_contour.json"))
        self.edges = _edge_topology(model.triangles)
        cand = np.asarray(model.contours["ibug68"].candidates)
        self.contour_li = np.asarray(model.contours["ibug68"].landmark_index)
        self.contour_cand = cand

    def fit(self, lms: np.ndarray, image_size: tuple[int, int], contour: bool):
        eos = self.eos
        h, w = image_size
        landmarks = [eos.core.Landmark(str(i + 1), [float(x), float(y)])
                     for i, (x, y) in enumerate(np.asarray(lms, np.float64))]
        if contour:
            return eos.fitting.fit_shape_and_pose(
                self.model, landmarks, self.mapper_contour, w, h, self.edges,
                self.contour_landmarks, self.model_contour, num_iterations=N_ITER)
        return eos.fitting.fit_shape_and_pose(self.model, landmarks, self.mapper_all, w, h,
                                              num_iterations=N_ITER)

    def landmarks2d(self, result, lms: np.ndarray, image_size: tuple[int, int],
                    contour: bool) -> np.ndarray:
        """The fit's 68 model landmarks projected by eos' own affine camera."""
        mesh, params = result[0], result[1]
        h, w = image_size
        p = np.asarray(self.eos.fitting.get_3x4_affine_camera_matrix(params, w, h))
        verts = np.asarray(mesh.vertices, np.float64)
        xh = np.concatenate([verts, np.ones((len(verts), 1))], 1)
        uv_all = None
        ids = self.ids.copy()
        if contour:  # nearest jawline candidate (the rule jaxface's linear fit uses)
            uv_all = xh @ p[:2].T
            for k, li in enumerate(self.contour_li):
                c = self.contour_cand[k][self.contour_cand[k] >= 0]
                d = np.sum((uv_all[c] - lms[li]) ** 2, 1)
                ids[li] = c[np.argmin(d)]
        return (xh[ids] @ p[:2].T).astype(np.float32)


# ------------------------------------------------------------------------------------------------

def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _errors(pred: np.ndarray, fitted: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    return {"rmse_px": float(landmark_rmse(pred, fitted)),
            "rmse_inner51_px": float(landmark_rmse(pred[INNER], fitted[INNER])),
            "nme_bbox": float(nme(pred, gt, "bbox")),
            "nme_inner51_bbox_of68": float(
                np.mean(np.linalg.norm(pred[INNER] - gt[INNER], axis=1))
                / np.sqrt(np.prod(gt.max(0) - gt.min(0))))}


def _batched_child(meth: str, lms: np.ndarray, image_size: tuple[int, int], batch: int,
                   chunk: int, repeat: int, queue) -> None:
    """Time one vmapped jaxface method (a child process: see ``_batched_with_watchdog``)."""
    model = jax.device_put(_face_model()[0])
    y = jnp.asarray(lms, jnp.float32)
    # the model is closed over (concrete), as in main(): see fit_landmarks' note on speed
    if meth == "jaxface_nonlinear":
        fn = jax.jit(jax.vmap(lambda v: fit_landmarks(model, v, image_size)))
    else:
        fn = jax.jit(jax.vmap(lambda v: fit_linear(model, v, image_size, n_iterations=N_ITER)))

    def run_all():
        return [jax.block_until_ready(fn(y[i:i + chunk])) for i in range(0, batch, chunk)]

    first = np.concatenate([np.asarray(r.landmarks2d) for r in run_all()])
    queue.put((_median_time(run_all, repeat), first))


def _batched_with_watchdog(meth: str, lms: np.ndarray, image_size: tuple[int, int], batch: int,
                           chunk: int, repeat: int, timeout: float
                           ) -> tuple[float, np.ndarray] | None:
    """Seconds for the whole batch, measured in a child process that is killed after
    ``timeout`` seconds: repeated calls of the wide vmapped ``fit_linear`` used to hang on the
    2-core CPU (jax 0.10.2: two batched LAPACK calls running at once deadlock XLA:CPU's
    intra-op pool, see ``jaxface.fit.linear._after``), and a hung benchmark must still write
    its JSON."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    # the child is a second process on the same accelerator: it must not try to reserve the
    # memory this one already holds (XLA's default preallocation)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    queue = ctx.Queue()
    proc = ctx.Process(target=_batched_child,
                       args=(meth, lms, image_size, batch, chunk, repeat, queue))
    proc.start()
    try:
        seconds, lm2d = queue.get(timeout=timeout)
        return float(seconds), lm2d
    except Exception:  # queue.Empty: timed out (or the child died)
        return None
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()


def main(argv: list[str] | None = None) -> int:
    def extra(p):
        p.add_argument("--batch", type=int, default=256, help="vmapped batch size")
        p.add_argument("--linear-chunk", type=int, default=0,
                       help="vmap chunk of the batched linear fit (0: the whole batch in one "
                            "call)")
        p.add_argument("--batch-timeout", type=float, default=600.0,
                       help="seconds before a batched timing's child process is killed")
        p.add_argument("--no-eos", action="store_true", help="skip eos")
        p.add_argument("--no-dlib", action="store_true", help="skip the dlib detections")

    args = parse_args(__doc__.split("\n\n")[0], argv, extra)
    repeat = 1 if args.quick else 3
    t_start = time.perf_counter()
    samples = load_aflw2000()
    image_size = samples[0].image_size
    if any(s.image_size != image_size for s in samples):
        raise SystemExit("all images must share one size for the batched timing")
    model, old_to_new = _face_model()
    dmodel = jax.device_put(model)
    sources = {"gt2d": {s.name: s.landmarks2d_reannotated for s in samples}}
    missed: list[str] = []
    if not args.no_dlib:
        sources["dlib"], missed = _dlib_landmarks(samples)
    gt = {s.name: s.landmarks2d for s in samples}
    yaw = {s.name: s.yaw_degrees for s in samples}

    # The model is closed over, not a jit argument: fit_landmarks' contour search then reads
    # only the mesh around the jawline candidates (with a traced model, the whole mesh).
    nonlin = jax.jit(lambda y: fit_landmarks(dmodel, y, image_size))
    lin = jax.jit(lambda y: fit_linear(dmodel, y, image_size, n_iterations=N_ITER))
    jax_methods = {"jaxface_nonlinear": nonlin, "jaxface_linear": lin}

    eosf = None
    eos_error = None
    if not args.no_eos:
        try:
            eosf = EosFitter(model, old_to_new, Path(tempfile.mkdtemp(prefix="eosbench")))
        except ImportError as e:
            eos_error = f"eos-py is not installed ({e}); pip install eos-py==1.5.0"

    per_image: list[dict] = []
    times: dict[str, list[float]] = {}
    single_lm2d: dict[str, list[np.ndarray]] = {}  # per-image fits, in all_lms' order
    for src, lm_by_name in sources.items():
        for name, lms in lm_by_name.items():
            y = jnp.asarray(lms, jnp.float32)
            row = {"image": name, "source": src, "yaw_deg": yaw[name]}
            for meth, fn in jax_methods.items():
                res = fn(y)
                jax.block_until_ready(res)
                t = _median_time(lambda fn=fn, y=y: fn(y), repeat)
                times.setdefault(meth, []).append(t)
                row[meth] = _errors(np.asarray(res.landmarks2d), lms, gt[name])
                single_lm2d.setdefault(meth, []).append(np.asarray(res.landmarks2d))
                if hasattr(res, "iterations"):
                    row[meth]["iterations"] = int(res.iterations)
            if eosf is not None:
                for meth, contour in (("eos_fixed", False), ("eos_contour", True)):
                    r = eosf.fit(lms, image_size, contour)
                    t = _median_time(lambda c=contour, lms=lms: eosf.fit(lms, image_size, c),
                                     max(1, repeat // 2) if contour else repeat)
                    times.setdefault(meth, []).append(t)
                    row[meth] = _errors(eosf.landmarks2d(r, lms, image_size, contour), lms,
                                        gt[name])
            per_image.append(row)
            print(f"[{time.perf_counter() - t_start:6.0f} s] {src:5s} {name} yaw "
                  f"{yaw[name]:6.1f}: " + ", ".join(
                      f"{m} {100 * row[m]['nme_bbox']:.2f}% {1e3 * times[m][-1]:.0f} ms"
                      for m in row if isinstance(row[m], dict)), file=sys.stderr, flush=True)

    # batched: all fitted landmark sets, repeated up to the batch size
    all_lms = np.stack([lms for src in sources.values() for lms in src.values()])
    reps = -(-args.batch // len(all_lms))
    batch = jnp.asarray(np.concatenate([all_lms] * reps)[:args.batch], jnp.float32)
    batched: dict[str, float] = {}
    batched_diff: dict[str, float] = {}
    batched_hung: list[str] = []
    for meth in jax_methods:
        chunk = (args.batch if meth == "jaxface_nonlinear" or args.linear_chunk <= 0
                 else min(args.linear_chunk, args.batch))
        got = _batched_with_watchdog(meth, np.asarray(batch), image_size, args.batch, chunk,
                                     max(2, repeat // 3), args.batch_timeout)
        if got is None:
            batched_hung.append(meth)
            print(f"[{time.perf_counter() - t_start:6.0f} s] {meth} batched x{args.batch}: no "
                  f"result within {args.batch_timeout} s (killed)", file=sys.stderr, flush=True)
            continue
        t, lm2d = got
        batched[meth] = t / args.batch
        # the batch's first members are the per-image fits' inputs: the same fits, or the
        # timing is of something else (e.g. TF32 products on a GPU)
        batched_diff[meth] = float(np.abs(
            lm2d[:len(all_lms)] - np.stack(single_lm2d[meth])).max())
        if batched_diff[meth] > 0.05:
            print(f"WARNING: {meth} batched fits differ from the per-image fits by up to "
                  f"{batched_diff[meth]:.3g} px", file=sys.stderr, flush=True)
        print(f"[{time.perf_counter() - t_start:6.0f} s] {meth} batched x{args.batch} "
              f"(vmap chunks of {chunk}): {1e3 * batched[meth]:.2f} ms per image",
              file=sys.stderr, flush=True)

    methods = list(times)
    summary = {}
    for meth in methods:
        entry = {"seconds_per_image": statistics.median(times[meth])}
        if meth in batched:
            entry["batched_seconds_per_image"] = batched[meth]
            entry["batched_max_landmark_diff_px"] = batched_diff[meth]
        for src in sources:
            rows = [r[meth] for r in per_image if r["source"] == src]
            for k in rows[0]:
                entry[f"{src}_{k}"] = float(np.mean([r[k] for r in rows]))
            bins = {}
            for r in per_image:
                if r["source"] != src:
                    continue
                b = "[0, 30]" if abs(r["yaw_deg"]) <= 30 else (
                    "(30, 60]" if abs(r["yaw_deg"]) <= 60 else "(60, 90]")
                bins.setdefault(b, []).append(r[meth]["nme_bbox"])
            entry[f"{src}_nme_bbox_per_yaw_bin"] = {b: float(np.mean(v)) for b, v in bins.items()}
        summary[meth] = entry

    seconds = {m: summary[m]["seconds_per_image"] for m in methods}
    nme_by = {m: summary[m]["gt2d_nme_bbox"] for m in methods}
    payload = {"benchmark": "fit_landmarks", "machine": machine_info(), "quick": args.quick,
               "n_images": len(samples), "image_size": list(image_size), "iterations": N_ITER,
               "batch": args.batch, "model": {"name": model.name, "n_vertices": model.n_vertices,
                                               "n_identity": model.n_identity,
                                               "n_expression": model.n_expression},
               "dlib_no_face": missed, "batched_timed_out": batched_hung,
               "seconds_per_image": seconds, "nme": nme_by,
               "methods": summary, "per_image": per_image}
    if eosf is not None:
        eos_best = min(("eos_fixed", "eos_contour"), key=lambda m: seconds[m])
        payload["eos_ms_per_image"] = 1e3 * seconds[eos_best]
        payload["eos_fastest_mode"] = eos_best
        def batched_ms(m):
            return 1e3 * batched[m] if m in batched else None

        def speedup(m):
            return seconds[eos_best] / batched[m] if m in batched else None

        payload["jaxface_ms_per_image"] = batched_ms("jaxface_nonlinear")
        payload["jaxface_linear_ms_per_image"] = batched_ms("jaxface_linear")
        payload["speedup_vs_eos"] = speedup("jaxface_nonlinear")
        payload["speedup_vs_eos_linear"] = speedup("jaxface_linear")
        payload["speedup_vs_eos_single"] = seconds[eos_best] / seconds["jaxface_nonlinear"]
    else:
        payload["eos_error"] = eos_error or "skipped (--no-eos)"
    results = [{"method": m, "ms_per_image": 1e3 * seconds[m],
                "batched_ms_per_image": 1e3 * batched[m] if m in batched else None,
                "batched_max_landmark_diff_px": batched_diff.get(m),
                "nme_gt2d_%": 100 * nme_by[m],
                "rmse_gt2d_px": summary[m]["gt2d_rmse_px"]} for m in methods]
    payload["results"] = results
    report(payload, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
