"""The Surrey Face Model / eos ``.bin`` models (cereal ``BinaryOutputArchive``).

Byte layout read here (little-endian; what eos writes with ``cereal::BinaryOutputArchive``):

* ``MorphableModel``: ``uint32`` class version, then its members. For version 4 (documented in
  the staged eos README): shape model, colour model, expression model, landmark definitions,
  texture coordinates, texture triangle indices. Older versions have fewer members; because the
  member lists of versions 0-3 are not verified here, the reader tries the plausible layouts for
  the file's version and accepts only one that consumes the file exactly.
* ``PcaModel``: ``mean`` (Eigen VectorXf), ``orthonormal_pca_basis`` (MatrixXf, 3V x K),
  ``eigenvalues`` (VectorXf, the variances), ``triangle_list`` (vector<array<int,3>>).
* Eigen matrix: ``int32 rows``, ``int32 cols``, then ``rows*cols`` float32 in column-major order.
* ``std::vector<T>``: ``uint64`` element count, then the elements (``array<int,3>`` = 3 int32,
  ``array<double,2>`` = 2 float64). ``std::string``: ``uint64`` length + bytes.
* optional: a 1-byte bool (eos's own optional serialisation writes "has value"; cereal's
  ``std::optional`` writes "is empty" -- both are tried), then the value.
* the expression model is a variant: ``int32`` index (0: PcaModel, 1: vector<Blendshape>), then
  the value; a ``Blendshape`` is (string name, VectorXf deformation).
* landmark definitions: optional ``unordered_map<string, int>``: ``uint64`` count, then
  (string, int32) pairs.

Conventions: vertex ids are 0-based; eos texture coordinates have v = 0 at the top (eos writes
``1 - v`` into OBJ files), so ``uv = (u, 1 - v)``; lengths are taken as mm (the SFM's unit is not
stated in eos; unverified); colours above 1.5 are taken as 0..255. ``expression_blendshapes_*.bin``
(a bare ``vector<Blendshape>``) can be added with ``blendshapes=``.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jaxface.errors import ModelFormatError
from jaxface.models import _formats as F
from jaxface.models.morphable import MorphableModel, make_model

PathLike = str | os.PathLike

_MAX_COUNT = 1 << 31


class _Truncated(Exception):
    pass


class _Reader:
    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise _Truncated(f"need {n} bytes at offset {self.pos}, file has {len(self.buf)}")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def i32(self) -> int:
        return struct.unpack("<i", self.take(4))[0]

    def u64(self) -> int:
        n = struct.unpack("<Q", self.take(8))[0]
        if n > _MAX_COUNT:
            raise _Truncated(f"implausible container size {n} at offset {self.pos - 8}")
        return n

    def eigen(self) -> np.ndarray:
        rows, cols = self.i32(), self.i32()
        if rows < 0 or cols < 0 or rows * cols > _MAX_COUNT:
            raise _Truncated(f"implausible Eigen matrix size {rows} x {cols}")
        data = np.frombuffer(self.take(4 * rows * cols), "<f4")
        return data.reshape(cols, rows).T  # column-major

    def tri_list(self) -> np.ndarray:
        n = self.u64()
        return np.frombuffer(self.take(12 * n), "<i4").reshape(n, 3)

    def string(self) -> str:
        return self.take(self.u64()).decode("utf-8", errors="replace")


@dataclass
class _Pca:
    mean: np.ndarray
    basis: np.ndarray
    eigenvalues: np.ndarray
    triangles: np.ndarray

    @property
    def empty(self) -> bool:
        return self.mean.size == 0


@dataclass
class EosModelFile:
    """The parsed members of an eos model file (raw, in file conventions)."""

    version: int
    shape: _Pca
    color: _Pca
    expression: _Pca | list[tuple[str, np.ndarray]] | None = None
    landmark_definitions: dict[str, int] | None = None
    texture_coordinates: np.ndarray | None = None
    texture_triangles: np.ndarray | None = None
    layout: tuple[str, ...] = field(default=())


def _pca(r: _Reader) -> _Pca:
    mean = r.eigen()
    basis = r.eigen()
    ev = r.eigen()
    tri = r.tri_list()
    if mean.shape[1:] != (1,) and mean.size:
        raise _Truncated(f"PCA mean must be a column vector, found {mean.shape}")
    return _Pca(mean.reshape(-1), basis, ev.reshape(-1), tri)


def _blendshapes(r: _Reader) -> list[tuple[str, np.ndarray]]:
    return [(r.string(), r.eigen().reshape(-1)) for _ in range(r.u64())]


def _optional(r: _Reader, has_value_flag: bool) -> bool:
    b = r.u8()
    if b not in (0, 1):
        raise _Truncated(f"bad optional flag byte {b}")
    return bool(b) == has_value_flag


def _parse(buf: bytes, layout: tuple[str, ...], has_value_flag: bool,
           pca_version: bool) -> EosModelFile:
    r = _Reader(buf)
    version = r.u32()
    out: dict[str, Any] = {}
    first_pca = [True]

    def pca():
        if pca_version and first_pca[0]:
            r.u32()
        first_pca[0] = False
        return _pca(r)

    for member in layout:
        if member in ("shape", "color"):
            out[member] = pca()
        elif member == "expression":
            if _optional(r, has_value_flag):
                idx = r.i32()
                if idx == 0:
                    out[member] = pca()
                elif idx == 1:
                    out[member] = _blendshapes(r)
                else:
                    raise _Truncated(f"bad expression variant index {idx}")
        elif member == "landmarks":
            if _optional(r, has_value_flag):
                out[member] = {r.string(): r.i32() for _ in range(r.u64())}
        elif member == "texcoords":
            n = r.u64()
            out[member] = np.frombuffer(r.take(16 * n), "<f8").reshape(n, 2)
        elif member == "texture_triangles":
            out[member] = r.tri_list()
    if r.pos != len(buf):
        raise _Truncated(f"{len(buf) - r.pos} unread bytes at the end")
    return EosModelFile(version=version, shape=out["shape"], color=out["color"],
                        expression=out.get("expression"),
                        landmark_definitions=out.get("landmarks"),
                        texture_coordinates=out.get("texcoords"),
                        texture_triangles=out.get("texture_triangles"), layout=layout)


_LAYOUTS = {
    0: [("shape", "color", "texcoords")],
    1: [("shape", "color", "expression", "texcoords")],
    2: [("shape", "color", "expression", "texcoords", "texture_triangles"),
        ("shape", "color", "expression", "texcoords")],
    3: [("shape", "color", "expression", "landmarks", "texcoords"),
        ("shape", "color", "expression", "landmarks", "texcoords", "texture_triangles"),
        ("shape", "color", "expression", "texcoords", "texture_triangles")],
    4: [("shape", "color", "expression", "landmarks", "texcoords", "texture_triangles")],
}


def read_eos_model_file(path: PathLike) -> EosModelFile:
    """Parse an eos ``.bin`` model file (see the module docstring for the layout)."""
    p = F.require_file(path)
    src = str(p)
    buf = p.read_bytes()
    if len(buf) < 4:
        raise ModelFormatError("file too short for an eos model", source=src)
    version = struct.unpack("<I", buf[:4])[0]
    if version not in _LAYOUTS:
        raise ModelFormatError(f"unknown eos MorphableModel version {version} (expected 0-4): "
                               "not an eos model file", source=src, field="version")
    errors = []
    for layout in _LAYOUTS[version]:
        for has_value_flag in (True, False):
            for pca_version in (False, True):
                try:
                    return _parse(buf, layout, has_value_flag, pca_version)
                except (_Truncated, ValueError) as e:
                    errors.append(str(e))
    raise ModelFormatError(f"truncated or not an eos version-{version} model "
                           f"({errors[0]})", source=src)


def read_eos_blendshapes(path: PathLike) -> list[tuple[str, np.ndarray]]:
    """Parse an eos blendshapes file (``expression_blendshapes_3448.bin``: vector<Blendshape>)."""
    p = F.require_file(path)
    src = str(p)
    r = _Reader(p.read_bytes())
    try:
        out = _blendshapes(r)
    except (_Truncated, ValueError) as e:
        raise ModelFormatError(f"truncated or not an eos blendshape file ({e})",
                               source=src) from e
    if r.pos != len(r.buf):
        raise ModelFormatError(f"{len(r.buf) - r.pos} unread bytes: not an eos blendshape file",
                               source=src)
    return out


def _check_pca(pca: _Pca, n3: int | None, src: str, name: str) -> None:
    if n3 is not None and pca.mean.size != n3:
        raise ModelFormatError(f"mean has length {pca.mean.size}, expected {n3}", source=src,
                               field=f"{name}.mean")
    if pca.mean.size % 3:
        raise ModelFormatError(f"mean length {pca.mean.size} is not 3V", source=src,
                               field=f"{name}.mean")
    k = pca.eigenvalues.size
    if pca.basis.shape != (pca.mean.size, k):
        raise ModelFormatError(f"basis is {pca.basis.shape}, expected ({pca.mean.size}, {k})",
                               source=src, field=f"{name}.orthonormal_pca_basis")
    for a, k_ in ((pca.mean, "mean"), (pca.basis, "orthonormal_pca_basis"),
                  (pca.eigenvalues, "eigenvalues")):
        F.check_finite(a, src, f"{name}.{k_}")
    if np.any(pca.eigenvalues <= 0):
        raise ModelFormatError("eigenvalues (variances) must be positive", source=src,
                               field=f"{name}.eigenvalues")


def load_sfm(path: PathLike, *, landmarks: PathLike | None = None,
             contours: PathLike | None = None, blendshapes: PathLike | None = None
             ) -> MorphableModel:
    """Load an eos model file (the Surrey Face Model ``sfm_shape_3448.bin``, or any model that
    eos wrote, e.g. a converted BFM) as a MorphableModel.

    Shape: mean + orthonormal basis with std = sqrt(eigenvalues). A colour model, if the file
    has a non-empty one, becomes the albedo. An expression PCA in the file becomes a ``"pca"``
    expression; an expression blendshape set in the file, or ``blendshapes=`` (an
    ``expression_blendshapes_*.bin``), a ``"blendshape"`` expression (std 1, names kept).
    Texture coordinates become ``uv`` (v flipped to OBJ convention).

    Args:
      landmarks / contours: eos mapping/contour files (``ibug_to_sfm.txt``,
        ``sfm_model_contours.json``), as in :func:`jaxface.models.bfm.load_bfm2009`; the set is the
        68-row ``"ibug68"`` with unmapped rows ``valid = False``.

    Raises:
      ModelFormatError: not an eos model, truncated, or inconsistent sizes.
    """
    src = F.src_name(path)
    mf = read_eos_model_file(path)
    _check_pca(mf.shape, None, src, "shape_model")
    n3 = mf.shape.mean.size
    v = n3 // 3
    if v < 3:
        raise ModelFormatError("shape model has fewer than 3 vertices", source=src,
                               field="shape_model.mean")
    basis, std, _ = F.orthonormal_basis(mf.shape.basis, np.sqrt(mf.shape.eigenvalues), src,
                                        "shape_model.orthonormal_pca_basis")
    mean = mf.shape.mean.reshape(v, 3).astype(np.float64)
    tri_raw = F.as_index(mf.shape.triangles, src, "shape_model.triangle_list", one_based=False,
                         n=v)
    tri, flipped = F.orient_outward(mean, tri_raw)
    extra: dict[str, Any] = {}
    if not mf.color.empty:
        _check_pca(mf.color, n3, src, "color_model")
        cb, cstd, _ = F.orthonormal_basis(mf.color.basis, np.sqrt(mf.color.eigenvalues), src,
                                          "color_model.orthonormal_pca_basis")
        scale = 255.0 if mf.color.mean.max() > 1.5 else 1.0
        extra.update(albedo_mean=mf.color.mean.reshape(v, 3) / scale,
                     albedo_basis=F.flat_basis_to_kv3(cb, v), albedo_std=cstd / scale)
    shapes = mf.expression
    if blendshapes is not None:
        shapes = read_eos_blendshapes(blendshapes)
    if isinstance(shapes, _Pca):
        _check_pca(shapes, n3, src, "expression_model")
        eb, estd, _ = F.orthonormal_basis(shapes.basis, np.sqrt(shapes.eigenvalues), src,
                                          "expression_model.orthonormal_pca_basis")
        mean = mean + shapes.mean.reshape(v, 3)
        extra.update(expression_basis=F.flat_basis_to_kv3(eb, v), expression_std=estd,
                     expression_kind="pca")
    elif shapes:
        bad = [n for n, d in shapes if d.size != n3]
        if bad:
            raise ModelFormatError(f"blendshape {bad[0]!r} does not have {n3} values",
                                   source=src, field="blendshapes")
        extra.update(expression_basis=np.stack([d.reshape(v, 3) for _, d in shapes]),
                     expression_kind="blendshape",
                     expression_names=[n for n, _ in shapes])
    tc = mf.texture_coordinates
    if tc is not None and tc.shape[0]:
        uv = np.stack([tc[:, 0], 1.0 - tc[:, 1]], -1)
        tt = mf.texture_triangles
        if tt is not None and tt.shape[0]:
            if tt.shape != tri.shape:
                raise ModelFormatError(f"{tt.shape[0]} texture triangles for {tri.shape[0]} "
                                       "triangles", source=src, field="texture_triangle_indices")
            uvt = F.as_index(tt, src, "texture_triangle_indices", one_based=False, n=uv.shape[0])
        elif uv.shape[0] == v:
            uvt = tri_raw
        else:
            raise ModelFormatError(f"{uv.shape[0]} texture coordinates for {v} vertices and no "
                                   "texture triangles", source=src, field="texture_coordinates")
        if flipped:
            uvt = uvt[:, [0, 2, 1]]
        extra.update(uv=uv, uv_triangles=uvt)
    lms: dict = {}
    cts: dict = {}
    if landmarks is not None:
        lset, cset, _ = F.eos_landmarks(v, landmarks, contours)
        lms = {"ibug68": lset}
        cts = {} if cset is None else {"ibug68": cset}
    elif contours is not None:
        raise ModelFormatError("contours need a landmark mapping (landmarks=...)", source=src,
                               field="contours")
    return make_model(mean=mean, identity_basis=F.flat_basis_to_kv3(basis, v), identity_std=std,
                      triangles=tri, landmarks=lms, contours=cts, units="mm",
                      name=os.path.splitext(os.path.basename(src))[0], source=src, **extra)
