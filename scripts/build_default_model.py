#!/usr/bin/env python
"""Build jaxface's embedded default model from the staged ICT-FaceKit light model.

    python scripts/build_default_model.py --data $JAXFACE_DATA \
        --out jaxface/models/assets/default_model.npz

The default model is ICT-FaceKit (MIT licence) restricted to the face, head and neck, mouth
socket, eye sockets and eyeballs (17,202 of 26,719 vertices; no teeth, tongue, lashes or
eye-occlusion shells), with all 100 identity modes and all 53 expression blendshapes, in mm. The
bases are stored as int16 on a uniform grid (``save_npz(..., basis_dtype=np.int16)``), which is
both smaller and more accurate than float16 here. The output is byte-for-byte deterministic:
the zip members get a fixed timestamp and a fixed compression level.

The script prints (and checks) the size and the quantisation error against the float32 source.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from jaxface._pytree import replace
from jaxface.models.ict import NPZ_NAME, load_ict
from jaxface.models.morphable import MorphableModel, load_npz, restrict, save_npz

KEEP_PARTS = ("face", "head_neck", "mouth_socket", "eye_sockets", "eyeballs")
MAX_BYTES = 10 * 1024 * 1024
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def build(full: MorphableModel) -> MorphableModel:
    """The default model (unquantised) from the full ICT model."""
    mask = np.logical_or.reduce([np.asarray(full.regions[p]) for p in KEEP_PARTS])
    sub = restrict(full, mask)
    # Regions that no kept vertex belongs to (teeth, ...) are dropped.
    regions = {k: m for k, m in sub.regions.items() if np.asarray(m).any()}
    # Drop the uv rows no kept triangle uses, and renumber.
    used = np.unique(np.asarray(sub.uv_triangles))
    remap = np.full(np.asarray(sub.uv).shape[0], -1, np.int64)
    remap[used] = np.arange(used.size)
    return replace(sub, regions=regions, uv=np.asarray(sub.uv)[used],
                   uv_triangles=remap[np.asarray(sub.uv_triangles)].astype(np.int32),
                   name="ict-facekit-default")


def write_deterministic_npz(model: MorphableModel, out: Path, step: float) -> None:
    """``save_npz`` with int16 bases, then repack the zip with fixed timestamps and level 9."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.npz"
        save_npz(model, raw, compressed=False, basis_dtype=np.int16, basis_step=step)
        buf = io.BytesIO()
        with zipfile.ZipFile(raw) as src, zipfile.ZipFile(buf, "w") as dst:
            for name in src.namelist():  # save_npz writes members in a fixed order
                info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                info.create_system = 3
                dst.writestr(info, src.read(name), compresslevel=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())


def quantisation_report(source: MorphableModel, stored: MorphableModel, seed: int = 0
                        ) -> dict[str, float]:
    """Max errors (mm) of the stored model against the float32 source."""
    rep = {}
    for f in ("identity_basis", "expression_basis"):
        rep[f"{f}_max_abs_mm"] = float(np.abs(np.asarray(getattr(stored, f), np.float64)
                                              - np.asarray(getattr(source, f), np.float64)).max())
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(20):
        a = rng.standard_normal(source.n_identity)  # identity prior N(0, 1)
        b = rng.uniform(0.0, 1.0, source.n_expression)  # every blendshape active at once
        faces = [np.asarray(m.mean, np.float64)
                 + np.tensordot(a, np.asarray(m.identity_basis, np.float64), 1)
                 + np.tensordot(b, np.asarray(m.expression_basis, np.float64), 1)
                 for m in (stored, source)]
        worst = max(worst, float(np.linalg.norm(faces[0] - faces[1], axis=1).max()))
    rep["random_face_max_vertex_error_mm"] = worst
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("JAXFACE_DATA"),
                    help="data root holding ict-facekit/ (default: $JAXFACE_DATA)")
    ap.add_argument("--out", required=True, type=Path, help="output .npz")
    ap.add_argument("--step", type=float, default=0.002,
                    help="int16 quantisation grid in mm (default 0.002)")
    args = ap.parse_args(argv)
    if not args.data:
        ap.error("--data not given and $JAXFACE_DATA not set")
    full = load_ict(Path(args.data) / "ict-facekit" / NPZ_NAME)
    model = build(full)
    write_deterministic_npz(model, args.out, args.step)
    stored = load_npz(args.out)
    size = args.out.stat().st_size
    print(f"wrote {args.out}: {size:,} bytes; {stored}")
    for k, v in quantisation_report(model, stored).items():
        print(f"  {k}: {v:.3g}")
    if size > MAX_BYTES:
        print(f"error: {size:,} bytes exceeds the {MAX_BYTES:,} byte budget", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
