"""``jaxface demo``: fit the embedded default model to a real photo and write what it found.

With no arguments it uses NASA's public-domain astronaut portrait that ships inside
scikit-image (``skimage.data.astronaut()``, no download); ``--image PATH`` takes your own photo.
Outputs in ``--out`` (default ``./jaxface-demo/``): ``input.png``, ``landmarks.png`` (detected
landmarks), ``overlay.png`` (the fitted face rendered over the photo, detected landmarks in green
and the fit's in red), ``mesh.obj`` (camera frame, mm) and ``result.json``.
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

    from jaxface.cli._common import write_fit_outputs
    from jaxface.detect import detect_landmarks
    from jaxface.fit import fit_landmarks, result_to_json
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

    write_fit_outputs(out, image, model, result, observed=det.landmarks)
    say(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out.resolve()}")
    return 0
