"""ICT-FaceKit ("ICT Face Model Light", MIT licence) loaders and the embedded default model.

The upstream model (https://github.com/ICT-VGL/ICT-FaceKit) is one quad-dominant head topology of
26,719 vertices with 100 identity PCA modes, shipped already scaled by their standard deviation
(upstream draws ``a ~ N(0, 1)``), and 53 ARKit-style expression blendshapes (weights in [0, 1]).
Upstream units are centimetres with +x toward the subject's left, +y up and +z forward; the
loaders here convert to millimetres and keep the axes.

Two sources are understood by :func:`load_ict`:

* the staged ``ict_face_model_light.npz`` (every upstream OBJ packed as ``neutral`` +
  per-mode differences, see ``$JAXFACE_DATA/ict-facekit/README.md``);
* a folder of upstream OBJs: ``generic_neutral_mesh.obj``, ``identity000.obj`` ... (the
  consecutive run present), one ``<name>.obj`` per name in ``vertex_indices.json["expressions"]``.

Both need ``vertex_indices.json`` (landmark vertex ids) next to them, or passed explicitly.

:func:`load_default` returns the embedded default model (``assets/default_model.npz``): the
face, head, mouth socket, eye sockets and eyeballs of ICT-FaceKit, all identity and expression
modes, int16-quantised; see ``assets/README.md`` and ``scripts/build_default_model.py``.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from jaxface.data import data_path
from jaxface.errors import MeshFormatError, ModelFormatError
from jaxface.models.morphable import (
    ContourSet,
    LandmarkSet,
    MorphableModel,
    load_npz,
    make_model,
)

__all__ = [
    "ICT_N_VERTICES",
    "ICT_PARTS",
    "LEFT_EXTENDED_JAWLINE",
    "LEFT_JAWLINE",
    "RIGHT_EXTENDED_JAWLINE",
    "RIGHT_JAWLINE",
    "default_model_path",
    "ict_contours",
    "ict_regions",
    "load_default",
    "load_ict",
]

ICT_N_VERTICES = 26719
CM_TO_MM = 10.0

#: Upstream mesh parts as inclusive 0-based vertex ranges (upstream README, "Face Model Topology").
ICT_PARTS: dict[str, tuple[int, int]] = {
    "face": (0, 9408),
    "narrow_face": (0, 6705),
    "head_neck": (9409, 11247),
    "mouth_socket": (11248, 13293),
    "eye_sockets": (13294, 14061),
    "gums_tongue": (14062, 17038),
    "teeth": (17039, 21450),
    "eyeballs": (21451, 24590),
    "eye_extras": (24591, 26718),  # lacrimal fluid, eye blend, eye occlusion, eyelashes
    # Sides are the subject's (upstream "left" parts have x > 0, i.e. +x = subject's left).
    "eye_socket_left": (13294, 13677),
    "eye_socket_right": (13678, 14061),
    "eyeball_left": (21451, 23020),
    "eyeball_right": (23021, 24590),
}

#: Composite regions: name -> parts whose union it is.
_SEMANTIC_REGIONS: dict[str, tuple[str, ...]] = {
    "eyes": ("eyeballs",),
    "mouth": ("mouth_socket", "gums_tongue", "teeth"),
    "skin": ("face", "head_neck"),
}

# Jawline vertex ids from the upstream README (0-based). "Right" is the subject's right (x < 0),
# the side of iBUG landmarks 0-7; the short lists substitute landmarks 0-7 and 9-16 in order.
RIGHT_JAWLINE = (1278, 1272, 12, 1834, 243, 781, 2199, 1447)
LEFT_JAWLINE = (3661, 4390, 3022, 2484, 4036, 2253, 3490, 3496)
RIGHT_EXTENDED_JAWLINE = (1280, 1278, 1275, 1272, 1248, 12, 820, 1834, 1902, 243, 844, 781, 1673,
                          2199, 801, 1447, 800)
LEFT_EXTENDED_JAWLINE = (3041, 3661, 3042, 4390, 3880, 3022, 3085, 2484, 4102, 4036, 3061, 2253,
                         3466, 3490, 3493, 3496, 3498)

NPZ_NAME = "ict_face_model_light.npz"
INDICES_NAME = "vertex_indices.json"
NEUTRAL_NAME = "generic_neutral_mesh.obj"

_ASSET_PACKAGE = "jaxface.models.assets"
_DEFAULT_NAME = "default_model.npz"


# ------------------------------------------------------------------------------------------------
# Landmarks, contours, regions (shared by both loaders and the default-model build script)
# ------------------------------------------------------------------------------------------------

def ict_regions(n_vertices: int = ICT_N_VERTICES) -> dict[str, np.ndarray]:
    """Boolean vertex masks (n_vertices,) of the upstream parts and a few composite regions."""
    regions: dict[str, np.ndarray] = {}
    for name, (lo, hi) in ICT_PARTS.items():
        m = np.zeros(n_vertices, bool)
        m[lo:hi + 1] = True
        regions[name] = m
    for name, parts in _SEMANTIC_REGIONS.items():
        regions[name] = np.logical_or.reduce([regions[p] for p in parts])
    return regions


def ict_contours(landmark_ids: Any) -> ContourSet:
    """The jawline ``ContourSet`` of the iBUG-68 landmarks.

    Landmarks 0-7 (the subject's right jaw) get the right extended jawline as candidates plus
    their own vertex; 9-16 (the subject's left) the left extended jawline plus their own vertex.
    Rows are padded with -1.

    Args:
      landmark_ids: (68,) landmark vertex ids in iBUG order.
    """
    ids = np.asarray(landmark_ids).reshape(-1)
    rows, which = [], []
    for lm, side in [(i, RIGHT_EXTENDED_JAWLINE) for i in range(8)] + \
                    [(i, LEFT_EXTENDED_JAWLINE) for i in range(9, 17)]:
        own = int(ids[lm])
        rows.append([own] + [v for v in side if v != own])
        which.append(lm)
    width = max(len(r) for r in rows)
    cand = np.full((len(rows), width), -1, np.int32)
    for i, r in enumerate(rows):
        cand[i, :len(r)] = r
    return ContourSet(landmark_index=np.asarray(which, np.int32), candidates=cand)


def _ibug_jawline_ids(landmark_ids: np.ndarray) -> np.ndarray:
    """The 68 landmark ids with the upstream jawline substitutes for landmarks 0-7 and 9-16."""
    ids = np.array(landmark_ids, np.int64).copy()
    ids[0:8] = RIGHT_JAWLINE
    ids[9:17] = LEFT_JAWLINE
    return ids


def _read_indices(path: Path, n_vertices: int) -> dict[str, Any]:
    """Parse ``vertex_indices.json``; return its dict with checked ``idx_to_landmark_verts``."""
    src = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise ModelFormatError("vertex_indices.json not found (landmarks are defined there)",
                               source=src) from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"not valid JSON ({e})", source=src) from e
    if not isinstance(data, dict):
        raise ModelFormatError("expected a JSON object", source=src)
    key = "idx_to_landmark_verts"
    if key not in data:
        raise ModelFormatError("missing key", source=src, field=key)
    try:
        lm = np.asarray(data[key], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise ModelFormatError(f"not a list of integers ({e})", source=src, field=key) from e
    if lm.shape != (68,):
        raise ModelFormatError(f"expected 68 landmark vertex ids, found shape {lm.shape}",
                               source=src, field=key)
    if lm.min() < 0 or lm.max() >= n_vertices:
        raise ModelFormatError(f"landmark vertex ids must lie in [0, {n_vertices})", source=src,
                               field=key)
    data[key] = lm
    names = data.get("expressions")
    if names is not None and (not isinstance(names, list)
                              or not all(isinstance(n, str) for n in names)):
        raise ModelFormatError("expected a list of names", source=src, field="expressions")
    return data


def _annotations(landmark_ids: np.ndarray, n_vertices: int) -> dict[str, Any]:
    """landmarks / contours / regions keyword arguments for ``make_model``."""
    kw: dict[str, Any] = dict(landmarks={"ibug68": LandmarkSet.from_vertex_ids(landmark_ids)})
    if n_vertices == ICT_N_VERTICES:  # the fixed vertex ids below refer to the ICT topology
        kw["landmarks"]["ibug68_jawline"] = LandmarkSet.from_vertex_ids(
            _ibug_jawline_ids(landmark_ids))
        kw["contours"] = {"ibug68": ict_contours(landmark_ids)}
        kw["regions"] = ict_regions(n_vertices)
    return kw


def _fan(polys: np.ndarray) -> np.ndarray:
    """Fan-triangulate (P, N) polygons padded with -1: (v0, vk, vk+1) for k = 1..n-2, in order."""
    polys = np.asarray(polys)
    n = polys.shape[1]
    tris = np.stack([np.stack([polys[:, 0], polys[:, k], polys[:, k + 1]], axis=1)
                     for k in range(1, n - 1)], axis=1)  # (P, n-2, 3)
    valid = (tris >= 0).all(axis=2)  # polygon order, then fan order (row-major)
    return tris[valid].astype(np.int32)


# ------------------------------------------------------------------------------------------------
# load_ict
# ------------------------------------------------------------------------------------------------

def load_ict(path: str | os.PathLike | None = None, *, vertex_indices: str | os.PathLike |
             None = None, n_identity: int | None = None, name: str = "ict-facekit"
             ) -> MorphableModel:
    """Load the full ICT-FaceKit light model in millimetres.

    Args:
      path: ``ict_face_model_light.npz``, or a folder. A folder holding that npz is read through
        the npz; any other folder must hold the upstream OBJs (``generic_neutral_mesh.obj``,
        ``identity000.obj``, ``identity001.obj``, ... as many consecutive ones as are present,
        and every expression named in ``vertex_indices.json``). None means
        ``$JAXFACE_DATA/ict-facekit/ict_face_model_light.npz``.
      vertex_indices: the upstream ``vertex_indices.json``; default: next to ``path``.
      n_identity: read only the leading ``n_identity`` identity modes (default all).
      name: model name.

    Returns:
      A ``MorphableModel`` with V = 26719, identity_std = 1 (the basis is pre-scaled),
      ``expression_kind="blendshape"``, raw OBJ ``uv``/``uv_triangles``, landmark sets
      ``"ibug68"`` and ``"ibug68_jawline"``, contour ``"ibug68"`` and the regions of
      :data:`ICT_PARTS` plus ``"eyes"``, ``"mouth"`` and ``"skin"``.

    Raises:
      ModelFormatError: a file is missing, truncated or inconsistent (names file and key).
      DataNotFoundError: ``path`` is None and ``$JAXFACE_DATA`` is not usable.
    """
    p = data_path("ict-facekit", NPZ_NAME) if path is None else Path(path)
    if n_identity is not None and n_identity < 0:
        raise ValueError(f"n_identity must be >= 0, got {n_identity}")
    if p.is_dir():
        if (p / NPZ_NAME).is_file():
            p = p / NPZ_NAME
        else:
            idx = Path(vertex_indices) if vertex_indices is not None else p / INDICES_NAME
            return _load_ict_objs(p, idx, n_identity, name)
    if not p.exists():
        raise ModelFormatError("file not found", source=str(p))
    idx = Path(vertex_indices) if vertex_indices is not None else p.parent / INDICES_NAME
    return _load_ict_npz(p, idx, n_identity, name)


def _load_ict_npz(path: Path, indices_path: Path, n_identity: int | None, name: str
                  ) -> MorphableModel:
    src = str(path)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ModelFormatError(f"not a readable npz file ({type(e).__name__}: {e})",
                               source=src) from e

    with z:
        def get(key: str, ndim: int, kind: str, rows: int | None = None) -> np.ndarray:
            if key not in z.files:
                raise ModelFormatError("missing array", source=src, field=key)
            try:
                a = z[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise ModelFormatError(f"cannot read array ({type(e).__name__}: {e})",
                                       source=src, field=key) from e
            ok = {"f": np.issubdtype(a.dtype, np.floating),
                  "i": np.issubdtype(a.dtype, np.integer),
                  "U": a.dtype.kind == "U"}[kind]
            if not ok or a.ndim != ndim or (rows is not None and a.shape[0] != rows):
                raise ModelFormatError(f"unexpected array {a.dtype}{list(a.shape)}", source=src,
                                       field=key)
            return a

        mean = get("neutral", 2, "f")
        v = mean.shape[0]
        if mean.shape[1] != 3:
            raise ModelFormatError(f"expected (V, 3), found {mean.shape}", source=src,
                                   field="neutral")
        ib = get("identity_basis", 3, "f")
        if n_identity is not None:
            if n_identity > ib.shape[0]:
                raise ValueError(f"n_identity={n_identity} but {src} has {ib.shape[0]} modes")
            ib = ib[:n_identity]
        eb = get("expression_basis", 3, "f")
        names = [str(s) for s in get("expression_names", 1, "U", rows=eb.shape[0])]
        faces = get("faces", 2, "i")
        fuv = get("face_uv_indices", 2, "i", rows=faces.shape[0])
        uv = get("uv", 2, "f")
    if fuv.shape != faces.shape:
        raise ModelFormatError(f"shape {fuv.shape} differs from faces {faces.shape}", source=src,
                               field="face_uv_indices")
    for key, polys in (("faces", faces), ("face_uv_indices", fuv)):
        if polys.shape[1] < 3 or (polys[:, :3] < 0).any():
            raise ModelFormatError("every polygon needs >= 3 corners", source=src, field=key)
    if not np.array_equal(faces < 0, fuv < 0):
        raise ModelFormatError("polygon sizes differ from faces", source=src,
                               field="face_uv_indices")
    indices = _read_indices(indices_path, v)
    return make_model(
        mean=mean.astype(np.float64) * CM_TO_MM,
        identity_basis=ib.astype(np.float32) * np.float32(CM_TO_MM),
        expression_basis=eb.astype(np.float32) * np.float32(CM_TO_MM),
        expression_kind="blendshape", expression_names=names,
        triangles=_fan(faces), uv=uv, uv_triangles=_fan(fuv),
        units="mm", name=name, source=src, **_annotations(indices["idx_to_landmark_verts"], v))


def _read_obj_checked(path: Path, n_vertices: int | None = None) -> Any:
    from jaxface.mesh import read_obj  # outer-ring I/O; imported lazily

    if not path.is_file():
        raise ModelFormatError("OBJ file not found", source=str(path))
    try:
        mesh = read_obj(path)
    except MeshFormatError:
        raise
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"cannot read OBJ ({e})", source=str(path)) from e
    if n_vertices is not None and mesh.n_vertices != n_vertices:
        raise ModelFormatError(f"{mesh.n_vertices} vertices, the neutral mesh has {n_vertices}",
                               source=str(path), field="v")
    return mesh


def _load_ict_objs(folder: Path, indices_path: Path, n_identity: int | None, name: str
                   ) -> MorphableModel:
    neutral_path = folder / NEUTRAL_NAME
    if not neutral_path.is_file():
        raise ModelFormatError(f"neither {NPZ_NAME} nor {NEUTRAL_NAME} found", source=str(folder))
    neutral = _read_obj_checked(neutral_path)
    v = neutral.n_vertices
    base = np.asarray(neutral.vertices, np.float64)
    indices = _read_indices(indices_path, v)
    if "expressions" not in indices:
        raise ModelFormatError("missing key", source=str(indices_path), field="expressions")

    present = {m.group(1) for f in folder.glob("identity*.obj")
               if (m := re.fullmatch(r"identity(\d{3})\.obj", f.name))}
    count = 0
    while f"{count:03d}" in present and (n_identity is None or count < n_identity):
        count += 1
    if n_identity is not None and count < n_identity:
        raise ModelFormatError(f"n_identity={n_identity} but only identity000..{count - 1:03d} "
                               "are present", source=str(folder / f"identity{count:03d}.obj"))

    def delta(path: Path) -> np.ndarray:
        verts = np.asarray(_read_obj_checked(path, v).vertices, np.float64)
        return ((verts - base) * CM_TO_MM).astype(np.float32)

    ib = np.stack([delta(folder / f"identity{k:03d}.obj") for k in range(count)]) if count \
        else np.zeros((0, v, 3), np.float32)
    names = list(indices["expressions"])
    eb = (np.stack([delta(folder / f"{n}.obj") for n in names]) if names
          else None)
    if neutral.uv is not None and neutral.uv_triangles is None:
        uv, uvt = neutral.uv, neutral.triangles
    else:
        uv, uvt = neutral.uv, neutral.uv_triangles
    return make_model(
        mean=base * CM_TO_MM, identity_basis=ib, expression_basis=eb,
        expression_kind="blendshape", expression_names=names if names else None,
        triangles=neutral.triangles, uv=uv, uv_triangles=uvt,
        units="mm", name=name, source=str(folder),
        **_annotations(indices["idx_to_landmark_verts"], v))


# ------------------------------------------------------------------------------------------------
# The embedded default model
# ------------------------------------------------------------------------------------------------

def default_model_path() -> Path:
    """Path of the embedded ``default_model.npz`` (inside the installed package)."""
    res = importlib.resources.files(_ASSET_PACKAGE).joinpath(_DEFAULT_NAME)
    return Path(str(res))


@functools.lru_cache(maxsize=1)
def _load_default_cached() -> MorphableModel:
    res = importlib.resources.files(_ASSET_PACKAGE).joinpath(_DEFAULT_NAME)
    with importlib.resources.as_file(res) as p:
        if not Path(p).is_file():
            raise ModelFormatError("the embedded default model is missing; rebuild it with "
                                   "scripts/build_default_model.py", source=str(p))
        model = load_npz(p)
    for leaf in _host_arrays(model):
        leaf.setflags(write=False)  # the cached model is shared: make it immutable
    return model


def _host_arrays(model: MorphableModel) -> list[np.ndarray]:
    import jax

    return [x for x in jax.tree_util.tree_leaves(model) if isinstance(x, np.ndarray)]


def load_default() -> MorphableModel:
    """The embedded default model: ICT-FaceKit's face and head, in millimetres.

    Needs no data folder (it ships inside the package; MIT licence, see
    ``jaxface/models/assets/LICENSE-ICT-FaceKit``). Face, head and neck, mouth socket, eye
    sockets and eyeballs of ICT-FaceKit (17,202 vertices), all 100 identity modes
    (``identity_std == 1``) and the 53 blendshapes, with the ``"ibug68"`` landmarks, their
    jawline contour and the part regions. The bases are int16-quantised (see
    ``jaxface/models/assets/README.md`` for the measured error). The returned arrays are
    read-only NumPy arrays shared between calls.
    """
    return _load_default_cached()
