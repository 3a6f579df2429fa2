"""FLAME (2017/2020/2023) loader, without chumpy and without executing pickled code.

The official ``generic_model.pkl`` / ``flame2023.pkl`` are Python 2 pickles of a dict whose
arrays are NumPy arrays or ``chumpy.ch.Ch`` objects (the array is the ``x`` entry of the pickled
``__dict__``) and whose ``J_regressor`` is a ``scipy.sparse.csc_matrix``. They are read with
:class:`jaxface.models._formats.RestrictedUnpickler`, which resolves only NumPy array/dtype
reconstruction, ``chumpy.ch.Ch`` (to an inert stand-in), scipy csc/csr matrices (to an inert
stand-in that is rebuilt from its arrays), ``set``/``object`` and ``copy_reg._reconstructor`` for
those classes; any other global (``os.system``, ``builtins.eval``, other chumpy classes) is
refused with ModelFormatError.

Keys used (FLAME 2020): ``v_template`` (5023, 3), ``shapedirs`` (5023, 3, 400: 300 identity +
100 expression), ``posedirs`` (5023, 3, 36), ``J_regressor`` (5, 5023) sparse, ``weights``
(5023, 5), ``kintree_table`` (2, 5) (row 0: parent, with 2^32 - 1 for the root), ``f``
(9976, 3) 0-based, and ``J`` (5, 3) when present. Lengths in metres -> mm. The shape and
expression directions are already scaled (coefficients ~ N(0, 1)), so every std is 1.

Landmark embeddings (barycentric: a face id of ``f`` and three weights per landmark) come as
TF_FLAME's ``flame_static_embedding.pkl`` (51 inner-face points), RingNet's
``flame_dynamic_embedding.npy`` (the 17 jawline points, one row per head yaw) and DECA's
``landmark_embedding.npy`` (static, dynamic and full 68-point sets in one file, the dynamic
ones pickled as torch tensors, which are rebuilt here without torch). The yaw-dependent jawline
becomes a :class:`FlameContourEmbedding` (exact upstream row selection:
:func:`flame_dynamic_landmarks`) and, on the model, a :class:`ContourSet` for ``"ibug68"`` whose
candidates are the jawline vertices of every yaw row, so the landmark fitter's contour search
slides the jawline landmarks along the same curves.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxface._pytree import pytree_dataclass, static_field
from jaxface.errors import ModelFormatError
from jaxface.geometry import axis_angle_to_matrix
from jaxface.models import _formats as F
from jaxface.models.articulation import Articulation
from jaxface.models.morphable import ContourSet, LandmarkSet, MorphableModel, make_model

PathLike = str | os.PathLike
Array = jax.Array

METRE_TO_MM = 1000.0
WHAT = "FLAME model .pkl"


FlameArticulation = Articulation  # FLAME's articulation is the generic one (old name kept)


def _plain(obj: Any, src: str, key: str) -> Any:
    """Unwrap chumpy stand-ins and sparse stand-ins to numpy / scipy objects."""
    if isinstance(obj, F.ChumpyArray):
        try:
            return np.asarray(obj.array)
        except Exception as e:
            raise ModelFormatError(str(e), source=src, field=key) from e
    if isinstance(obj, F.SparseMatrix):
        try:
            return obj.to_scipy()
        except Exception as e:
            raise ModelFormatError(f"bad sparse matrix ({e})", source=src, field=key) from e
    return obj


def _read(path: PathLike) -> tuple[dict[str, Any], str]:
    src = F.src_name(path)
    raw = F.safe_load_pickle(path, what=WHAT)
    if not isinstance(raw, dict):
        raise ModelFormatError(f"expected a pickled dict, found {type(raw).__name__}", source=src)
    return {str(k): _plain(v, src, str(k)) for k, v in raw.items()}, src


def _arr(d: dict[str, Any], key: str, src: str, shape: tuple[int | None, ...]) -> np.ndarray:
    a = F.get_array(d, key, src, what=WHAT) if not _is_sparse(d.get(key)) else d[key]
    if _is_sparse(a):
        a = np.asarray(a.toarray())
    a = np.asarray(a)
    F.expect_shape(a, shape, src, key)
    if np.issubdtype(a.dtype, np.floating):
        F.check_finite(a, src, key)
    return a


def _is_sparse(a: Any) -> bool:
    return hasattr(a, "toarray") and hasattr(a, "tocsc")


def _model_from(d: dict[str, Any], src: str, n_identity: int,
                landmarks: PathLike | Sequence[PathLike] | None,
                articulation: Articulation | None = None) -> MorphableModel:
    vt = _arr(d, "v_template", src, (None, 3))
    v = vt.shape[0]
    sd = _arr(d, "shapedirs", src, (v, 3, None))
    k = sd.shape[2]
    if not 0 < n_identity <= k:
        raise ModelFormatError(f"shapedirs has {k} directions, cannot take {n_identity} "
                               "identity modes", source=src, field="shapedirs")
    f = _arr(d, "f", src, (None, 3))
    tri = F.as_index(f, src, "f", one_based=False, n=v)
    mean = vt.astype(np.float64) * METRE_TO_MM
    # landmark barycentrics refer to the file's vertex order within each face: read them first.
    lms, cts = ({}, {}) if landmarks is None else _landmark_parts(landmarks, tri)
    tri, _ = F.orient_outward(mean, tri)
    basis = np.ascontiguousarray(np.transpose(sd, (2, 0, 1))).astype(np.float32) * METRE_TO_MM
    extra: dict[str, Any] = {}
    if k > n_identity:
        extra = dict(expression_basis=basis[n_identity:], expression_kind="pca")
    return make_model(mean=mean, identity_basis=basis[:n_identity], triangles=tri,
                      landmarks=lms, contours=cts, articulation=articulation, units="mm",
                      name=Path(src).stem, source=src, **extra)


def _articulation_from(d: dict[str, Any], src: str) -> Articulation:
    v = _arr(d, "v_template", src, (None, 3)).shape[0]
    kt = _arr(d, "kintree_table", src, (2, None))
    nj = kt.shape[1]
    jr = _arr(d, "J_regressor", src, (nj, v)).astype(np.float32)
    w = _arr(d, "weights", src, (v, nj)).astype(np.float32)
    pd = _arr(d, "posedirs", src, (v, 3, None))
    parents_raw = kt[0].astype(np.int64)
    ids = kt[1].astype(np.int64)
    if not np.array_equal(ids, np.arange(nj)):
        raise ModelFormatError("row 1 of kintree_table must be 0..J-1", source=src,
                               field="kintree_table")
    root = (parents_raw < 0) | (parents_raw >= nj)  # 2^32 - 1 (uint32 -1) marks the root
    parents = np.where(root, -1, parents_raw)
    if int(root.sum()) != 1 or not root[0]:
        raise ModelFormatError("kintree_table must have exactly one root, joint 0", source=src,
                               field="kintree_table")
    if np.any(parents[1:] >= np.arange(1, nj)):
        raise ModelFormatError("parents must precede their children", source=src,
                               field="kintree_table")
    jt = None
    if "J" in d:
        jt = _arr(d, "J", src, (nj, 3)).astype(np.float32) * np.float32(METRE_TO_MM)
    return Articulation(
        joint_regressor=jr, skinning_weights=w,
        pose_basis=np.ascontiguousarray(np.transpose(pd, (2, 0, 1))).astype(np.float32)
        * np.float32(METRE_TO_MM),
        joints_template=jt, parents=tuple(int(p) for p in parents))


def load_flame(path: PathLike, *, landmarks: PathLike | Sequence[PathLike] | None = None,
               n_identity: int = 300, with_articulation: bool = True) -> MorphableModel:
    """Load a FLAME model (``generic_model.pkl``, ``flame2023.pkl``) with its articulation.

    Identity = the first ``n_identity`` (300) ``shapedirs`` directions, expression = the rest
    (100, ``expression_kind="pca"``), all std 1; mean = ``v_template``; mm. The articulation
    (``J_regressor``, ``weights``, ``posedirs``, ``kintree_table``, ``J``) becomes
    ``model.articulation``, so ``vertices(model, a, b, pose)`` takes a (5, 3) axis-angle pose
    (global, neck, jaw, left eye, right eye).

    Args:
      path: the FLAME ``.pkl`` (chumpy is *not* needed).
      landmarks: optional landmark embedding file(s) (see :func:`load_flame_landmarks`), e.g.
        ``["flame_static_embedding.pkl", "flame_dynamic_embedding.npy"]`` or DECA's
        ``landmark_embedding.npy``. With a dynamic (jawline) embedding the model gets an
        ``"ibug68"`` set (the frontal jawline row + the 51 static points, unless the files
        define ``"ibug68"`` themselves) and a ContourSet ``"ibug68"`` over the jawline
        vertices of all yaw rows (see :func:`flame_contour_set`).
      n_identity: number of leading shapedirs that are identity directions.
      with_articulation: read the skinning part (False: a purely linear model).

    Raises:
      ModelFormatError: not a FLAME pickle, unsafe pickle, truncated, or bad shapes.
    """
    d, src = _read(path)
    art = _articulation_from(d, src) if with_articulation else None
    return _model_from(d, src, n_identity, landmarks, art)


def load_flame_articulation(path: PathLike) -> Articulation:
    """The LBS part of a FLAME ``.pkl`` (joint regressor, weights, pose basis, kinematic tree)."""
    d, src = _read(path)
    return _articulation_from(d, src)


def load_flame_with_articulation(path: PathLike, *,
                                 landmarks: PathLike | Sequence[PathLike] | None = None,
                                 n_identity: int = 300
                                 ) -> tuple[MorphableModel, Articulation]:
    """``(model, model.articulation)`` of :func:`load_flame` (kept for older callers)."""
    m = load_flame(path, landmarks=landmarks, n_identity=n_identity)
    return m, m.articulation


def load_flame_landmarks(path: PathLike, triangles: Any) -> dict[str, LandmarkSet]:
    """Read the static landmark sets of a FLAME landmark embedding file.

    Supported files:

    * ``landmark_embedding.npy`` (DECA; a pickled dict, read safely, whose ``dynamic_*`` entries
      are torch tensors, rebuilt without torch): ``full_lmk_faces_idx`` (1, 68) +
      ``full_lmk_bary_coords`` (1, 68, 3) -> ``"ibug68"``; ``static_lmk_faces_idx`` (51,) +
      ``static_lmk_bary_coords`` (51, 3) -> ``"ibug51"`` (iBUG 18-68). The yaw-dependent
      ``dynamic_lmk_faces_idx`` (79, 17) / ``dynamic_lmk_bary_coords`` (79, 17, 3) are read by
      :func:`load_flame_contour_embedding`.
    * ``flame_static_embedding.pkl`` (TF_FLAME / RingNet): ``lmk_face_idx`` (51,) +
      ``lmk_b_coords`` (51, 3) -> ``"ibug51"``.
    * ``.npz`` with ``lmk_face_idx``/``lmk_b_coords`` (e.g. FLAME 2023's
      ``mediapipe_landmark_embedding.npz``) -> ``"mediapipe"`` (read without pickle).

    RingNet's ``flame_dynamic_embedding.npy`` holds only the jawline rows: it is refused here
    (use :func:`load_flame_contour_embedding`, or pass it to ``load_flame(landmarks=[...])``).
    Face ids are 0-based rows of ``triangles`` (the FLAME ``f``, in the file's order).
    """
    sets, contour = _read_embedding(path, triangles)
    if not sets:
        msg = ("a dynamic (jawline) embedding only: use load_flame_contour_embedding"
               if contour is not None else "no static landmark sets")
        raise ModelFormatError(msg, source=str(path))
    return sets


def _read_embedding(path: PathLike, triangles: Any
                    ) -> tuple[dict[str, LandmarkSet], FlameContourEmbedding | None]:
    """(static landmark sets, dynamic jawline embedding or None) of one embedding file."""
    p = F.require_file(path)
    src = str(p)
    tri = np.asarray(triangles)
    what = "FLAME landmark embedding"
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except Exception as e:
            raise ModelFormatError(f"not a readable npz ({e})", source=src) from e
        pairs = {"mediapipe": ("lmk_face_idx", "lmk_b_coords")}
        dynamic = None
    else:
        d = (F.safe_load_npy(p, what=what) if p.suffix == ".npy"
             else F.safe_load_pickle(p, what=what))
        if not isinstance(d, dict):
            raise ModelFormatError(f"expected a dict, found {type(d).__name__}", source=src)
        d = {str(k): _plain(v, src, str(k)) for k, v in d.items()}
        pairs = {"ibug68": ("full_lmk_faces_idx", "full_lmk_bary_coords"),
                 "ibug51": ("static_lmk_faces_idx", "static_lmk_bary_coords")}
        dynamic = (("dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords", 1)
                   if "dynamic_lmk_faces_idx" in d or "dynamic_lmk_bary_coords" in d else None)
        if "lmk_face_idx" in d:
            if np.ndim(d["lmk_face_idx"]) == 2:  # RingNet's flame_dynamic_embedding.npy
                pairs, dynamic = {}, ("lmk_face_idx", "lmk_b_coords", -1)
            else:  # TF_FLAME's flame_static_embedding.pkl
                pairs = {"ibug51": ("lmk_face_idx", "lmk_b_coords")}
    out: dict[str, LandmarkSet] = {}
    for name, (fk, bk) in pairs.items():
        if fk not in d and bk not in d:
            continue
        faces = F.get_array(d, fk, src, what=what).reshape(-1)
        bary = F.get_array(d, bk, src, what=what)
        bary = bary.reshape(-1, 3) if bary.size == 3 * faces.size else bary
        F.expect_shape(bary, (faces.shape[0], 3), src, bk)
        fid, bary = _faces_and_bary(faces, bary, src, fk, bk, tri.shape[0])
        out[name] = LandmarkSet.from_barycentric(tri, fid, bary)
    contour = None
    if dynamic is not None:
        fk, bk, sign = dynamic
        faces = F.get_array(d, fk, src, what=what)
        F.expect_shape(faces, (CONTOUR_ROWS, None), src, fk)
        bary = F.get_array(d, bk, src, what=what)
        F.expect_shape(bary, (CONTOUR_ROWS, faces.shape[1], 3), src, bk)
        fid, b = _faces_and_bary(faces.reshape(-1), bary.reshape(-1, 3), src, fk, bk,
                                 tri.shape[0])
        contour = FlameContourEmbedding(
            indices=tri[fid].astype(np.int32).reshape(faces.shape + (3,)),
            weights=b.astype(np.float32).reshape(faces.shape + (3,)), yaw_sign=sign)
    if not out and contour is None:
        raise ModelFormatError(f"no known landmark keys (found {sorted(d)})", source=src)
    return out, contour


def _faces_and_bary(faces: np.ndarray, bary: np.ndarray, src: str, fk: str, bk: str,
                    n_faces: int) -> tuple[np.ndarray, np.ndarray]:
    F.check_finite(bary, src, bk)
    fid = F.as_index(faces, src, fk, one_based=False, n=n_faces)
    if not np.allclose(bary.sum(axis=1), 1.0, atol=1e-4):
        raise ModelFormatError("barycentric coordinates must sum to 1", source=src, field=bk)
    return fid, bary


def _landmark_parts(paths: PathLike | Sequence[PathLike], tri: np.ndarray
                    ) -> tuple[dict[str, LandmarkSet], dict[str, ContourSet]]:
    """Landmark sets and contour sets of ``load_flame(landmarks=...)``."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    sets: dict[str, LandmarkSet] = {}
    contour = None
    for path in paths:
        s, c = _read_embedding(path, tri)
        sets.update(s)
        contour = c if c is not None else contour
    if contour is None:
        return sets, {}
    n_jaw = int(np.shape(contour.indices)[1])
    if "ibug68" not in sets:  # frontal jawline row + the static inner-face points
        jaw = flame_dynamic_landmarks(contour, np.eye(3, dtype=np.float32))
        inner = sets.get("ibug51")
        n_inner = IBUG68 - n_jaw
        if inner is not None and len(inner) != n_inner:
            raise ModelFormatError(f"{len(inner)} static landmarks + {n_jaw} jawline ones "
                                   f"are not the {IBUG68} iBUG points", source=str(paths[0]))
        ids = np.concatenate([np.asarray(jaw.indices), np.asarray(inner.indices) if inner
                              else np.zeros((n_inner, 3), np.int32)])
        wts = np.concatenate([np.asarray(jaw.weights), np.asarray(inner.weights) if inner
                              else np.tile(np.float32([1, 0, 0]), (n_inner, 1))])
        valid = None if inner is not None else np.arange(IBUG68) < n_jaw
        sets["ibug68"] = LandmarkSet(indices=ids.astype(np.int32),
                                     weights=wts.astype(np.float32), valid=valid)
    return sets, {"ibug68": flame_contour_set(contour)}


# ------------------------------------------------------------------------------------------------
# Dynamic (yaw-dependent) jawline landmarks
# ------------------------------------------------------------------------------------------------

IBUG68 = 68
CONTOUR_MAX_YAW = 39  # degrees; rows cover integer yaws -39..39
CONTOUR_ROWS = 2 * CONTOUR_MAX_YAW + 1
NECK_JOINT = 1  # FLAME joints: 0 global, 1 neck, 2 jaw, 3/4 eyes


@pytree_dataclass
class FlameContourEmbedding:
    """FLAME's yaw-dependent jawline landmarks (RingNet ``flame_dynamic_embedding.npy``, DECA
    ``landmark_embedding.npy`` ``dynamic_*``), as vertex ids and barycentric weights.

    Row ``r`` holds the jawline for one integer head yaw: rows 0..39 are yaws 0..39 degrees,
    rows 40..78 yaws -1..-39 (beyond +-39 the last row of each side), the yaw being
    ``yaw_sign`` times the y Euler angle of the head rotation (see
    :func:`flame_contour_row`): the order the upstream code (FLAME_PyTorch, smplx, DECA) reads
    the rows in.

    Attributes:
      indices: (79, L, 3) int32 vertex ids (the corners of each landmark's face), L = 17.
      weights: (79, L, 3) float32 barycentric weights.
      yaw_sign: -1 for ``flame_dynamic_embedding.npy`` (FLAME_PyTorch / smplx negate the
        angle), +1 for DECA's ``landmark_embedding.npy`` (DECA does not).
    """

    indices: Any
    weights: Any
    yaw_sign: int = static_field(default=-1)


def flame_head_rotation(pose: Any) -> Array:
    """(3, 3) rotation of the head relative to the model frame: ``R(global) @ R(neck)``.

    Args:
      pose: (J, 3) FLAME axis-angle pose (row 0 global, row 1 neck), J >= 2.
    """
    pose = jnp.asarray(pose)
    return axis_angle_to_matrix(pose[0]) @ axis_angle_to_matrix(pose[NECK_JOINT])


def flame_contour_row(embedding: FlameContourEmbedding, rotation: Any) -> Array:
    """The jawline row for a head rotation, selected as the upstream FLAME code does.

    ``yaw = atan2(-R[2, 0], hypot(R[0, 0], R[1, 0]))`` in degrees (rotation about +y),
    ``a = round(min(yaw_sign * yaw, 39))``, row ``a`` if ``a >= 0`` else ``min(39 - a, 78)``.

    Args:
      embedding: the jawline embedding.
      rotation: (..., 3, 3) head rotation in the FLAME model frame (+y up, +z out of the face),
        e.g. :func:`flame_head_rotation` of a pose.

    Returns:
      (...,) int32 row indices in [0, 78].
    """
    r = jnp.asarray(rotation)
    yaw = jnp.arctan2(-r[..., 2, 0], jnp.sqrt(r[..., 0, 0] ** 2 + r[..., 1, 0] ** 2))
    a = jnp.round(jnp.minimum(embedding.yaw_sign * yaw * (180.0 / np.pi),
                              float(CONTOUR_MAX_YAW)))
    row = jnp.where(a >= 0, a, jnp.minimum(CONTOUR_MAX_YAW - a, 2.0 * CONTOUR_MAX_YAW))
    return row.astype(jnp.int32)


def flame_dynamic_landmarks(embedding: FlameContourEmbedding, rotation: Any) -> LandmarkSet:
    """The L (17) jawline landmarks for a head rotation (jit/vmap-able; no gradient flows
    through the row choice).

    Args:
      embedding: from :func:`load_flame_contour_embedding`.
      rotation: (3, 3) head rotation (see :func:`flame_contour_row`).

    Returns:
      LandmarkSet with (L, 3) indices and weights; evaluate it with
      :func:`jaxface.models.morphable.landmarks`-style barycentric interpolation.
    """
    row = flame_contour_row(embedding, rotation)
    return LandmarkSet(indices=jnp.take(jnp.asarray(embedding.indices), row, axis=0),
                       weights=jnp.take(jnp.asarray(embedding.weights), row, axis=0))


def flame_contour_set(embedding: FlameContourEmbedding,
                      landmark_index: Sequence[int] | None = None) -> ContourSet:
    """A :class:`ContourSet` for the fitter's contour search: landmark ``j`` (row
    ``landmark_index[j]``, default ``j``) may slide over the vertex nearest to its point
    (largest barycentric weight) in each of the 79 yaw rows (duplicates removed, padded -1).
    """
    ids = np.asarray(embedding.indices)
    w = np.asarray(embedding.weights)
    nearest = np.take_along_axis(ids, np.argmax(w, axis=-1)[..., None], axis=-1)[..., 0]
    cols = [list(dict.fromkeys(int(v) for v in nearest[:, j])) for j in range(ids.shape[1])]
    width = max(len(c) for c in cols)
    cand = np.full((len(cols), width), -1, np.int32)
    for j, c in enumerate(cols):
        cand[j, :len(c)] = c
    li = np.arange(len(cols)) if landmark_index is None else np.asarray(landmark_index)
    return ContourSet(landmark_index=li.astype(np.int32), candidates=cand)


def load_flame_contour_embedding(path: PathLike, triangles: Any) -> FlameContourEmbedding:
    """Read the yaw-dependent jawline embedding of RingNet's ``flame_dynamic_embedding.npy``
    (a pickled dict: ``lmk_face_idx`` (79, 17), ``lmk_b_coords`` (79, 17, 3)) or of DECA's
    ``landmark_embedding.npy`` (``dynamic_lmk_faces_idx`` / ``dynamic_lmk_bary_coords``, torch
    tensors in the file).

    Args:
      path: the embedding file.
      triangles: (T, 3) the FLAME ``f`` in the file's vertex order (``load_flame`` reorients its
        triangles; pass the raw ``f`` or read the embedding through ``load_flame``).

    Raises:
      ModelFormatError: no dynamic entries, wrong shapes, face ids out of range, weights that
        do not sum to 1, or an unsafe pickle.
    """
    _, contour = _read_embedding(path, triangles)
    if contour is None:
        raise ModelFormatError("no dynamic (jawline) embedding in this file", source=str(path))
    return contour
