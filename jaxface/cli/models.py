"""``jaxface models info FILE``: print a summary of a morphable-model file."""

from __future__ import annotations

import argparse

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="print a summary of a model (jaxface .npz or 'default')")
    info.add_argument("file", help="path to a jaxface model .npz, or 'default'")


def run(args: argparse.Namespace) -> int:
    from jaxface.models import load_npz

    if args.file == "default":
        from jaxface.models import load_default

        model = load_default()
    else:
        model = load_npz(args.file)
    print(describe(model))
    return 0


def describe(model) -> str:
    """A multi-line human summary of ``model``."""
    mean = np.asarray(model.mean)
    ext = mean.max(0) - mean.min(0)
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
        "landmarks:   " + (", ".join(f"{k} ({len(v)})" for k, v in model.landmarks.items())
                           or "none"),
        "contours:    " + (", ".join(model.contours) or "none"),
        "regions:     " + (", ".join(f"{k} ({int(np.sum(v))})" for k, v in model.regions.items())
                           or "none"),
    ]
    return "\n".join(lines)
