"""FaceWarehouse-style bilinear face models (identity x expression core tensor).

A bilinear model (Vlasic et al.; FaceWarehouse, Cao et al. 2014) writes a face as

    S(w_id, w_exp)[v, c] = sum_{i, e} w_id[i] * w_exp[e] * core[i, e, v, c]

with a core tensor of shape (Kid, Kexp, V, 3). :class:`BilinearModel` holds it as a pytree,
:func:`bilinear_vertices` evaluates it (pure JAX: jit, vmap, grad), and
:func:`bilinear_to_linear` turns it into a linear :class:`MorphableModel` at a fixed identity
(expression blendshapes exact at that identity; identity directions exact at the neutral
expression).

File reading (:func:`load_facewarehouse_core`): FaceWarehouse distributes its core tensor as a
raw little-endian binary file: three int32 dimensions, then float32 data. **Which header entry
is which mode and the data order are not verified here** (no public spec was available while
writing this): the reader takes the mode order of the header as an argument, defaulting to
``("id", "exp", "coord")`` with the data in C order of the header dimensions, and checks that
the sizes match the header exactly. The core has no topology: pass the triangles of a mesh of
the same vertex order (e.g. a FaceWarehouse ``shape_0.obj`` read with
``jaxface.mesh.read_obj``). FaceWarehouse meshes are in their own (unstated) unit; ``scale``
converts to mm.

The per-subject blendshape files ``Tester_<i>/Blendshape/shape.bs`` are read by
:func:`load_facewarehouse_blendshapes`; their layout is the one several public readers use
(int32 nShapes = 46, int32 nVerts = 11510, int32 nFaces = 11540, then (1 + nShapes) x nVerts x 3
float32: the neutral B_0, then B_1..B_46, xyz interleaved per vertex). Stacking the subjects'
blendshapes gives the identity x expression data tensor for
:func:`jaxface.models.build.build_bilinear_model`, which computes the core tensor itself.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxface._pytree import pytree_dataclass, static_field
from jaxface.errors import ModelFormatError
from jaxface.models import _formats as F
from jaxface.models.morphable import MorphableModel, make_model

PathLike = str | os.PathLike
_HIGHEST = jax.lax.Precision.HIGHEST


@pytree_dataclass
class BilinearModel:
    """A bilinear identity x expression face model.

    Attributes:
      core: (Kid, Kexp, V, 3) float32 core tensor, in ``units``.
      triangles: (T, 3) int32, counter-clockwise seen from outside.
      neutral_index: index of the neutral expression along the expression mode (static).
      units: length unit (static).
      name: model name (static).
    """

    core: Any
    triangles: Any
    neutral_index: int = static_field(default=0)
    units: str = static_field(default="mm")
    name: str = static_field(default="bilinear")

    @property
    def n_identity(self) -> int:
        return int(np.shape(self.core)[0])

    @property
    def n_expression(self) -> int:
        return int(np.shape(self.core)[1])

    @property
    def n_vertices(self) -> int:
        return int(np.shape(self.core)[2])


def make_bilinear_model(core: Any, triangles: Any, *, neutral_index: int = 0,
                        units: str = "mm", name: str = "bilinear",
                        source: str | None = None) -> BilinearModel:
    """Validated :class:`BilinearModel` (host side; raises ModelFormatError)."""
    src = source or name
    core = np.asarray(core)
    if core.ndim != 4 or core.shape[3] != 3 or min(core.shape[:3]) < 1:
        raise ModelFormatError(f"core must be (Kid, Kexp, V, 3), found {core.shape}",
                               source=src, field="core")
    F.check_finite(core, src, "core")
    tri = F.as_index(np.asarray(triangles), src, "triangles", one_based=False, n=core.shape[2])
    if tri.ndim != 2 or tri.shape[1] != 3:
        raise ModelFormatError(f"expected (T, 3), found {tri.shape}", source=src,
                               field="triangles")
    if not 0 <= neutral_index < core.shape[1]:
        raise ModelFormatError(f"neutral_index {neutral_index} outside [0, {core.shape[1]})",
                               source=src, field="neutral_index")
    return BilinearModel(core=core.astype(np.float32), triangles=tri.astype(np.int32),
                         neutral_index=int(neutral_index), units=units, name=name)


def bilinear_vertices(model: BilinearModel, w_id: jax.Array, w_exp: jax.Array) -> jax.Array:
    """Vertices (V, 3) = core x_1 w_id x_2 w_exp (pure JAX; batch with ``jax.vmap``).

    Args:
      model: the bilinear model.
      w_id: (Kid,) identity weights.
      w_exp: (Kexp,) expression weights.
    """
    w_id = jnp.asarray(w_id, jnp.float32)
    w_exp = jnp.asarray(w_exp, jnp.float32)
    if w_id.shape != (model.n_identity,) or w_exp.shape != (model.n_expression,):
        raise ValueError(f"expected w_id ({model.n_identity},) and w_exp "
                         f"({model.n_expression},), got {w_id.shape} and {w_exp.shape} "
                         "(use jax.vmap to batch)")
    core = jnp.asarray(model.core, jnp.float32)
    per_exp = jnp.einsum("i,ievc->evc", w_id, core, precision=_HIGHEST)
    return jnp.einsum("e,evc->vc", w_exp, per_exp, precision=_HIGHEST)


def bilinear_to_linear(model: BilinearModel, w_id: Any, *, name: str | None = None
                       ) -> MorphableModel:
    """A linear MorphableModel of ``model`` around identity ``w_id`` (host side).

    * mean = S(w_id, e_neutral);
    * expression: ``"blendshape"`` deltas S(w_id, e_j) - S(w_id, e_neutral) for every
      expression j != neutral (exact at ``w_id`` for weights that sum with the neutral to 1,
      the FaceWarehouse blendshape convention);
    * identity: the directions core[i, neutral] (std 1), so identity offsets ``a`` give
      S(w_id + a, e_neutral) exactly (for expressions, the identity change is first order).
    """
    core = np.asarray(model.core, np.float64)
    w = np.asarray(w_id, np.float64).reshape(-1)
    if w.shape != (model.n_identity,):
        raise ValueError(f"w_id must have shape ({model.n_identity},), found {w.shape}")
    per_exp = np.einsum("i,ievc->evc", w, core)
    n = model.neutral_index
    mean = per_exp[n]
    others = [j for j in range(model.n_expression) if j != n]
    expr = per_exp[others] - mean[None] if others else None
    return make_model(mean=mean, identity_basis=core[:, n], triangles=model.triangles,
                      expression_basis=expr,
                      expression_kind="blendshape",
                      expression_names=None if expr is None else [f"exp{j}" for j in others],
                      units=model.units, name=name or f"{model.name}_linear")


def _read_int32_header(path: PathLike) -> tuple[str, bytes, tuple[int, int, int]]:
    """``(source, file bytes, header)`` of a FaceWarehouse binary: 3 little-endian int32 first."""
    p = F.require_file(path)
    src = str(p)
    raw = p.read_bytes()
    if len(raw) < 12:
        raise ModelFormatError("file too short for the 3 x int32 header", source=src,
                               field="header")
    return src, raw, struct.unpack("<3i", raw[:12])


def _float32_payload(raw: bytes, shape: tuple[int, ...], src: str, header: str,
                     kind: str) -> np.ndarray:
    """The little-endian float32 array of ``shape`` after the 12-byte header; the file must
    hold exactly that many bytes (``header`` and ``kind`` word the error)."""
    n = int(np.prod(shape, dtype=np.int64))
    if len(raw) - 12 != 4 * n:
        raise ModelFormatError(f"{header} needs {4 * n} data bytes, file has {len(raw) - 12}: "
                               f"truncated or not {kind}", source=src, field="data")
    return np.frombuffer(raw, "<f4", count=n, offset=12).reshape(shape)


def load_facewarehouse_core(path: PathLike, triangles: Any, *,
                            header_order: tuple[str, str, str] = ("id", "exp", "coord"),
                            neutral_index: int = 0, scale: float = 1.0) -> BilinearModel:
    """Read a FaceWarehouse-style core tensor file (int32 x 3 header, float32 data).

    Args:
      path: the core tensor file.
      triangles: (T, 3) 0-based triangles of the model's mesh.
      header_order: what each header dimension is, a permutation of ``("id", "exp",
        "coord")``; ``coord`` is 3V (xyz interleaved per vertex). Data is in C order of the
        header dimensions. UNVERIFIED default, see the module docstring.
      neutral_index: the neutral expression.
      scale: multiply lengths by this (file unit -> mm).

    Raises:
      ModelFormatError: header/size mismatch, truncated file, non-finite values.
    """
    if sorted(header_order) != ["coord", "exp", "id"]:
        raise ValueError(f"header_order must be a permutation of ('id', 'exp', 'coord'), "
                         f"got {header_order}")
    src, raw, dims = _read_int32_header(path)
    if min(dims) < 1 or dims[header_order.index("coord")] % 3:
        raise ModelFormatError(f"bad header {dims} for order {header_order} (coord must be "
                               "3V)", source=src, field="header")
    data = _float32_payload(raw, dims, src, f"header {dims}", "a core tensor")
    core = np.transpose(data, [header_order.index(a) for a in ("id", "exp", "coord")])
    kid, kexp, n3 = core.shape
    core = core.reshape(kid, kexp, n3 // 3, 3) * np.float32(scale)
    return make_bilinear_model(core, triangles, neutral_index=neutral_index, source=src,
                               name=os.path.splitext(os.path.basename(src))[0])


def load_facewarehouse_blendshapes(path: PathLike, *, scale: float = 1.0) -> np.ndarray:
    """Read a FaceWarehouse ``shape.bs`` (one subject's neutral face and 46 expressions).

    Layout: int32 nShapes, int32 nVerts, int32 nFaces (little-endian), then
    ``(1 + nShapes) * nVerts * 3`` float32, shape-major (B_0 = neutral first), xyz interleaved.
    The file has no triangles (nFaces only counts them; the topology is that of the subject's
    ``.obj`` meshes).

    Args:
      path: the ``shape.bs`` file.
      scale: multiply lengths by this (file unit -> mm).

    Returns:
      (1 + nShapes, nVerts, 3) float32; row 0 is the neutral expression.

    Raises:
      ModelFormatError: short header, sizes that do not match the header, non-finite values.
    """
    src, raw, (n_shapes, n_verts, n_faces) = _read_int32_header(path)
    if n_shapes < 0 or n_verts < 1 or n_faces < 0:
        raise ModelFormatError(f"bad header (nShapes, nVerts, nFaces) = "
                               f"{(n_shapes, n_verts, n_faces)}", source=src, field="header")
    data = _float32_payload(raw, (1 + n_shapes, n_verts, 3), src,
                            f"header ({n_shapes} shapes, {n_verts} vertices)",
                            "a FaceWarehouse shape.bs")
    F.check_finite(data, src, "data")
    return (data * np.float32(scale)).astype(np.float32)
