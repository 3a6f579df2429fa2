"""MediaPipe's canonical face mesh as a template-only MorphableModel.

The canonical face model (``canonical_face_model.obj``, 468 vertices; ``face_model_with_iris.obj``,
478) has no statistical basis: it is loaded as a model with **zero** identity modes
(``identity_basis`` of shape (0, V, 3)), so it can be used for rigid pose (Procrustes / PnP)
against MediaPipe Face Mesh landmarks: vertex i *is* Face Mesh landmark i, which the landmark
set ``"mediapipe468"`` (or ``"mediapipe478"``) states explicitly.

Units: the files are in centimetres; we return mm. Axes are kept as in the file (+y up, +z
toward the viewer, like the BFM/FLAME model frames); the OBJ triangles are counter-clockwise seen
from outside (checked at load time, flipped if not). UVs come from the OBJ (``vt``, v = 0 at
the bottom).

The Procrustes landmark weights of MediaPipe's geometry pipeline
(``geometry_pipeline_metadata_landmarks.pbtxt``: 33 ``procrustes_landmark_basis { landmark_id,
weight }`` entries) are read by :func:`load_mediapipe_procrustes_weights`; the loader adds the
boolean region ``"procrustes"`` (the 33 vertices) when the file is given or found.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from jaxface.data import data_path
from jaxface.errors import MeshFormatError, ModelFormatError
from jaxface.models import _formats as F
from jaxface.models.morphable import LandmarkSet, MorphableModel, make_model

PathLike = str | os.PathLike

CENTIMETRE_TO_MM = 10.0
FOLDER = "mediapipe-face-geometry"
_PROCRUSTES = re.compile(
    r"procrustes_landmark_basis\s*\{\s*landmark_id\s*:\s*(\S+)\s+weight\s*:\s*(\S+?)\s*\}")


def load_mediapipe_procrustes_weights(path: PathLike | None = None,
                                      n_vertices: int | None = None
                                      ) -> tuple[np.ndarray, np.ndarray]:
    """The weighted Procrustes landmarks of MediaPipe's face geometry pipeline.

    Args:
      path: ``geometry_pipeline_metadata_landmarks.pbtxt``; None: the staged copy under
        ``$JAXFACE_DATA/mediapipe-face-geometry``.
      n_vertices: if given, landmark ids are checked to lie in [0, n_vertices).

    Returns:
      (ids (33,) int32, weights (33,) float32), in file order (weights as stored; they sum to
      about 1.055, MediaPipe uses them unnormalised).
    """
    p = Path(path) if path is not None else data_path(
        FOLDER, "geometry_pipeline_metadata_landmarks.pbtxt")
    p = F.require_file(p)
    src = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ModelFormatError(f"not a protobuf text file ({e})", source=src) from e
    found = _PROCRUSTES.findall(text)
    if not found:
        raise ModelFormatError("no procrustes_landmark_basis entries", source=src,
                               field="procrustes_landmark_basis")
    try:
        ids = np.asarray([int(i) for i, _ in found], np.int64)
        w = np.asarray([float(x) for _, x in found], np.float64)
    except ValueError as e:
        raise ModelFormatError(f"bad landmark_id/weight ({e})", source=src,
                               field="procrustes_landmark_basis") from e
    if ids.min() < 0 or (n_vertices is not None and ids.max() >= n_vertices):
        raise ModelFormatError(f"landmark ids must lie in [0, {n_vertices})", source=src,
                               field="procrustes_landmark_basis")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ModelFormatError("weights must be finite and non-negative", source=src,
                               field="procrustes_landmark_basis")
    return ids.astype(np.int32), w.astype(np.float32)


def procrustes_weight_array(ids: np.ndarray, weights: np.ndarray, n_vertices: int) -> np.ndarray:
    """Dense (V,) float32 weights: ``weights`` at ``ids``, 0 elsewhere."""
    out = np.zeros(n_vertices, np.float32)
    out[np.asarray(ids)] = weights
    return out


def load_mediapipe(path: PathLike | None = None, *, iris: bool = False,
                   procrustes: PathLike | None | bool = True) -> MorphableModel:
    """Load MediaPipe's canonical face mesh as a template-only model (0 identity modes), in mm.

    Args:
      path: the OBJ; None: ``canonical_face_model.obj`` (or ``face_model_with_iris.obj`` with
        ``iris=True``) under ``$JAXFACE_DATA/mediapipe-face-geometry``.
      iris: choose the 478-vertex file when ``path`` is None.
      procrustes: the metadata ``.pbtxt`` for the ``"procrustes"`` region; True: the staged copy
        next to the OBJ (skipped if absent); False/None: no region.

    Returns:
      MorphableModel with V = 468 (478), identity_basis (0, V, 3), uv/uv_triangles, landmark set
      ``f"mediapipe{V}"`` (vertex i = Face Mesh landmark i) and optionally region
      ``"procrustes"``.

    Raises:
      ModelFormatError: malformed OBJ (a MeshFormatError) or a mesh that is not MediaPipe's
        (vertex count not 468/478).
    """
    from jaxface.mesh.io import read_obj

    if path is None:
        path = data_path(FOLDER, "face_model_with_iris.obj" if iris else
                         "canonical_face_model.obj")
    p = F.require_file(path)
    src = str(p)
    try:
        mesh = read_obj(p)
    except MeshFormatError:
        raise
    v = int(mesh.vertices.shape[0])
    if v not in (468, 478):
        raise ModelFormatError(f"expected 468 or 478 vertices (MediaPipe canonical face), "
                               f"found {v}", source=src, field="v")
    verts = np.asarray(mesh.vertices, np.float64) * CENTIMETRE_TO_MM
    tri = np.asarray(mesh.triangles, np.int64)
    tri, flipped = F.orient_outward(verts, tri)
    uv = uvt = None
    if mesh.uv is not None and mesh.uv_triangles is not None:
        uv = np.asarray(mesh.uv)
        uvt = np.asarray(mesh.uv_triangles)
        if flipped:
            uvt = uvt[:, [0, 2, 1]]
    regions = {}
    pb = procrustes
    if pb is True:
        cand = p.parent / "geometry_pipeline_metadata_landmarks.pbtxt"
        pb = cand if cand.is_file() else None
    if pb:
        ids, _ = load_mediapipe_procrustes_weights(pb, n_vertices=v)
        mask = np.zeros(v, bool)
        mask[ids] = True
        regions["procrustes"] = mask
    return make_model(mean=verts, identity_basis=np.zeros((0, v, 3), np.float32),
                      triangles=tri, uv=uv, uv_triangles=uvt,
                      landmarks={f"mediapipe{v}": LandmarkSet.from_vertex_ids(np.arange(v))},
                      regions=regions, units="mm", name=f"mediapipe{v}", source=src)


def mirror_permutation(canonical: Any = None, tolerance_mm: float = 0.5) -> np.ndarray:
    """(468,) left-right twin of every MediaPipe Face Mesh point: ``perm[i]`` is the canonical
    vertex nearest to vertex ``i`` mirrored at x = 0 (the canonical mesh is symmetric), so
    point ``i`` of a face is point ``perm[i]`` of its mirror image.

    Args:
      canonical: (468, 3) or (478, 3) canonical vertices (mm); None loads
        ``canonical_face_model.obj`` from ``$JAXFACE_DATA``.
      tolerance_mm: the largest allowed distance of a mirrored vertex to its twin.

    Raises:
      ModelFormatError: the mesh is not mirror-symmetric within ``tolerance_mm`` or the map is
        not an involution.
    """
    v = np.asarray(load_mediapipe(procrustes=False).mean if canonical is None else canonical,
                   np.float64)[:468]
    mirrored = v * np.array([-1.0, 1.0, 1.0])
    d2 = np.sum((mirrored[:, None, :] - v[None, :, :]) ** 2, axis=-1)
    perm = np.argmin(d2, axis=1)
    err = float(np.sqrt(d2[np.arange(len(v)), perm].max()))
    if err > tolerance_mm or not np.array_equal(perm[perm], np.arange(len(v))):
        raise ModelFormatError(f"canonical mesh is not left-right symmetric (largest mirror "
                               f"error {err:.3g} mm)", field="v")
    return perm.astype(np.int64)
