"""``jaxface edit``: texture extraction and face editing on a fitted photo (survey §6).

Usage::

    jaxface edit texture     SOURCE --out DIR [--texture-size 512]
    jaxface edit frontalize  SOURCE --out DIR [--neutral]
    jaxface edit relight     SOURCE --out DIR [--light right|left|top|front | --sh FILE]
    jaxface edit expression  SOURCE --out DIR [--set jawOpen=0.6 ...] [--from OTHER_RESULT]

``SOURCE`` is either

* a fit result: a ``result.json`` file or the folder holding it, as written by ``jaxface fit``
  (``OUT/<stem>/``) or ``jaxface demo``. It must contain ``identity``, ``expression``,
  ``rotation``, ``translation``, ``camera`` and ``image_size`` (a photometric fit's ``sh`` and
  ``albedo`` are used when present). The photo is, in this order: ``--image PATH``; the
  ``input`` key of result.json (absolute, or relative to the result folder, its parent, or the
  current directory); ``input.png`` in the result folder (the demo writes it). Its size must
  equal ``image_size``.
* or a photo: it is fitted first (dlib landmarks + ``fit_landmarks`` on the default model).

The model is the embedded default (``--model FILE.npz`` for another, which must be the one the
result was fitted with). Outputs in ``--out`` (written under temporary names, then renamed):
``texture.png``, ``texture_visibility.png`` (grey observed, blue mirror-filled, red fallback),
``textured.obj`` + ``textured.mtl`` (model frame, mm) and ``textured.glb`` (metres) for
``texture``; ``frontal.png``; ``relit.png``; ``expression.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from jaxface.errors import JaxfaceError

ACTIONS = ("texture", "frontalize", "relight", "expression")
LIGHTS = ("right", "left", "top", "front")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=ACTIONS, help="what to compute")
    p.add_argument("source", help="a fit result (result.json or its folder) or a photo")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--image", default=None, help="the fitted photo (default: from result.json)")
    p.add_argument("--model", default="default",
                   help="'default' (the embedded model) or a .npz model file; must be the model "
                        "the result was fitted with")
    p.add_argument("--texture-size", type=int, default=512, help="texture size S (default 512)")
    p.add_argument("--neutral", action="store_true", help="frontalize: drop the expression")
    p.add_argument("--light", choices=LIGHTS, default="right",
                   help="relight: new light direction (default right)")
    p.add_argument("--sh", default=None,
                   help="relight: JSON file with 9x3 SH coefficients (camera frame, the units "
                        "of the photo's light; --light presets keep the face's brightness)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=WEIGHT",
                   help="expression: set a blendshape weight (repeatable)")
    p.add_argument("--from", dest="from_result", default=None,
                   help="expression: take the expression of another fit (reenactment)")


def _find_image(res_dir: Path, payload: dict, explicit: str | None) -> Path:
    if explicit is not None:
        return Path(explicit)
    cands = []
    name = payload.get("input")
    if isinstance(name, str) and name:
        q = Path(name)
        cands += [q] if q.is_absolute() else [res_dir / q, res_dir.parent / q, Path.cwd() / q]
    cands.append(res_dir / "input.png")
    for c in cands:
        if c.is_file():
            return c
    raise JaxfaceError(f"cannot find the photo of {res_dir / 'result.json'} (tried "
                       f"{', '.join(str(c) for c in cands)}); pass --image PATH")


def _load_source(args: argparse.Namespace, model):
    """(fit, image) from a result folder / json or a photo."""
    from jaxface.cli._common import IMAGE_SUFFIXES, read_image
    from jaxface.edit import load_fit

    src = Path(args.source)
    if not src.exists():
        raise FileNotFoundError(f"{str(src)!r} not found")
    if src.is_file() and src.suffix.lower() in IMAGE_SUFFIXES:
        from jaxface.detect import detect_landmarks
        from jaxface.fit import fit_landmarks

        image = read_image(src)
        det = detect_landmarks(image, "dlib", source=src.name)
        fit = fit_landmarks(model, det.landmarks, image.shape[:2], weights=det.confidence)
        print(f"jaxface edit: fitted {src.name} (landmark RMSE {float(fit.rmse_px):.2f} px)",
              file=sys.stderr)
        return fit, image
    fit, payload = load_fit(src)
    res_dir = src if src.is_dir() else src.parent
    img_path = _find_image(res_dir, payload, args.image)
    image = read_image(img_path)
    hw = payload.get("image_size")
    if hw is not None and list(image.shape[:2]) != [int(hw[0]), int(hw[1])]:
        raise JaxfaceError(f"{img_path}: photo is {image.shape[1]}x{image.shape[0]} but the fit "
                           f"was made on {hw[1]}x{hw[0]} (image_size in result.json)")
    if model.n_identity != len(fit.identity):
        raise JaxfaceError(f"result has {len(fit.identity)} identity coefficients but model "
                           f"{model.name!r} has {model.n_identity}; pass the fitted --model")
    if model.n_expression and model.n_expression != len(fit.expression):
        raise JaxfaceError(f"result has {len(fit.expression)} expression coefficients but "
                           f"model {model.name!r} has {model.n_expression}")
    return fit, image


def _light(args: argparse.Namespace) -> np.ndarray:
    from jaxface.edit import side_light
    from jaxface.render.shading import sh_ambient, sh_directional

    if args.sh is not None:
        try:
            sh = np.asarray(json.loads(Path(args.sh).read_text()), np.float32)
        except (OSError, ValueError) as e:
            raise JaxfaceError(f"--sh {args.sh}: cannot read JSON ({e})") from None
        if sh.shape != (9, 3):
            raise JaxfaceError(f"--sh {args.sh}: expected 9x3 coefficients, got {sh.shape}")
        return sh
    if args.light in ("right", "left"):
        return side_light(1.0 if args.light == "right" else -1.0)
    d = np.array([0.0, -0.8, -0.6]) if args.light == "top" else np.array([0.0, 0.0, -1.0])
    return np.asarray(sh_ambient(0.6) + sh_directional(d, 0.5))


def _expression(args: argparse.Namespace, model, fit) -> np.ndarray:
    from jaxface.edit import expression_from_names, load_fit

    base = np.asarray(fit.expression, np.float32)
    if args.from_result is not None:
        other, _ = load_fit(args.from_result)
        base = np.asarray(other.expression, np.float32)
        if base.shape != (model.n_expression,):
            raise JaxfaceError(f"--from {args.from_result}: {base.shape[0]} expression "
                               f"coefficients, model has {model.n_expression}")
    weights = {}
    for item in args.set:
        name, sep, val = item.partition("=")
        try:
            weights[name.strip()] = float(val)
        except ValueError:
            sep = ""
        if not sep:
            raise JaxfaceError(f"--set {item!r}: expected NAME=WEIGHT, e.g. jawOpen=0.6")
    if not weights and args.from_result is None:
        raise JaxfaceError("expression: give --set NAME=WEIGHT and/or --from RESULT")
    try:
        return expression_from_names(model, weights, base)
    except ValueError as e:
        raise JaxfaceError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    from jaxface.edit import (
        extract_texture,
        frontalize,
        relight,
        transfer_expression,
        write_edit_outputs,
        write_png,
    )

    if args.texture_size < 8:
        raise JaxfaceError(f"--texture-size must be >= 8, got {args.texture_size}")
    from jaxface.cli.fit import _load_model

    model = _load_model(args.model)
    if model.uv is None and args.action != "relight":
        raise JaxfaceError(f"model {model.name!r} has no UV coordinates (needed for "
                           f"{args.action})")
    fit, image = _load_source(args, model)
    h, w = image.shape[:2]
    # validate the options before writing anything
    sh_new = _light(args) if args.action == "relight" else None
    target = _expression(args, model, fit) if args.action == "expression" else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.action == "texture":
        files = write_edit_outputs(out, model, image, fit, texture_size=args.texture_size,
                                   what=("texture",))
        written = list(files.values())
    elif args.action == "frontalize":
        tex = extract_texture(model, image, fit, args.texture_size)
        fr = frontalize(model, fit, tex, (h, w), fit_image_size=(h, w), neutral=args.neutral)
        write_png(out / "frontal.png", fr.image)
        written = ["frontal.png"]
    elif args.action == "relight":
        rl = relight(model, fit, image, sh_new, sh_old=getattr(fit, "sh", None),
                     match_brightness=args.sh is None)
        write_png(out / "relit.png", rl.image)
        written = ["relit.png"]
    else:
        tex = extract_texture(model, image, fit, args.texture_size)
        ex = transfer_expression(model, fit, target, image, tex)
        write_png(out / "expression.png", ex.image)
        written = ["expression.png"]
    print(f"jaxface edit {args.action}: wrote {', '.join(written)} to {out.resolve()}",
          file=sys.stderr)
    return 0
