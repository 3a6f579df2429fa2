"""``jaxface fit``: fit the morphable model to the faces in images, a folder or a video.

    jaxface fit INPUT [--landmarks PTS_OR_DIR] [--detector mediapipe|dlib|mediapipe+dlib]
                [--model default|PATH] [--video [--smoothness S]] --out DIR [--resume]
                [--photometric] [--init CKPT]

INPUT is an image, a folder of images (files with an image suffix, sorted by name; other files
are ignored) or, with ``--video``, a video file whose frames are read with imageio's ``pyav``
plugin (PyAV). Images are fitted independently. Video frames are fitted jointly by
``jaxface.fit.fit_landmarks_sequence``: one identity for the whole clip and temporally smooth
pose and expression (``--smoothness``, default 1; 0 turns smoothing off); frames without a
face are left out of the sequence and recorded as failures.

For each image (``<stem>`` = the file name without suffix; ``<video stem>_<frame:06d>`` for
frames) it writes ``DIR/<stem>/result.json`` (``jaxface.fit.result_to_json``: ``landmarks2d``
(68 x 2 pixels, iBUG order), ``rotation``, ``translation`` (mm), ``camera`` (fx, fy, cx, cy),
``identity``, ``expression``, ``landmark_rmse_px``, ... plus ``input``, ``landmarks_source``
and ``observed_landmarks``), ``DIR/<stem>/mesh.obj`` (camera frame, mm) and
``DIR/<stem>/overlay.png`` (the fit over the photo; input landmarks green, fitted red).
With ``--photometric`` each landmark fit is refined by ``jaxface.fit.fit_photometric``:
``result.json`` gains ``albedo``, ``sh`` (9 x 3), ``photometric_error`` and ``photometric``
(the whole photometric fit) and ``DIR/<stem>/photometric.png`` shows it over the photo.
``result.json`` is written last, so ``--resume`` skips exactly the images it finished.
With ``--init CKPT`` each landmark fit starts from a trained encoder's prediction
(:func:`jaxface.nets.predict.predict_image`) instead of the frontal guess.

Landmarks: ``--landmarks FILE.pts`` (a single image) or ``--landmarks DIR`` holding
``<stem>.pts`` per image (an image without one is a failure); otherwise the detector runs and the
largest face is fitted.

Failures: an image that cannot be read, has no face, or has unusable landmarks is recorded in
``DIR/failures.json`` (``{"<file>": "reason"}``, this run's failures; ``{}`` when none) and the
run goes on. Exit status: 0 when at least one image was fitted (or already done, with
``--resume``), 1 when none was (every image failed, or there was nothing to fit).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jaxface.detect import DETECTORS
from jaxface.errors import JaxfaceError


class LandmarkInputError(JaxfaceError, ValueError):
    """Given landmarks cannot be fitted (wrong count, NaN, outside the image, face too small)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="an image, a folder of images, or a video file (with --video)")
    p.add_argument("--landmarks", default=None, metavar="PTS_OR_DIR",
                   help="iBUG .pts file (single image) or folder of <stem>.pts files; "
                        "default: run the detector")
    p.add_argument("--detector", default="mediapipe", choices=list(DETECTORS),
                   help="landmark detector when --landmarks is not given (default mediapipe; "
                        "mediapipe+dlib averages the two, the most accurate)")
    p.add_argument("--model", default="default",
                   help="'default' (the embedded model) or a jaxface model .npz")
    p.add_argument("--video", action="store_true",
                   help="INPUT is a video: fit every frame with one shared identity and "
                        "temporally smooth pose and expression")
    p.add_argument("--smoothness", type=float, default=1.0,
                   help="with --video: weight of the temporal smoothness term (0: none)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--photometric", action="store_true",
                   help="refine the landmark fit photometrically (shape, pose, albedo, SH light): "
                        "adds albedo, sh, photometric_error to result.json and writes "
                        "photometric.png")
    p.add_argument("--free-albedo", action="store_true",
                   help="with --photometric: finish with a free per-vertex albedo (smooth, pulled "
                        "to the low-dimensional fit where unseen) that keeps detail such as brows "
                        "and lips; result.json's albedo kind becomes 'harmonics+free'")
    p.add_argument("--resume", action="store_true",
                   help="skip images whose DIR/<stem>/result.json already exists")
    p.add_argument("--init", default=None, metavar="CKPT",
                   help="start each landmark fit from a trained encoder's prediction "
                        "(a `jaxface train` run directory or exported encoder .npz)")


# ----------------------------------------------------------------------------- inputs


class _Item:
    """One picture to fit: a name for messages, an output stem, and how to get its pixels."""

    def __init__(self, name: str, stem: str, path: Path | None = None,
                 frame: np.ndarray | None = None, index: int | None = None):
        self.name, self.stem, self.path, self.frame, self.index = name, stem, path, frame, index

    def pixels(self) -> np.ndarray:
        from jaxface.cli._common import check_image, read_image

        if self.frame is not None:
            return check_image(self.frame, self.name)
        return read_image(self.path)


def _image_items(src: Path) -> list[_Item]:
    from jaxface.cli._common import IMAGE_SUFFIXES

    if src.is_dir():
        files = sorted(p for p in src.iterdir()
                       if p.is_file() and not p.name.startswith(".")
                       and p.suffix.lower() in IMAGE_SUFFIXES)
    elif src.is_file():
        files = [src]
    else:
        raise FileNotFoundError(f"input {str(src)!r} not found")
    stems = [p.stem for p in files]
    items = []
    for p in files:
        # two files with one stem (a.jpg, a.png) keep their suffix in the output name
        stem = p.stem if stems.count(p.stem) == 1 else p.name.replace(".", "_")
        items.append(_Item(str(p), stem, path=p))
    return items


def _video_items(src: Path) -> Iterator[_Item]:
    try:
        import av  # noqa: F401
        import imageio.v3 as iio
    except ImportError as e:
        from jaxface.detect import MissingDependencyError

        raise MissingDependencyError("reading video needs PyAV: pip install av") from e
    from jaxface.cli._common import ImageReadError

    try:
        frames = iio.imiter(src, plugin="pyav")
        for i, frame in enumerate(frames):
            yield _Item(f"{src}#{i}", f"{src.stem}_{i:06d}", frame=np.asarray(frame), index=i)
    except Exception as e:
        raise ImageReadError(f"cannot read video {src}: {type(e).__name__}: {e}") from None


def _video_length(src: Path) -> int | None:
    try:
        import imageio.v3 as iio

        meta = iio.immeta(src, plugin="pyav")
        return int(round(float(meta["duration"]) * float(meta["fps"])))
    except Exception:
        return None


def _landmark_source(arg: str | None, single_image: bool):
    """A function ``stem -> (68, 2) landmarks`` or None (run the detector)."""
    if arg is None:
        return None
    from jaxface.detect import read_pts

    src = Path(arg)
    if src.is_dir():
        def from_dir(stem: str) -> np.ndarray:
            f = src / f"{stem}.pts"
            if not f.is_file():
                raise FileNotFoundError(f"no landmark file {f}")
            return read_pts(f)
        return from_dir
    if src.is_file():
        if not single_image:
            raise LandmarkInputError(f"--landmarks {arg} is one file, but INPUT is not a single "
                                     "image; pass a folder of <stem>.pts files")
        pts = read_pts(src)
        return lambda stem: pts
    raise FileNotFoundError(f"landmarks {arg!r} not found")


def check_landmarks(pts: np.ndarray, image_size: tuple[int, int], n_expected: int,
                    source: str) -> np.ndarray:
    """Validate (N, 2) landmarks for a fit; NaN rows are allowed (treated as missing)."""
    pts = np.asarray(pts, np.float32)
    if pts.ndim != 2 or pts.shape != (n_expected, 2):
        raise LandmarkInputError(f"{source}: expected {n_expected} x 2 landmarks (iBUG-68), got "
                                 f"shape {pts.shape}")
    finite = np.all(np.isfinite(pts), axis=1)
    if finite.sum() < 8:
        raise LandmarkInputError(f"{source}: only {int(finite.sum())} of {n_expected} landmarks "
                                 "are finite; at least 8 are needed")
    h, w = image_size
    good = pts[finite]
    inside = (good[:, 0] >= 0) & (good[:, 0] <= w) & (good[:, 1] >= 0) & (good[:, 1] <= h)
    if inside.mean() < 0.5:
        raise LandmarkInputError(f"{source}: {int((~inside).sum())} of {len(good)} landmarks lie "
                                 f"outside the {w}x{h} image")
    size = float(np.sqrt(np.prod(good.max(0) - good.min(0))))
    if size < 10.0:
        raise LandmarkInputError(f"{source}: the face is too small ({size:.1f} px across; at "
                                 "least 10 px needed)")
    return pts


# ----------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    from jaxface.cli._common import failure_log, for_each_image, write_fit_outputs
    from jaxface.detect import get_detector
    from jaxface.fit import fit_landmarks

    out = Path(args.out)
    src = Path(args.input)
    if args.video:
        if src.is_dir() or not src.is_file():
            raise FileNotFoundError(f"--video needs a video file; {str(src)!r} is "
                                    + ("a folder" if src.is_dir() else "not found"))
        items = _video_items(src)
        total = _video_length(src)
        single = False
    else:
        items = _image_items(src)
        total = len(items)
        single = src.is_file()
        if not items:
            print(f"jaxface fit: error: no images in {src}", file=sys.stderr)
            return 1
    lm_source = _landmark_source(args.landmarks, single)
    model = _load_model(args.model)
    n_lm = len(model.landmarks["ibug68"]) if "ibug68" in model.landmarks else None
    if n_lm is None:
        print(f"jaxface fit: error: model {model.name!r} has no ibug68 landmark set",
              file=sys.stderr)
        return 1
    detector = get_detector(args.detector) if lm_source is None else None
    predictor = None
    if getattr(args, "init", None):
        if args.video:
            raise LandmarkInputError("--init is for images; video fits start from the "
                                     "sequence fit's own initialisation")
        from jaxface.nets.predict import load_predictor

        predictor = load_predictor(args.init, model=model)
    out.mkdir(parents=True, exist_ok=True)
    sequence: list | None = [] if args.video else None

    def step(item, target: Path) -> bool:
        image = item.pixels()
        h, w = image.shape[:2]
        pts, conf, how = _observe(item, image, lm_source, detector, n_lm, args)
        if sequence is not None:  # video: fitted jointly below, written in pass 2
            sequence.append((item.index, (h, w), pts, conf, how))
            return False
        init = None
        if predictor is not None:
            from jaxface.nets.predict import predict_image

            init = predict_image(predictor, image, pts)
        result = fit_landmarks(model, pts, (h, w), weights=conf, init=init)
        extra = _extra(item, how, pts)
        if init is not None:
            extra["init"] = str(args.init)
        if args.photometric:
            extra.update(_photometric(target, image, model, result, pts, conf,
                                      args.free_albedo))
        write_fit_outputs(target, image, model, result, observed=pts, extra=extra)
        return True

    t0 = time.perf_counter()
    with failure_log(out) as failures:
        n_done, n_skipped = for_each_image(items, step, out, failures, prog="jaxface fit",
                                           resume=args.resume and not args.video, total=total)
        if sequence:
            n_done, n_skipped = _fit_video(src, out, model, sequence, args, failures)
    dt = time.perf_counter() - t0
    print(f"jaxface fit: {n_done} fitted, {n_skipped} skipped (already done), "
          f"{len(failures)} failed in {dt:.1f} s; results in {out}", file=sys.stderr)
    return 0 if (n_done + n_skipped) > 0 else 1


def _observe(item: _Item, image: np.ndarray, lm_source, detector, n_lm: int,
             args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(landmarks (L, 2), confidences or None, where they came from) for one picture."""
    from jaxface.detect import NoFaceError

    h, w = image.shape[:2]
    if lm_source is not None:
        pts, conf = lm_source(item.stem), None
        how = f"file:{args.landmarks}"
    else:
        found = detector(image, source=item.name)
        if not found:
            raise NoFaceError(item.name, detector.name)
        pts, conf = found[0].landmarks, found[0].confidence
        how = f"detector:{detector.name}"
    return check_landmarks(pts, (h, w), n_lm, item.name), conf, how


def _photometric(target: Path, image: np.ndarray, model, result, pts: np.ndarray,
                 conf: np.ndarray | None, free_albedo: bool = False) -> dict:
    """``--photometric``: refine ``result``, write ``photometric.png``; the result.json keys."""
    from jaxface.cli._common import photometric_extra, write_photometric_png
    from jaxface.fit import fit_photometric

    h, w = image.shape[:2]
    photo = fit_photometric(model, image, init=result, landmarks=pts, landmark_weights=conf,
                            free_albedo=free_albedo)
    write_photometric_png(target, image, model, photo)
    return photometric_extra(model, photo, (h, w), free_albedo=free_albedo)


def _extra(item: _Item, how: str, pts: np.ndarray) -> dict:
    extra = {"input": item.name, "landmarks_source": how,
             **({"input_path": str(item.path.resolve())} if item.path is not None else {}),
             "observed_landmarks": [[None if not np.isfinite(v) else round(float(v), 4)
                                     for v in p] for p in pts]}
    if item.index is not None:
        extra["frame"] = item.index
    return extra


def _fit_video(src: Path, out: Path, model, sequence: list, args: argparse.Namespace,
               failures: dict[str, str]) -> tuple[int, int]:
    """Fit the frames that had landmarks jointly, then re-read the video to write outputs.

    Returns (frames written, frames skipped by --resume)."""
    import jax

    from jaxface.cli._common import for_each_image, write_fit_outputs
    from jaxface.fit import fit_landmarks_sequence

    sizes = {s[1] for s in sequence}
    if len(sizes) != 1:
        raise ValueError(f"video frames change size: {sorted(sizes)}")
    (h, w), = sizes
    lms = np.stack([s[2] for s in sequence]).astype(np.float32)
    conf = np.stack([np.ones(lms.shape[1], np.float32) if s[3] is None else s[3]
                     for s in sequence])
    print(f"jaxface fit: fitting {len(sequence)} frames jointly (shared identity, smoothness "
          f"{args.smoothness})", file=sys.stderr)
    results = fit_landmarks_sequence(model, lms, (h, w), weights=conf,
                                     smoothness=args.smoothness)
    row = {s[0]: i for i, s in enumerate(sequence)}

    def step(item, target: Path) -> None:
        i = row[item.index]
        result = jax.tree_util.tree_map(lambda x: x[i], results)
        image = item.pixels()
        extra = _extra(item, sequence[i][4], lms[i])
        if args.photometric:
            extra.update(_photometric(target, image, model, result, lms[i], conf[i],
                                      args.free_albedo))
        write_fit_outputs(target, image, model, result, observed=lms[i], extra=extra)

    frames = (item for item in _video_items(src) if item.index in row)
    return for_each_image(frames, step, out, failures, prog="jaxface fit", resume=args.resume,
                          total=len(row))


def _load_model(spec: str):
    from jaxface.models import load_default, load_npz

    if spec == "default":
        return load_default()
    if not Path(spec).is_file():
        raise FileNotFoundError(f"model {spec!r} not found (give 'default' or a .npz file)")
    return load_npz(spec)
