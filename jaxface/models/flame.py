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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxface.errors import ModelFormatError
from jaxface.models import _formats as F
from jaxface.models.articulation import Articulation
from jaxface.models.morphable import LandmarkSet, MorphableModel, make_model

PathLike = str | os.PathLike

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
                landmarks: PathLike | None, articulation: Articulation | None = None
                ) -> MorphableModel:
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
    lms = {} if landmarks is None else load_flame_landmarks(landmarks, tri)
    tri, _ = F.orient_outward(mean, tri)
    basis = np.ascontiguousarray(np.transpose(sd, (2, 0, 1))).astype(np.float32) * METRE_TO_MM
    extra: dict[str, Any] = {}
    if k > n_identity:
        extra = dict(expression_basis=basis[n_identity:], expression_kind="pca")
    return make_model(mean=mean, identity_basis=basis[:n_identity], triangles=tri,
                      landmarks=lms, articulation=articulation, units="mm",
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


def load_flame(path: PathLike, *, landmarks: PathLike | None = None,
               n_identity: int = 300, with_articulation: bool = True) -> MorphableModel:
    """Load a FLAME model (``generic_model.pkl``, ``flame2023.pkl``) with its articulation.

    Identity = the first ``n_identity`` (300) ``shapedirs`` directions, expression = the rest
    (100, ``expression_kind="pca"``), all std 1; mean = ``v_template``; mm. The articulation
    (``J_regressor``, ``weights``, ``posedirs``, ``kintree_table``, ``J``) becomes
    ``model.articulation``, so ``vertices(model, a, b, pose)`` takes a (5, 3) axis-angle pose
    (global, neck, jaw, left eye, right eye).

    Args:
      path: the FLAME ``.pkl`` (chumpy is *not* needed).
      landmarks: optional landmark embedding (see :func:`load_flame_landmarks`).
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


def load_flame_with_articulation(path: PathLike, *, landmarks: PathLike | None = None,
                                 n_identity: int = 300
                                 ) -> tuple[MorphableModel, Articulation]:
    """``(model, model.articulation)`` of :func:`load_flame` (kept for older callers)."""
    m = load_flame(path, landmarks=landmarks, n_identity=n_identity)
    return m, m.articulation


def load_flame_landmarks(path: PathLike, triangles: Any) -> dict[str, LandmarkSet]:
    """Read a FLAME landmark embedding as barycentric landmark sets.

    Supported files:

    * ``landmark_embedding.npy`` (DECA/RingNet; a pickled dict read safely): ``full_lmk_faces_idx``
      (1, 68) + ``full_lmk_bary_coords`` (1, 68, 3) -> ``"ibug68"``; ``static_lmk_faces_idx``
      (51,) + ``static_lmk_bary_coords`` (51, 3) -> ``"ibug51"`` (iBUG 18-68). The yaw-dependent
      ``dynamic_*`` contour entries are not converted.
    * ``flame_static_embedding.pkl`` (TF_FLAME): ``lmk_face_idx`` (51,) + ``lmk_b_coords``
      (51, 3) -> ``"ibug51"``.
    * ``.npz`` with ``lmk_face_idx``/``lmk_b_coords`` (e.g. FLAME 2023's
      ``mediapipe_landmark_embedding.npz``) -> ``"mediapipe"`` (read without pickle).

    Face ids are 0-based rows of ``triangles`` (the FLAME ``f``).
    """
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
    else:
        d = (F.safe_load_npy(p, what=what) if p.suffix == ".npy"
             else F.safe_load_pickle(p, what=what))
        if not isinstance(d, dict):
            raise ModelFormatError(f"expected a dict, found {type(d).__name__}", source=src)
        d = {str(k): _plain(v, src, str(k)) for k, v in d.items()}
        pairs = {"ibug68": ("full_lmk_faces_idx", "full_lmk_bary_coords"),
                 "ibug51": ("static_lmk_faces_idx", "static_lmk_bary_coords")}
        if "lmk_face_idx" in d:
            pairs = {"ibug51": ("lmk_face_idx", "lmk_b_coords")}
    out: dict[str, LandmarkSet] = {}
    for name, (fk, bk) in pairs.items():
        if fk not in d and bk not in d:
            continue
        faces = F.get_array(d, fk, src, what=what).reshape(-1)
        bary = F.get_array(d, bk, src, what=what)
        bary = bary.reshape(-1, 3) if bary.size == 3 * faces.size else bary
        F.expect_shape(bary, (faces.shape[0], 3), src, bk)
        F.check_finite(bary, src, bk)
        fid = F.as_index(faces, src, fk, one_based=False, n=tri.shape[0])
        if not np.allclose(bary.sum(axis=1), 1.0, atol=1e-4):
            raise ModelFormatError("barycentric coordinates must sum to 1", source=src,
                                   field=bk)
        out[name] = LandmarkSet.from_barycentric(tri, fid, bary)
    if not out:
        raise ModelFormatError(f"no known landmark keys (found {sorted(d)})", source=src)
    return out
