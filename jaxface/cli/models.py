"""``jaxface models ...``: inspect, convert and cache morphable-model files.

* ``jaxface models info FILE [--format F]``: a summary (FILE may be ``default`` or a cached name);
* ``jaxface models convert INPUT --format F --out model.npz [--landmarks MAP] [--contours JSON]``;
* ``jaxface models add NAME FILE_OR_URL --sha256 HEX [--format F]``: verify, cache, convert;
* ``jaxface models list``: the cached models.
"""

from __future__ import annotations

import argparse

import numpy as np

FORMAT_HELP = ("bfm2009 | bfm2017 | deep3d | flame | gnm | sfm | ict | "
               "mediapipe | npz | auto "
               "(default: auto = guess from the extension/content)")


def _formats() -> list[str]:
    from jaxface.models.registry import FORMATS

    return [*FORMATS, "auto"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    fmts = _formats()
    info = sub.add_parser("info", help="print a summary of a model file, 'default' or a cached "
                                       "model name")
    info.add_argument("file", help="model file, 'default', or a name added with `models add`")
    info.add_argument("--format", default="auto", choices=fmts, help=FORMAT_HELP)
    info.add_argument("--landmarks", help="eos ibug_to_*.txt mapping or FLAME embedding")
    info.add_argument("--contours", help="eos *_model_contours.json, or FLAME's "
                      "flame_dynamic_embedding.npy (flame)")

    conv = sub.add_parser("convert", help="convert a model file to a jaxface .npz")
    conv.add_argument("input", help="the model file (or ICT-FaceKit folder)")
    conv.add_argument("--format", default="auto", choices=fmts, help=FORMAT_HELP)
    conv.add_argument("--out", required=True, help="output .npz")
    conv.add_argument("--landmarks", help="eos ibug_to_*.txt mapping (bfm2009/bfm2017/sfm) or "
                                          "FLAME landmark embedding (flame)")
    conv.add_argument("--contours", help="eos *_model_contours.json (bfm2009/bfm2017/sfm), "
                      "or FLAME's flame_dynamic_embedding.npy (flame)")
    conv.add_argument("--basis-dtype", default="float32", choices=("float32", "float16", "int16"),
                      help="storage of the bases (float16/int16 shrink the file)")

    add = sub.add_parser("add", help="verify (SHA-256), cache and convert a model you are "
                                     "entitled to")
    add.add_argument("name", help="cache name, e.g. bfm2017")
    add.add_argument("source", help="path, file:// or http(s):// URL")
    add.add_argument("--sha256", required=True, help="expected SHA-256 (hex)")
    add.add_argument("--format", default="auto", choices=fmts, help=FORMAT_HELP)
    add.add_argument("--landmarks", help="eos mapping or FLAME embedding to attach")
    add.add_argument("--contours", help="eos contour JSON to attach")
    add.add_argument("--overwrite", action="store_true", help="replace an existing entry")

    sub.add_parser("list", help="list the cached models ($JAXFACE_HOME/models)")


def _load(args: argparse.Namespace):
    from pathlib import Path

    from jaxface.models.registry import load_any, load_model

    if (args.format == "auto" and not args.landmarks and not args.contours
            and not Path(args.file).expanduser().exists()):
        return load_model(args.file)  # 'default' or a cached name
    return load_any(args.file, args.format, landmarks=args.landmarks, contours=args.contours)


def run(args: argparse.Namespace) -> int:
    import sys

    from jaxface.errors import JaxfaceError

    try:
        return _run(args)
    except (JaxfaceError, ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"jaxface models {args.models_command}: error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from jaxface.models import registry

    cmd = args.models_command
    if cmd == "info":
        print(describe(_load(args)))
    elif cmd == "convert":
        from jaxface.models.morphable import save_npz

        model = registry.load_any(args.input, args.format, landmarks=args.landmarks,
                                  contours=args.contours)
        save_npz(model, args.out, basis_dtype=np.dtype(args.basis_dtype))
        print(f"wrote {args.out}")
        print(describe(model))
    elif cmd == "add":
        out = registry.add_model(args.name, args.source, args.sha256, format=args.format,
                                 landmarks=args.landmarks, contours=args.contours,
                                 overwrite=args.overwrite)
        print(f"verified and stored {args.name!r} -> {out}")
    elif cmd == "list":
        models = registry.list_models()
        if not models:
            print(f"no cached models in {registry.jaxface_home() / 'models'}")
        for name, man in models.items():
            print(f"{name:20s} {man.get('format', '?'):10s} {man.get('sha256', '?')[:16]}  "
                  f"{man.get('source', '')}")
    return 0


def describe(model) -> str:
    """A multi-line human summary of ``model``."""
    mean = np.asarray(model.mean)
    ext = mean.max(0) - mean.min(0)

    def lm_text(k, v):
        n_ok = int(np.sum(v.valid_mask()))
        return f"{k} ({len(v)})" if n_ok == len(v) else f"{k} ({n_ok} of {len(v)} defined)"

    art = model.articulation
    lines = [
        f"name:        {model.name}",
        f"units:       {model.units}",
        f"vertices:    {model.n_vertices}",
        f"triangles:   {model.n_triangles}",
        f"extent:      {ext[0]:.1f} x {ext[1]:.1f} x {ext[2]:.1f} {model.units}",
        f"identity:    {model.n_identity} modes",
        f"expression:  {model.n_expression} modes ({model.expression_kind})",
        f"albedo:      {model.n_albedo} modes"
        + (" + mean" if model.albedo_mean is not None else " (none)"),
        f"uv:          {'yes' if model.uv is not None else 'no'}",
        "articulation: " + ("none" if art is None else
                            f"{art.n_joints} joints, parents {list(art.parents)}, "
                            f"{art.n_pose_basis} pose correctives"),
        "landmarks:   " + (", ".join(lm_text(k, v) for k, v in model.landmarks.items())
                           or "none"),
        "contours:    " + (", ".join(model.contours) or "none"),
        "regions:     " + (", ".join(f"{k} ({int(np.sum(v))})" for k, v in model.regions.items())
                           or "none"),
    ]
    return "\n".join(lines)
