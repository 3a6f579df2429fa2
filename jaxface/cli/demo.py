"""``jaxface demo``: fit the embedded default model to a real photo and write what it found.

With no arguments it uses NASA's public-domain astronaut portrait that ships inside
scikit-image (``skimage.data.astronaut()``, no download); ``--image PATH`` takes your own photo.
Outputs in ``--out`` (default ``./jaxface-demo/``): ``input.png``, ``landmarks.png`` (detected
landmarks), ``overlay.png`` (the fitted face rendered over the photo, detected landmarks in green
and the fit's in red), ``photometric.png`` (the photometric fit: shape, pose, albedo and SH
light rendered over the photo), ``mesh.obj`` (camera frame, mm), ``result.json`` (the
landmark fit, plus ``albedo``, ``sh``, ``photometric_error`` and the whole photometric fit
under ``photometric``), and the edits of the photometric fit: ``texture.png`` (UV texture from
the photo) with ``texture_visibility.png``, ``textured.obj/.mtl/.glb``, ``frontal.png``
(frontalised) and ``relit.png`` (relit from the side).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", default=None,
                   help="photo to fit (default: scikit-image's public-domain astronaut)")
    p.add_argument("--out", default="jaxface-demo", help="output folder (default ./jaxface-demo)")
    p.add_argument("--detector", default="dlib", choices=["dlib"], help="landmark detector")


def load_image(path: str | None) -> tuple[np.ndarray, str]:
    """(HxWx3 float32 image in [0, 1], a name for it)."""
    from jaxface.viz import to_float

    if path is None:
        try:
            from skimage import data
        except ImportError as e:
            from jaxface.detect import MissingDependencyError

            raise MissingDependencyError(
                "the default demo photo comes from scikit-image: pip install 'jaxface[demo]' "
                "or pass --image PATH") from e
        return to_float(data.astronaut()), "astronaut (scikit-image, NASA, public domain)"
    from jaxface.cli._common import read_image

    return read_image(path), path


def run(args: argparse.Namespace) -> int:
    import imageio.v3 as iio

    from jaxface.cli._common import photometric_extra, write_fit_outputs, write_photometric_png
    from jaxface.detect import detect_landmarks
    from jaxface.fit import fit_landmarks, fit_photometric, result_to_json
    from jaxface.models import load_default
    from jaxface.viz import draw_points, to_uint8

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    image, name = load_image(args.image)
    h, w = image.shape[:2]
    say(f"photo: {name}, {w}x{h}")
    model = load_default()
    say(f"model: {model.name}, {model.n_vertices} vertices, {model.n_identity} identity + "
        f"{model.n_expression} expression modes")
    det = detect_landmarks(image, args.detector, source=name)
    say(f"{args.detector}: {len(det.landmarks)} landmarks, face box "
        f"{np.round(det.box).astype(int).tolist()}")
    iio.imwrite(out / "input.png", to_uint8(image))
    iio.imwrite(out / "landmarks.png", draw_points(image, det.landmarks, (0, 255, 0), 2))

    say("fitting landmarks (compiling on first use) ...")
    result = fit_landmarks(model, det.landmarks, (h, w), weights=det.confidence)
    payload = result_to_json(model, result, (h, w))
    say(f"landmark fit: RMSE {payload['landmark_rmse_px']:.2f} px after "
        f"{payload['iterations']} iterations")

    say("photometric fit: light, albedo, shape and pose (compiling on first use) ...")
    photo = fit_photometric(model, image, init=result, landmarks=det.landmarks,
                            landmark_weights=det.confidence, free_albedo=True)
    extra = photometric_extra(model, photo, (h, w), free_albedo=True)
    say(f"photometric fit: RMS colour error {extra['photometric_error']:.4f}, landmark RMSE "
        f"{extra['photometric']['landmark_rmse_px']:.2f} px")
    write_photometric_png(out, image, model, photo)
    write_fit_outputs(out, image, model, result, observed=det.landmarks, extra=extra)
    say("texture, frontalisation and relighting (compiling on first use) ...")
    from jaxface.edit import demo_edits

    demo_edits(out, model, image, photo.fit_result())
    say(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out.resolve()}")
    return 0
