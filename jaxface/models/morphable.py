"""The 3D Morphable Model as an immutable pytree, and the pure functions that evaluate it.

A face is (survey eqs 1-3)

    S(alpha, beta) = mean + sum_k alpha_k * identity_basis[k] + sum_j beta_j * expression_basis[j]

in millimetres. Coefficients are *raw*: ``alpha_k`` has the prior ``N(0, identity_std[k]^2)``.
Models whose basis is already scaled by its standard deviation (ICT-FaceKit, the default model)
have ``identity_std == 1``; PCA models with an orthonormal basis (BFM) carry their sigmas.
``standardized(model)`` rescales any model to unit-variance coefficients, which is what the
fitters use internally.

The expression part has one of two semantics (``expression_kind``):

* ``"pca"``: coefficients with a ``N(0, expression_std^2)`` prior;
* ``"blendshape"``: weights in [0, 1] (ARKit-style, ICT-FaceKit), ``expression_std`` is 1.

Landmarks are stored as fixed linear combinations of three vertices (``LandmarkSet``): a vertex-id
landmark is ``(v, v, v)`` with weights ``(1, 0, 0)``, a barycentric landmark on triangle ``t`` is
``triangles[t]`` with its barycentric weights. One code path serves both and survives ``restrict``.

Everything here is host-side NumPy except ``vertices``/``landmarks``/``standardized``, which are
pure JAX (jit, vmap, grad).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxface._pytree import pytree_dataclass, replace, static_field
from jaxface.errors import ModelFormatError
from jaxface.models.articulation import (
    Articulation,
    articulate,
    restrict_articulation,
    validate_articulation,
)

Array = jax.Array
ExpressionKind = Literal["pca", "blendshape"]

FORMAT_VERSION = 1


@pytree_dataclass
class LandmarkSet:
    """L landmarks, each a fixed convex combination of three model vertices.

    A model that lacks some landmarks of a standard scheme (e.g. an eos mapping without the
    inner-mouth points of iBUG-68) keeps the scheme's order and marks the missing rows
    ``valid = False``; their indices/weights are placeholders and fitting ignores them.

    Attributes:
      indices: (L, 3) int32 vertex ids.
      weights: (L, 3) float32 weights summing to 1 per row.
      valid: (L,) bool, or None when every landmark is defined.
    """

    indices: Any
    weights: Any
    valid: Any = None

    @classmethod
    def from_vertex_ids(cls, ids: Any, valid: Any = None) -> LandmarkSet:
        """Landmarks that sit exactly on vertices ``ids`` (L,); ``valid`` (L,) marks defined rows
        (undefined rows may hold any id, e.g. -1, and are stored as vertex 0)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if valid is not None:
            valid = np.asarray(valid, bool).reshape(-1)
            if valid.shape != ids.shape:
                raise ValueError(f"valid has shape {valid.shape}, ids {ids.shape}")
            ids = np.where(valid, ids, 0)
        idx = np.repeat(ids.astype(np.int32)[:, None], 3, axis=1)
        w = np.zeros((ids.shape[0], 3), np.float32)
        w[:, 0] = 1.0
        return cls(indices=idx, weights=w, valid=valid)

    @classmethod
    def from_barycentric(cls, triangles: Any, face_ids: Any, bary: Any) -> LandmarkSet:
        """Landmarks at barycentric points ``bary`` (L, 3) of faces ``face_ids`` (L,)."""
        triangles = np.asarray(triangles, dtype=np.int32)
        face_ids = np.asarray(face_ids, dtype=np.int64).reshape(-1)
        bary = np.asarray(bary, dtype=np.float32).reshape(-1, 3)
        if face_ids.shape[0] != bary.shape[0]:
            raise ValueError(f"{face_ids.shape[0]} face ids but {bary.shape[0]} barycentric rows")
        if face_ids.size and (face_ids.min() < 0 or face_ids.max() >= triangles.shape[0]):
            raise ValueError("landmark face id out of range of the triangles")
        return cls(indices=triangles[face_ids], weights=bary)

    def __len__(self) -> int:
        return int(np.shape(self.indices)[0])

    def valid_mask(self) -> Any:
        """(L,) bool: which landmarks are defined (all True when ``valid`` is None)."""
        if self.valid is None:
            return np.ones((len(self),), bool)
        return self.valid


@pytree_dataclass
class ContourSet:
    """Per-landmark candidate vertices for landmarks on the occluding contour (the jawline).

    During fitting, landmark ``landmark_index[i]`` is matched to whichever of its candidate
    vertices lies on the current silhouette nearest to the detected image point.

    Attributes:
      landmark_index: (n,) int32 indices into the landmark set this contour belongs to.
      candidates: (n, C) int32 vertex ids, padded with -1.
    """

    landmark_index: Any
    candidates: Any


@pytree_dataclass
class MorphableModel:
    """A linear 3D Morphable Model (shape, expression, optional albedo) with its topology.

    Shapes: V vertices, T triangles, Ks identity modes, Ke expression modes, Ka albedo modes.

    Attributes:
      mean: (V, 3) float32 mean shape, in ``units``.
      identity_basis: (Ks, V, 3) float32.
      identity_std: (Ks,) float32 prior standard deviation of each identity coefficient.
      expression_basis: (Ke, V, 3) float32 or None.
      expression_std: (Ke,) float32 or None.
      albedo_mean: (V, 3) float32 linear RGB in [0, 1], or None.
      albedo_basis: (Ka, V, 3) float32 or None.
      albedo_std: (Ka,) float32 or None.
      triangles: (T, 3) int32, counter-clockwise seen from outside.
      uv: (Vt, 2) float32 texture coordinates in [0, 1] (origin bottom-left, OBJ style), or None.
      uv_triangles: (T, 3) int32 rows into ``uv``, or None.
      landmarks: name -> LandmarkSet (``"ibug68"`` in iBUG order where the model has it).
      contours: landmark-set name -> ContourSet.
      regions: name -> (V,) bool vertex mask (``"face"``, ``"eyes"``, ``"mouth"``, ...).
      articulation: an :class:`~jaxface.models.articulation.Articulation` (joints, skinning,
        pose correctives; FLAME-type models), or None for a purely linear model.
      expression_kind: ``"pca"`` or ``"blendshape"`` (static).
      expression_names: names of the expression modes, or None (static).
      units: length unit of ``mean`` and the bases (static; "mm" for everything jaxface ships).
      name: a short model name (static).
    """

    mean: Any
    identity_basis: Any
    identity_std: Any
    triangles: Any
    expression_basis: Any = None
    expression_std: Any = None
    albedo_mean: Any = None
    albedo_basis: Any = None
    albedo_std: Any = None
    uv: Any = None
    uv_triangles: Any = None
    landmarks: Mapping[str, LandmarkSet] = dataclasses.field(default_factory=dict)
    contours: Mapping[str, ContourSet] = dataclasses.field(default_factory=dict)
    regions: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    articulation: Articulation | None = None
    expression_kind: str = static_field(default="pca")
    expression_names: tuple[str, ...] | None = static_field(default=None)
    units: str = static_field(default="mm")
    name: str = static_field(default="model")

    # -- sizes -------------------------------------------------------------------------------
    @property
    def n_vertices(self) -> int:
        return int(np.shape(self.mean)[0])

    @property
    def n_triangles(self) -> int:
        return int(np.shape(self.triangles)[0])

    @property
    def n_identity(self) -> int:
        return int(np.shape(self.identity_basis)[0])

    @property
    def n_expression(self) -> int:
        return 0 if self.expression_basis is None else int(np.shape(self.expression_basis)[0])

    @property
    def n_albedo(self) -> int:
        return 0 if self.albedo_basis is None else int(np.shape(self.albedo_basis)[0])

    # -- host-side transformations ------------------------------------------------------------
    def restrict(self, vertex_mask: Any) -> MorphableModel:
        """See :func:`restrict`."""
        return restrict(self, vertex_mask)

    def truncate(self, n_identity: int | None = None, n_expression: int | None = None,
                 n_albedo: int | None = None) -> MorphableModel:
        """See :func:`truncate`."""
        return truncate(self, n_identity, n_expression, n_albedo)

    def __repr__(self) -> str:
        return (f"MorphableModel(name={self.name!r}, V={self.n_vertices}, T={self.n_triangles}, "
                f"identity={self.n_identity}, expression={self.n_expression} "
                f"({self.expression_kind}), albedo={self.n_albedo}, "
                f"landmarks={sorted(self.landmarks)}, regions={sorted(self.regions)}, "
                f"joints={0 if self.articulation is None else self.articulation.n_joints}, "
                f"units={self.units!r})")



# ------------------------------------------------------------------------------------------------
# Pure JAX evaluation
# ------------------------------------------------------------------------------------------------

_HIGHEST = jax.lax.Precision.HIGHEST


def vertices(model: MorphableModel, identity: Array | None = None,
             expression: Array | None = None, pose: Array | None = None) -> Array:
    """Vertex positions of the face with the given coefficients.

    ``vertices = mean + identity @ identity_basis + expression @ expression_basis`` (flattened
    bases, one contraction each, float32 at full precision on every backend). Batch with
    ``jax.vmap`` over the coefficients. With ``pose``, the articulated model poses that shape
    by linear blend skinning with pose correctives
    (:func:`jaxface.models.articulation.articulate`).

    Args:
      model: the morphable model.
      identity: (Ks,) identity coefficients (raw, prior N(0, identity_std^2)); None means zeros.
        Fewer than Ks coefficients use the leading modes.
      expression: (Ke,) expression coefficients; None means zeros (neutral).
      pose: (J, 3) axis-angle rotation per joint of ``model.articulation`` (FLAME: global,
        neck, jaw, left eye, right eye); None skips articulation (the rest pose, fast path).

    Returns:
      (V, 3) float32 vertex positions in ``model.units``.
    """
    v = jnp.asarray(model.mean, jnp.float32)
    if identity is not None:
        v = v + _combine(identity, model.identity_basis, "identity")
    if expression is not None:
        if model.expression_basis is None:
            raise ValueError(f"model {model.name!r} has no expression basis")
        v = v + _combine(expression, model.expression_basis, "expression")
    if pose is not None:
        if model.articulation is None:
            raise ValueError(f"model {model.name!r} has no articulation: it cannot take a pose")
        v = articulate(model.articulation, v, jnp.asarray(pose, jnp.float32))
    return v


def _combine(coeffs: Array, basis: Array, what: str) -> Array:
    coeffs = jnp.asarray(coeffs, jnp.float32)
    if coeffs.ndim != 1:
        raise ValueError(f"{what} coefficients must be 1-D (use jax.vmap to batch), "
                         f"got shape {coeffs.shape}")
    k = coeffs.shape[0]
    if k > basis.shape[0]:
        raise ValueError(f"{k} {what} coefficients for a basis of {basis.shape[0]} modes")
    basis = jnp.asarray(basis[:k], jnp.float32)
    flat = basis.reshape(k, basis.shape[1] * basis.shape[2])
    return jnp.dot(coeffs, flat, precision=_HIGHEST).reshape(basis.shape[1:])


def landmarks(model: MorphableModel, verts: Array, name: str = "ibug68") -> Array:
    """Model landmarks on a mesh of this model's topology.

    Args:
      model: the model that defines landmark set ``name``.
      verts: (..., V, 3) vertex positions (any leading batch dimensions).
      name: landmark set name.

    Returns:
      (..., L, 3) landmark positions.
    """
    if name not in model.landmarks:
        raise KeyError(f"model {model.name!r} has no landmark set {name!r}; "
                       f"it has {sorted(model.landmarks)}")
    lm = model.landmarks[name]
    picked = jnp.take(verts, jnp.asarray(lm.indices), axis=-2)  # (..., L, 3, 3)
    return jnp.einsum("lk,...lkc->...lc", jnp.asarray(lm.weights, verts.dtype), picked,
                      precision=_HIGHEST)


def standardized(model: MorphableModel) -> MorphableModel:
    """The same model with every basis scaled by its standard deviation (unit-variance priors).

    ``vertices(standardized(m), a) == vertices(m, a * m.identity_std)``. Blendshape
    expressions are left as they are.
    """
    def scale(basis, std):
        if basis is None:
            return None, None
        b = jnp.asarray(basis) * jnp.asarray(std)[:, None, None]
        return b, jnp.ones_like(jnp.asarray(std))

    ib, istd = scale(model.identity_basis, model.identity_std)
    changes = dict(identity_basis=ib, identity_std=istd)
    if model.expression_kind == "pca" and model.expression_basis is not None:
        eb, estd = scale(model.expression_basis, model.expression_std)
        changes.update(expression_basis=eb, expression_std=estd)
    if model.albedo_basis is not None:
        ab, astd = scale(model.albedo_basis, model.albedo_std)
        changes.update(albedo_basis=ab, albedo_std=astd)
    return replace(model, **changes)


def random_coefficients(model: MorphableModel, key: Array, scale: float = 1.0
                        ) -> tuple[Array, Array | None]:
    """Draw (identity, expression) coefficients from the model's prior.

    Identity ~ N(0, (scale * identity_std)^2). PCA expressions likewise; blendshape weights are
    drawn sparse: each weight is U(0, 1) * scale with probability 0.15, else 0, clipped to [0, 1].
    """
    k_id, k_ex, k_on = jax.random.split(key, 3)
    ident = scale * jnp.asarray(model.identity_std) * jax.random.normal(
        k_id, (model.n_identity,))
    if model.expression_basis is None:
        return ident, None
    ke = model.n_expression
    if model.expression_kind == "blendshape":
        on = jax.random.bernoulli(k_on, 0.15, (ke,))
        expr = jnp.clip(on * scale * jax.random.uniform(k_ex, (ke,)), 0.0, 1.0)
    else:
        expr = scale * jnp.asarray(model.expression_std) * jax.random.normal(k_ex, (ke,))
    return ident, expr


# ------------------------------------------------------------------------------------------------
# Construction and validation (host side)
# ------------------------------------------------------------------------------------------------

def make_model(*, mean: Any, identity_basis: Any, triangles: Any, identity_std: Any = None,
               expression_basis: Any = None, expression_std: Any = None,
               expression_kind: ExpressionKind = "pca", expression_names: Any = None,
               albedo_mean: Any = None, albedo_basis: Any = None, albedo_std: Any = None,
               uv: Any = None, uv_triangles: Any = None,
               landmarks: Mapping[str, LandmarkSet] | None = None,
               contours: Mapping[str, ContourSet] | None = None,
               regions: Mapping[str, Any] | None = None,
               articulation: Articulation | None = None,
               units: str = "mm", name: str = "model", source: str | None = None
               ) -> MorphableModel:
    """Build a validated ``MorphableModel`` from array-likes (NumPy on the host).

    Missing standard deviations default to 1. Raises ``ModelFormatError`` naming ``source`` and
    the offending field on any shape, dtype, range or finiteness problem.
    """
    src = source or name
    f32 = _as_f32
    mean = f32(mean, "mean", src)
    identity_basis = f32(identity_basis, "identity_basis", src)
    if identity_basis.ndim == 2:  # (Ks, 3V) flattened
        identity_basis = _unflatten_basis(identity_basis, mean.shape[0], "identity_basis", src)
    ks = identity_basis.shape[0] if identity_basis.ndim >= 1 else 0
    identity_std = (np.ones((ks,), np.float32) if identity_std is None
                    else f32(identity_std, "identity_std", src))
    if expression_basis is not None:
        expression_basis = f32(expression_basis, "expression_basis", src)
        if expression_basis.ndim == 2:
            expression_basis = _unflatten_basis(expression_basis, mean.shape[0],
                                                "expression_basis", src)
        ke = expression_basis.shape[0]
        expression_std = (np.ones((ke,), np.float32) if expression_std is None
                          else f32(expression_std, "expression_std", src))
    elif expression_std is not None:
        raise ModelFormatError("expression_std given without expression_basis", source=src,
                               field="expression_std")
    if albedo_mean is not None:
        albedo_mean = f32(albedo_mean, "albedo_mean", src)
    if albedo_basis is not None:
        albedo_basis = f32(albedo_basis, "albedo_basis", src)
        if albedo_basis.ndim == 2:
            albedo_basis = _unflatten_basis(albedo_basis, mean.shape[0], "albedo_basis", src)
        albedo_std = (np.ones((albedo_basis.shape[0],), np.float32) if albedo_std is None
                      else f32(albedo_std, "albedo_std", src))
    model = MorphableModel(
        mean=mean, identity_basis=identity_basis, identity_std=identity_std,
        triangles=_as_i32(triangles, "triangles", src),
        expression_basis=expression_basis, expression_std=expression_std,
        albedo_mean=albedo_mean, albedo_basis=albedo_basis, albedo_std=albedo_std,
        uv=None if uv is None else f32(uv, "uv", src),
        uv_triangles=None if uv_triangles is None else _as_i32(uv_triangles, "uv_triangles", src),
        landmarks={k: LandmarkSet(_as_i32(v.indices, f"landmarks/{k}/indices", src),
                                  f32(v.weights, f"landmarks/{k}/weights", src),
                                  None if v.valid is None
                                  else _as_mask(v.valid, f"landmarks/{k}/valid", src))
                   for k, v in (landmarks or {}).items()},
        contours={k: ContourSet(_as_i32(v.landmark_index, f"contours/{k}/landmark_index", src),
                                _as_i32(v.candidates, f"contours/{k}/candidates", src))
                  for k, v in (contours or {}).items()},
        regions={k: _as_mask(v, f"regions/{k}", src) for k, v in (regions or {}).items()},
        articulation=None if articulation is None else _as_articulation(articulation, src),
        expression_kind=str(expression_kind),
        expression_names=None if expression_names is None else tuple(str(n) for n in
                                                                      expression_names),
        units=str(units), name=str(name),
    )
    validate(model, source=src)
    return model


def _as_articulation(art: Any, src: str) -> Articulation:
    if not isinstance(art, Articulation):
        raise ModelFormatError(f"expected an Articulation, found {type(art).__name__}",
                               source=src, field="articulation")
    f = "articulation/"
    return Articulation(
        joint_regressor=_as_f32(art.joint_regressor, f + "joint_regressor", src),
        skinning_weights=_as_f32(art.skinning_weights, f + "skinning_weights", src),
        pose_basis=None if art.pose_basis is None
        else _as_f32(art.pose_basis, f + "pose_basis", src),
        joints_template=None if art.joints_template is None
        else _as_f32(art.joints_template, f + "joints_template", src),
        parents=tuple(int(p) for p in art.parents))


def _as_f32(x: Any, field: str, src: str) -> np.ndarray:
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise ModelFormatError(f"cannot be read as an array ({e})", source=src, field=field) from e
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ModelFormatError(f"expected a numeric array, found dtype {a.dtype}", source=src,
                               field=field)
    return a.astype(np.float32)


def _as_i32(x: Any, field: str, src: str) -> np.ndarray:
    try:
        a = np.asarray(x)
    except Exception as e:
        raise ModelFormatError(f"cannot be read as an array ({e})", source=src, field=field) from e
    if not np.issubdtype(a.dtype, np.integer):
        if (np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a))
                and np.all(a == np.round(a))):
            pass
        else:
            raise ModelFormatError(f"expected integer indices, found dtype {a.dtype}", source=src,
                                   field=field)
    if a.size and (a.max() > np.iinfo(np.int32).max or a.min() < np.iinfo(np.int32).min):
        raise ModelFormatError("index does not fit in int32", source=src, field=field)
    return a.astype(np.int32)


def _as_mask(x: Any, field: str, src: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != np.bool_:
        if not np.issubdtype(a.dtype, np.integer) or not np.isin(a, (0, 1)).all():
            raise ModelFormatError(f"expected a boolean vertex mask, found dtype {a.dtype}",
                                   source=src, field=field)
        a = a.astype(bool)
    return a


def _unflatten_basis(b: np.ndarray, n_vertices: int, field: str, src: str) -> np.ndarray:
    if b.shape[1] != 3 * n_vertices:
        raise ModelFormatError(f"flattened basis has {b.shape[1]} columns, expected 3V = "
                               f"{3 * n_vertices}", source=src, field=field)
    return b.reshape(b.shape[0], n_vertices, 3)


def validate(model: MorphableModel, source: str | None = None) -> MorphableModel:
    """Check every field of ``model`` (host side); return it unchanged or raise ModelFormatError."""
    src = source or model.name

    def arr(name):
        return np.asarray(getattr(model, name))

    def fail(field, msg):
        raise ModelFormatError(msg, source=src, field=field)

    def finite(field, a):
        if not np.all(np.isfinite(a)):
            bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
            fail(field, f"{bad} non-finite value(s) (NaN or inf)")

    mean = arr("mean")
    if mean.ndim != 2 or mean.shape[1] != 3 or mean.shape[0] < 3:
        fail("mean", f"expected shape (V, 3) with V >= 3, found {mean.shape}")
    v = mean.shape[0]
    finite("mean", mean)
    for basis_name, std_name in (("identity_basis", "identity_std"),
                                 ("expression_basis", "expression_std"),
                                 ("albedo_basis", "albedo_std")):
        if getattr(model, basis_name) is None:
            continue
        b = arr(basis_name)
        if b.ndim != 3 or b.shape[2] != 3:
            fail(basis_name, f"expected shape (K, V, 3), found {b.shape}")
        if b.shape[1] != v:
            fail(basis_name, f"basis has {b.shape[1]} vertices but the mean has {v}")
        finite(basis_name, b)
        if getattr(model, std_name) is None:
            fail(std_name, f"missing while {basis_name} is present")
        s = arr(std_name)
        if s.shape != (b.shape[0],):
            fail(std_name, f"expected shape ({b.shape[0]},), found {s.shape}")
        finite(std_name, s)
        if np.any(s <= 0):
            fail(std_name, "standard deviations must be positive")
    if model.albedo_mean is not None:
        a = arr("albedo_mean")
        if a.shape != (v, 3):
            fail("albedo_mean", f"expected shape ({v}, 3), found {a.shape}")
        finite("albedo_mean", a)
    if model.albedo_basis is not None and model.albedo_mean is None:
        fail("albedo_mean", "albedo_basis given without albedo_mean")
    tri = arr("triangles")
    if tri.ndim != 2 or tri.shape[1] != 3:
        fail("triangles", f"expected shape (T, 3), found {tri.shape}")
    if tri.size and (tri.min() < 0 or tri.max() >= v):
        fail("triangles", f"vertex ids must lie in [0, {v}), found [{tri.min()}, {tri.max()}]")
    if model.expression_kind not in ("pca", "blendshape"):
        fail("expression_kind", f"must be 'pca' or 'blendshape', found {model.expression_kind!r}")
    if model.expression_names is not None and len(model.expression_names) != model.n_expression:
        fail("expression_names", f"{len(model.expression_names)} names for "
                                 f"{model.n_expression} expression modes")
    if (model.uv is None) != (model.uv_triangles is None):
        fail("uv_triangles", "uv and uv_triangles must be given together")
    if model.uv is not None:
        uv, uvt = arr("uv"), arr("uv_triangles")
        if uv.ndim != 2 or uv.shape[1] != 2:
            fail("uv", f"expected shape (Vt, 2), found {uv.shape}")
        finite("uv", uv)
        if uvt.shape != tri.shape:
            fail("uv_triangles", f"expected shape {tri.shape} (one row per triangle), "
                                 f"found {uvt.shape}")
        if uvt.size and (uvt.min() < 0 or uvt.max() >= uv.shape[0]):
            fail("uv_triangles", f"uv ids must lie in [0, {uv.shape[0]})")
    for k, lm in model.landmarks.items():
        idx, w = np.asarray(lm.indices), np.asarray(lm.weights)
        if idx.ndim != 2 or idx.shape[1] != 3 or w.shape != idx.shape:
            fail(f"landmarks/{k}", f"indices and weights must both be (L, 3), found "
                                   f"{idx.shape} and {w.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= v):
            fail(f"landmarks/{k}", f"vertex ids must lie in [0, {v})")
        finite(f"landmarks/{k}/weights", w)
        if lm.valid is not None and np.shape(lm.valid) != (idx.shape[0],):
            fail(f"landmarks/{k}/valid", f"expected shape ({idx.shape[0]},), found "
                                         f"{np.shape(lm.valid)}")
        ok = np.asarray(lm.valid_mask(), bool)
        if idx.size and not np.allclose(w[ok].sum(axis=1), 1.0, atol=1e-4):
            fail(f"landmarks/{k}", "weights must sum to 1 per landmark")
    for k, c in model.contours.items():
        li, cand = np.asarray(c.landmark_index), np.asarray(c.candidates)
        if k not in model.landmarks:
            fail(f"contours/{k}", f"contour for unknown landmark set {k!r}")
        n_l = len(model.landmarks[k])
        if li.ndim != 1 or cand.ndim != 2 or cand.shape[0] != li.shape[0]:
            fail(f"contours/{k}", f"expected landmark_index (n,) and candidates (n, C), found "
                                  f"{li.shape} and {cand.shape}")
        if li.size and (li.min() < 0 or li.max() >= n_l):
            fail(f"contours/{k}/landmark_index", f"must lie in [0, {n_l})")
        if cand.size and (cand.min() < -1 or cand.max() >= v):
            fail(f"contours/{k}/candidates", f"vertex ids must lie in [0, {v}) or be -1 padding")
    for k, m in model.regions.items():
        m = np.asarray(m)
        if m.shape != (v,) or m.dtype != np.bool_:
            fail(f"regions/{k}", f"expected a ({v},) bool mask, found {m.shape} {m.dtype}")
    if model.articulation is not None:
        if not isinstance(model.articulation, Articulation):
            fail("articulation", f"expected an Articulation, found "
                                 f"{type(model.articulation).__name__}")
        problem = validate_articulation(model.articulation, v)
        if problem is not None:
            fail("articulation", problem)
    return model


# ------------------------------------------------------------------------------------------------
# Restriction and truncation (host side)
# ------------------------------------------------------------------------------------------------

def restrict(model: MorphableModel, vertex_mask: Any) -> MorphableModel:
    """The sub-model on the vertices where ``vertex_mask`` (V,) is True (or an index list).

    Triangles are reindexed and those touching a dropped vertex are removed (so no orphan
    triangle survives); UV triangles follow their triangles. Regions are restricted. A landmark
    set keeps only if all its (non-zero-weight) vertices survive, otherwise it is dropped with a
    warning; contour candidates that are dropped become -1 padding. An articulation keeps its
    skinning weights and pose correctives on the kept vertices; if its joint regressor uses
    dropped vertices it is refitted on the kept ones so that the joints stay exact on the
    model's whole shape space (ValueError if that is impossible).
    """
    v = model.n_vertices
    mask = np.asarray(vertex_mask)
    if mask.dtype != np.bool_:
        ids = mask.astype(np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= v):
            raise IndexError(f"vertex ids must lie in [0, {v})")
        mask = np.zeros(v, bool)
        mask[ids] = True
    if mask.shape != (v,):
        raise ValueError(f"vertex mask must have shape ({v},), found {mask.shape}")
    if not mask.any():
        raise ValueError("vertex mask selects no vertex")
    new_id = np.full(v, -1, np.int64)
    new_id[mask] = np.arange(int(mask.sum()))

    tri = np.asarray(model.triangles)
    keep_tri = mask[tri].all(axis=1)
    triangles = new_id[tri[keep_tri]].astype(np.int32)

    def sub(a):
        return None if a is None else np.asarray(a)[..., mask, :]

    lms = {}
    for k, lm in model.landmarks.items():
        idx, w = np.asarray(lm.indices), np.asarray(lm.weights)
        ok = np.asarray(lm.valid_mask(), bool)
        needed = (w != 0) & ok[:, None]
        if not mask[idx[needed]].all():
            warnings.warn(f"restrict: landmark set {k!r} loses vertices and is dropped",
                          stacklevel=2)
            continue
        # zero-weight slots and undefined rows may point at dropped vertices: re-point them.
        fallback = np.where(mask[idx[:, :1]], idx[:, :1], int(np.argmax(mask)))
        idx = np.where(needed | mask[idx], idx, fallback)
        lms[k] = LandmarkSet(new_id[idx].astype(np.int32), w.astype(np.float32), lm.valid)
    contours = {}
    for k, c in model.contours.items():
        if k not in lms:
            continue
        cand = np.asarray(c.candidates)
        valid = cand >= 0
        valid[valid] = mask[cand[valid]]
        mapped = np.where(valid, new_id[np.where(cand >= 0, cand, 0)], -1)
        contours[k] = ContourSet(np.asarray(c.landmark_index, np.int32),
                                 _compact_rows(mapped).astype(np.int32))
    art = model.articulation
    if art is not None:
        parts = [np.asarray(model.mean)[None], np.asarray(model.identity_basis)]
        if model.expression_basis is not None:
            parts.append(np.asarray(model.expression_basis))
        span = np.transpose(np.concatenate(parts, 0), (1, 2, 0))  # (V, 3, M)
        art, err = restrict_articulation(art, mask, span)
        if err > 1e-4:
            raise ValueError(
                f"restrict: the joint regressor of {model.name!r} uses dropped vertices and "
                f"cannot be re-expressed on the {int(mask.sum())} kept ones (relative joint "
                f"error {err:.2g}); keep the joint-regressor vertices or drop the articulation "
                "(dataclasses.replace(model, articulation=None))")
    return replace(
        model, mean=np.asarray(model.mean)[mask], identity_basis=sub(model.identity_basis),
        expression_basis=sub(model.expression_basis), albedo_basis=sub(model.albedo_basis),
        albedo_mean=None if model.albedo_mean is None else np.asarray(model.albedo_mean)[mask],
        triangles=triangles,
        uv_triangles=None if model.uv_triangles is None
        else np.asarray(model.uv_triangles)[keep_tri],
        landmarks=lms, contours=contours,
        regions={k: np.asarray(m)[mask] for k, m in model.regions.items()},
        articulation=art,
    )


def _compact_rows(a: np.ndarray) -> np.ndarray:
    """Move -1 padding to the end of each row and drop all-padding columns (keep >= 1)."""
    order = np.argsort(a < 0, axis=1, kind="stable")
    a = np.take_along_axis(a, order, axis=1)
    width = max(1, int((a >= 0).sum(axis=1).max(initial=0)))
    return a[:, :width]


def truncate(model: MorphableModel, n_identity: int | None = None,
             n_expression: int | None = None, n_albedo: int | None = None) -> MorphableModel:
    """Keep the leading ``n_*`` modes of each basis (None keeps all)."""
    def cut(n, have, what):
        if n is None:
            return have
        if not 0 <= n <= have:
            raise ValueError(f"cannot keep {n} {what} modes of {have}")
        return n

    ni = cut(n_identity, model.n_identity, "identity")
    ne = cut(n_expression, model.n_expression, "expression")
    na = cut(n_albedo, model.n_albedo, "albedo")
    changes: dict[str, Any] = dict(identity_basis=model.identity_basis[:ni],
                                   identity_std=model.identity_std[:ni])
    if model.expression_basis is not None:
        changes.update(expression_basis=model.expression_basis[:ne],
                       expression_std=model.expression_std[:ne],
                       expression_names=None if model.expression_names is None
                       else model.expression_names[:ne])
    if model.albedo_basis is not None:
        changes.update(albedo_basis=model.albedo_basis[:na], albedo_std=model.albedo_std[:na])
    return replace(model, **changes)


# ------------------------------------------------------------------------------------------------
# Serialisation: our own .npz (no pickles)
# ------------------------------------------------------------------------------------------------

_ARTICULATION_KEYS = ("joint_regressor", "skinning_weights", "pose_basis", "joints_template",
                      "parents")

_ARRAY_FIELDS = ("mean", "identity_basis", "identity_std", "triangles", "expression_basis",
                 "expression_std", "albedo_mean", "albedo_basis", "albedo_std", "uv",
                 "uv_triangles")


def save_npz(model: MorphableModel, path: str | os.PathLike, *, compressed: bool = True,
             basis_dtype: Any = np.float32, basis_step: float = 1e-3) -> None:
    """Write ``model`` to ``path`` as a jaxface model npz (loadable with ``allow_pickle=False``).

    ``basis_dtype=np.float16`` halves the size of the bases (error ~1e-3 relative, i.e. well
    under 0.05 mm for faces); they are read back as float32.

    ``basis_dtype=np.int16`` quantises each basis on a uniform grid: it stores
    ``round(basis / step)`` with ``step = max(basis_step, max|basis| / 32767)`` (in model units)
    under the key ``quantization/<field>``. The absolute error is at most ``step / 2`` per
    coordinate and unit coefficient, and small high-order modes compress much better than in
    float16. The bases are read back as float32.
    """
    kind = np.dtype(basis_dtype)
    if kind not in (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int16)):
        raise ValueError(f"basis_dtype must be float32, float16 or int16, got {kind}")
    if not (np.isfinite(basis_step) and basis_step > 0):
        raise ValueError(f"basis_step must be positive, got {basis_step}")
    out: dict[str, np.ndarray] = {}
    for f in _ARRAY_FIELDS:
        a = getattr(model, f)
        if a is None:
            continue
        a = np.asarray(a)
        if f.endswith("_basis"):
            if kind == np.int16:
                peak = float(np.abs(a).max(initial=0.0))
                step = np.float32(max(basis_step, peak / 32767.0))
                q = np.round(a.astype(np.float64) / np.float64(step))
                a = np.clip(q, -32767, 32767).astype(np.int16)
                out[f"quantization/{f}"] = np.asarray(step, np.float32)
            else:
                a = a.astype(kind)
        out[f] = a
    for k, lm in model.landmarks.items():
        out[f"landmarks/{k}/indices"] = np.asarray(lm.indices, np.int32)
        out[f"landmarks/{k}/weights"] = np.asarray(lm.weights, np.float32)
        if lm.valid is not None:
            out[f"landmarks/{k}/valid"] = np.asarray(lm.valid, bool)
    for k, c in model.contours.items():
        out[f"contours/{k}/landmark_index"] = np.asarray(c.landmark_index, np.int32)
        out[f"contours/{k}/candidates"] = np.asarray(c.candidates, np.int32)
    for k, m in model.regions.items():
        out[f"regions/{k}"] = np.asarray(m, bool)
    art = model.articulation
    if art is not None:
        out["articulation/joint_regressor"] = np.asarray(art.joint_regressor, np.float32)
        out["articulation/skinning_weights"] = np.asarray(art.skinning_weights, np.float32)
        out["articulation/parents"] = np.asarray(art.parents, np.int32)
        if art.pose_basis is not None:
            out["articulation/pose_basis"] = np.asarray(art.pose_basis, np.float32)
        if art.joints_template is not None:
            out["articulation/joints_template"] = np.asarray(art.joints_template, np.float32)
    meta = dict(format="jaxface-morphable-model", version=FORMAT_VERSION,
                expression_kind=model.expression_kind, units=model.units, name=model.name,
                expression_names=None if model.expression_names is None
                else list(model.expression_names))
    out["__meta__"] = np.asarray(json.dumps(meta))
    (np.savez_compressed if compressed else np.savez)(path, **out)


def load_npz(path: str | os.PathLike) -> MorphableModel:
    """Read a model written by :func:`save_npz`; raises ModelFormatError on a bad file."""
    src = os.fspath(path)
    if not os.path.isfile(src):
        raise ModelFormatError("file not found", source=src)
    try:
        with np.load(src, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, EOFError, ValueError (pickled object)...
        raise ModelFormatError(f"not a readable npz file ({type(e).__name__}: {e})",
                               source=src) from e
    if "__meta__" not in data:
        raise ModelFormatError("missing '__meta__': not a jaxface model file", source=src,
                               field="__meta__")
    try:
        meta = json.loads(str(data.pop("__meta__")))
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"corrupt metadata ({e})", source=src, field="__meta__") from e
    if meta.get("format") != "jaxface-morphable-model":
        raise ModelFormatError(f"format is {meta.get('format')!r}, expected "
                               "'jaxface-morphable-model'", source=src, field="__meta__")
    if int(meta.get("version", -1)) > FORMAT_VERSION:
        raise ModelFormatError(f"file version {meta.get('version')} is newer than this jaxface "
                               f"({FORMAT_VERSION})", source=src, field="__meta__")
    for f in ("mean", "identity_basis", "triangles"):
        if f not in data:
            raise ModelFormatError("required array missing", source=src, field=f)
    groups: dict[str, dict[str, dict[str, np.ndarray]]] = {"landmarks": {}, "contours": {}}
    regions = {}
    steps = {}
    art_parts: dict[str, np.ndarray] = {}
    for key in list(data):
        if "/" not in key:
            continue
        parts = key.split("/")
        a = data.pop(key)
        if parts[0] == "regions" and len(parts) == 2:
            regions[parts[1]] = a
        elif parts[0] == "quantization" and len(parts) == 2:
            steps[parts[1]] = a
        elif parts[0] == "articulation" and len(parts) == 2 and parts[1] in _ARTICULATION_KEYS:
            art_parts[parts[1]] = a
        elif parts[0] in groups and len(parts) == 3:
            groups[parts[0]].setdefault(parts[1], {})[parts[2]] = a
        else:
            raise ModelFormatError("unknown key", source=src, field=key)
    try:
        lms = {k: LandmarkSet(d["indices"], d["weights"], d.get("valid"))
               for k, d in groups["landmarks"].items()}
        cts = {k: ContourSet(d["landmark_index"], d["candidates"])
               for k, d in groups["contours"].items()}
    except KeyError as e:
        raise ModelFormatError(f"incomplete landmark/contour group, missing {e}",
                               source=src) from e
    articulation = None
    if art_parts:
        missing = [k for k in ("joint_regressor", "skinning_weights", "parents")
                   if k not in art_parts]
        if missing:
            raise ModelFormatError("incomplete articulation group", source=src,
                                   field=f"articulation/{missing[0]}")
        par = art_parts["parents"]
        if par.ndim != 1 or not np.issubdtype(par.dtype, np.integer):
            raise ModelFormatError(f"expected a 1-D integer array, found {par.shape} {par.dtype}",
                                   source=src, field="articulation/parents")
        articulation = Articulation(
            joint_regressor=art_parts["joint_regressor"],
            skinning_weights=art_parts["skinning_weights"],
            pose_basis=art_parts.get("pose_basis"),
            joints_template=art_parts.get("joints_template"),
            parents=tuple(int(p) for p in par))
    unknown = set(data) - set(_ARRAY_FIELDS)
    if unknown:
        raise ModelFormatError(f"unknown keys {sorted(unknown)}", source=src)
    for f in _ARRAY_FIELDS:
        if not f.endswith("_basis") or f not in data:
            continue
        if f in steps:
            step = steps.pop(f)
            if (step.shape != () or not np.issubdtype(step.dtype, np.floating)
                    or not np.isfinite(step) or step <= 0):
                raise ModelFormatError("quantization step must be a positive float scalar",
                                       source=src, field=f"quantization/{f}")
            if data[f].dtype != np.int16:
                raise ModelFormatError(f"quantized basis must be int16, found {data[f].dtype}",
                                       source=src, field=f)
            data[f] = data[f].astype(np.float32) * np.float32(step)
        elif not np.issubdtype(data[f].dtype, np.floating):
            raise ModelFormatError(f"integer basis ({data[f].dtype}) without a quantization step",
                                   source=src, field=f)
    if steps:
        raise ModelFormatError(f"quantization step for missing basis {sorted(steps)}",
                               source=src, field=f"quantization/{sorted(steps)[0]}")
    return make_model(**{k: data.get(k) for k in _ARRAY_FIELDS}, landmarks=lms, contours=cts,
                      regions=regions, articulation=articulation,
                      expression_kind=meta.get("expression_kind", "pca"),
                      expression_names=meta.get("expression_names"),
                      units=meta.get("units", "mm"), name=meta.get("name", "model"), source=src)
