"""``jaxface predict``: model parameters of the faces in photos from a trained encoder.

    jaxface predict INPUT --checkpoint CKPT --out DIR [--landmarks PTS_OR_DIR]
                    [--detector mediapipe|dlib|mediapipe+dlib] [--model default|PATH] [--resume]

INPUT is an image or a folder of images; CKPT a ``jaxface train`` run directory (its newest
checkpoint), one of its ``checkpoints/N`` folders, or an exported ``encoder.npz``. Each face is
cropped around its landmarks (``--landmarks`` as for ``jaxface fit``, else the detector's) and
the encoder predicts identity, expression and pose in one forward pass, with no optimisation.
Outputs are those of ``jaxface fit``: ``DIR/<stem>/result.json`` (same keys; ``iterations`` 0,
``landmark_rmse_px`` against the landmarks that chose the crop, plus ``checkpoint``, ``sh`` and
``albedo_coefficients``), ``DIR/<stem>/mesh.obj``, ``DIR/<stem>/overlay.png`` and
``DIR/failures.json``. Exit status 0 when at least one image was predicted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from jaxface.detect import DETECTORS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="an image or a folder of images")
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="training run directory, checkpoints/N folder or exported encoder .npz")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--landmarks", default=None, metavar="PTS_OR_DIR",
                   help="iBUG .pts file (single image) or folder of <stem>.pts files; "
                        "default: run the detector")
    p.add_argument("--detector", default="mediapipe", choices=list(DETECTORS),
                   help="landmark detector when --landmarks is not given (default mediapipe)")
    p.add_argument("--model", default=None,
                   help="model the encoder was trained with (default: the one it names)")
    p.add_argument("--resume", action="store_true",
                   help="skip images whose DIR/<stem>/result.json already exists")


def run(args: argparse.Namespace) -> int:
    from jaxface.cli._common import failure_log, for_each_image, write_fit_outputs
    from jaxface.cli.fit import _extra, _image_items, _landmark_source, _load_model, _observe
    from jaxface.detect import get_detector
    from jaxface.nets.predict import load_predictor, predict_image

    src = Path(args.input)
    items = _image_items(src)
    if not items:
        print(f"jaxface predict: error: no images in {src}", file=sys.stderr)
        return 1
    lm_source = _landmark_source(args.landmarks, src.is_file())
    model = _load_model(args.model) if args.model else None
    predictor = load_predictor(args.checkpoint, model=model)
    model = predictor.decoder.model
    detector = get_detector(args.detector) if lm_source is None else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def step(item, target: Path) -> None:
        image = item.pixels()
        pts, _, how = _observe(item, image, lm_source, detector, 68, args)
        result = predict_image(predictor, image, pts)
        extra = _extra(item, how, pts)
        extra["checkpoint"] = str(args.checkpoint)
        write_fit_outputs(target, image, model, result, observed=pts, extra=extra)

    t0 = time.perf_counter()
    with failure_log(out) as failures:
        n_done, n_skipped = for_each_image(items, step, out, failures, prog="jaxface predict",
                                           resume=args.resume, total=len(items))
    print(f"jaxface predict: {n_done} predicted, {n_skipped} skipped, {len(failures)} failed in "
          f"{time.perf_counter() - t0:.1f} s; results in {out}", file=sys.stderr)
    return 0 if (n_done + n_skipped) > 0 else 1
