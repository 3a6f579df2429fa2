"""Dense landmark correspondence between MediaPipe's canonical face mesh and a morphable model.

MediaPipe Face Mesh reports 468 points; point i is vertex i of MediaPipe's canonical face mesh
(``$JAXFACE_DATA/mediapipe-face-geometry``, :func:`jaxface.models.mediapipe.load_mediapipe`).
To fit a morphable model directly on those points, every canonical vertex needs a point on the
model's surface. :func:`mediapipe_correspondence` computes one by registering the canonical mesh
to the model (host-side NumPy, float64, deterministic):

1. A similarity (Umeyama) maps the canonical vertices of the 51 inner iBUG-68 landmarks
   (``jaxface.detect.mapping.MEDIAPIPE_TO_IBUG68[17:]``) onto the model's own iBUG-68 landmarks
   on its mean shape.
2. The model's identity coefficients (a regularised linear least-squares fit, prior
   ``N(0, identity_std^2)``) and the similarity are then alternated so that the model's face
   takes the canonical face's proportions: first on the 51 landmark pairs, then on all 468
   vertices against their nearest points on the current model surface (non-rigid ICP).
3. Each transformed canonical vertex is projected onto the nearest point of the fitted surface
   (restricted to a region, by default ``"face"``); its triangle and barycentric coordinates
   define the landmark on the model's topology, so it moves with the model's identity and
   expression like any other landmark.

The result carries the distance of every canonical vertex to the fitted surface (mm), which
marks points with no good counterpart on the model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxface.models.morphable import LandmarkSet, MorphableModel

__all__ = [
    "MediaPipeCorrespondence",
    "closest_points_on_mesh",
    "mediapipe_correspondence",
    "similarity_fit",
    "with_mediapipe_landmarks",
]


@dataclasses.dataclass(frozen=True)
class MediaPipeCorrespondence:
    """MediaPipe canonical vertices located on a model's surface (host-side NumPy).

    Attributes:
      face_ids: (N,) int32 model triangle of each canonical vertex.
      barycentric: (N, 3) float32 weights on that triangle's corners (sum 1).
      distance_mm: (N,) float32 distance of the registered canonical vertex to the surface.
      rms_mm: RMS of ``distance_mm``.
    """

    face_ids: np.ndarray
    barycentric: np.ndarray
    distance_mm: np.ndarray
    rms_mm: float

    def landmark_set(self, model: MorphableModel, max_distance_mm: float | None = None
                     ) -> LandmarkSet:
        """The (N,) LandmarkSet on ``model``'s triangles; vertices farther than
        ``max_distance_mm`` from the surface are marked not valid (fits ignore them)."""
        tri = np.asarray(model.triangles, np.int32)
        lm = LandmarkSet.from_barycentric(tri, self.face_ids, self.barycentric)
        if max_distance_mm is None:
            return lm
        return dataclasses.replace(lm, valid=np.asarray(self.distance_mm <= max_distance_mm))


def closest_points_on_mesh(points: Any, vertices: Any, triangles: Any, chunk: int = 32
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest surface point of a triangle mesh for each query point (exact, brute force).

    Args:
      points: (N, 3) query points.
      vertices: (V, 3) mesh vertices.
      triangles: (T, 3) vertex ids.
      chunk: query points per vectorised block (memory ~ chunk * T * 80 bytes).

    Returns:
      (face_ids (N,) int64, barycentric (N, 3) float64, distance (N,) float64); ties go to the
      lowest triangle id.
    """
    p = np.asarray(points, np.float64).reshape(-1, 3)
    v = np.asarray(vertices, np.float64)
    t = np.asarray(triangles, np.int64).reshape(-1, 3)
    a, b, c = v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]
    centre = (a + b + c) / 3.0
    radius = np.sqrt(np.max(np.stack([np.sum((x - centre) ** 2, -1) for x in (a, b, c)]), 0))
    faces = np.zeros(len(p), np.int64)
    bary = np.zeros((len(p), 3))
    dist = np.zeros(len(p))
    for s in range(0, len(p), chunk):
        q = p[s:s + chunk, None, :]  # (n, 1, 3)
        # exact pruning: a triangle whose bounding sphere lies farther than some triangle's
        # centre (a point on that triangle) cannot hold the nearest point
        dc = np.sqrt(np.sum((q - centre) ** 2, -1))  # (n, T)
        keep = np.flatnonzero(np.any(dc - radius <= dc.min(1, keepdims=True), axis=0))
        ta, tb, tc = a[keep], b[keep], c[keep]
        w = _closest_barycentric(q, ta, tb, tc, tb - ta, tc - ta)  # (n, T', 3)
        closest = w[..., 0:1] * ta + w[..., 1:2] * tb + w[..., 2:3] * tc
        d2 = np.sum((closest - q) ** 2, axis=-1)
        k = np.argmin(d2, axis=1)
        rows = np.arange(len(k))
        faces[s:s + chunk] = keep[k]
        bary[s:s + chunk] = w[rows, k]
        dist[s:s + chunk] = np.sqrt(d2[rows, k])
    return faces, bary, dist


def _closest_barycentric(p, a, b, c, ab, ac):
    """Barycentric coordinates of the closest point of triangles (a, b, c) to ``p`` (Ericson,
    Real-Time Collision Detection, 5.1.5), broadcast over leading axes."""
    def dot(x, y):
        return np.sum(x * y, axis=-1)

    ap, bp, cp = p - a, p - b, p - c
    d1, d2 = dot(ab, ap), dot(ac, ap)
    d3, d4 = dot(ab, bp), dot(ac, bp)
    d5, d6 = dot(ab, cp), dot(ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2

    def safe(x):
        return np.where(np.abs(x) > 1e-300, x, 1.0)

    tiny = np.zeros_like(d1)
    one = np.ones_like(d1)
    den = safe(va + vb + vc)
    v_in, w_in = vb / den, vc / den
    inside = np.stack([1.0 - v_in - w_in, v_in, w_in], -1)
    v_ab = d1 / safe(d1 - d3)
    on_ab = np.stack([1.0 - v_ab, v_ab, tiny], -1)
    w_ac = d2 / safe(d2 - d6)
    on_ac = np.stack([1.0 - w_ac, tiny, w_ac], -1)
    w_bc = (d4 - d3) / safe((d4 - d3) + (d5 - d6))
    on_bc = np.stack([tiny, 1.0 - w_bc, w_bc], -1)
    at_a = np.stack([one, tiny, tiny], -1)
    at_b = np.stack([tiny, one, tiny], -1)
    at_c = np.stack([tiny, tiny, one], -1)
    conds = [(d1 <= 0) & (d2 <= 0), (d3 >= 0) & (d4 <= d3), (vc <= 0) & (d1 >= 0) & (d3 <= 0),
             (d6 >= 0) & (d5 <= d6), (vb <= 0) & (d2 >= 0) & (d6 <= 0),
             (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)]
    out = inside
    for cond, val in reversed(list(zip(conds, [at_a, at_b, on_ab, at_c, on_ac, on_bc],
                                       strict=True))):
        out = np.where(cond[..., None], val, out)
    return out


def similarity_fit(src: Any, dst: Any, weights: Any = None
                   ) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama, float64 NumPy): ``dst ~ s * src @ R.T + t``.

    Returns:
      (s, R (3, 3) with det +1, t (3,)).
    """
    x = np.asarray(src, np.float64)
    y = np.asarray(dst, np.float64)
    w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mx, my = w @ x, w @ y
    xc, yc = x - mx, y - my
    u, sv, vt = np.linalg.svd((yc * w[:, None]).T @ xc)
    fix = np.ones(3)
    fix[-1] = np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0
    r = (u * fix) @ vt
    s = float(np.sum(sv * fix) / (w @ np.sum(xc * xc, axis=1)))
    return s, r, my - s * r @ mx


def _region_triangles(model: MorphableModel, region: str | None) -> np.ndarray:
    tri = np.arange(int(np.shape(model.triangles)[0]))
    if region is None:
        return tri
    if region not in model.regions:
        raise KeyError(f"model {model.name!r} has no region {region!r}")
    mask = np.asarray(model.regions[region], bool)
    return tri[np.all(mask[np.asarray(model.triangles)], axis=1)]


def _identity_fit(basis: np.ndarray, std: np.ndarray, mean_pts: np.ndarray, target: np.ndarray,
                  reg: float) -> np.ndarray:
    """argmin_a ||mean_pts + a @ basis - target||^2 + reg * ||a / std||^2 ((K, P, 3) basis)."""
    b = basis.reshape(len(basis), -1)  # (K, 3P)
    lhs = b @ b.T + reg * np.diag(1.0 / std ** 2)
    rhs = b @ (target - mean_pts).reshape(-1)
    return np.linalg.solve(lhs, rhs)


def mediapipe_correspondence(model: MorphableModel, canonical: Any = None, *,
                             region: str | None = "face", anchor_set: str = "ibug68",
                             regularisation: float = 1.0, anchor_iterations: int = 5,
                             icp_iterations: int = 5) -> MediaPipeCorrespondence:
    """Locate MediaPipe's canonical face-mesh vertices on ``model``'s surface (see the module).

    Args:
      model: a model in mm with the landmark set ``anchor_set`` (iBUG-68 order) and, if given,
        the region ``region``.
      canonical: (468, 3) canonical vertices in mm (+y up, +z toward the viewer); None loads
        ``canonical_face_model.obj`` from ``$JAXFACE_DATA``.
      region: the model region whose triangles may receive canonical vertices (None: all).
      anchor_set: the model's iBUG-68 landmark set used for the initial registration.
      regularisation: weight of the identity prior ``||a / std||^2`` against squared mm.
      anchor_iterations, icp_iterations: alternations of similarity and identity on the 51
        landmark pairs, then on all vertices against their nearest surface points.

    Returns:
      MediaPipeCorrespondence on ``model``'s triangles.
    """
    from jaxface.detect.mapping import MEDIAPIPE_TO_IBUG68

    if canonical is None:
        from jaxface.models.mediapipe import load_mediapipe

        canonical = load_mediapipe(procrustes=False).mean
    mp = np.asarray(canonical, np.float64)[:468]
    if mp.shape != (468, 3):
        raise ValueError(f"canonical must be (468, 3), got {np.shape(canonical)}")
    mean = np.asarray(model.mean, np.float64)
    basis = np.asarray(model.identity_basis, np.float64)
    std = np.asarray(model.identity_std, np.float64)
    tri = np.asarray(model.triangles, np.int64)
    tris = _region_triangles(model, region)

    inner = np.arange(17, 68)
    lm = model.landmarks[anchor_set]
    lm_idx = np.asarray(lm.indices)[inner]
    lm_w = np.asarray(lm.weights, np.float64)[inner]
    src = mp[np.asarray(MEDIAPIPE_TO_IBUG68)[inner]]

    def gather(x, idx, w):  # (..., V, 3) at barycentric rows -> (..., P, 3)
        return np.einsum("pk,...pkc->...pc", w, x[..., idx, :])

    a = np.zeros(len(std))
    lm_mean, lm_basis = gather(mean, lm_idx, lm_w), gather(basis, lm_idx, lm_w)
    s, r, t = similarity_fit(src, lm_mean)
    for _ in range(anchor_iterations):
        target = s * src @ r.T + t
        a = _identity_fit(lm_basis, std, lm_mean, target, regularisation)
        s, r, t = similarity_fit(src, lm_mean + np.tensordot(a, lm_basis, 1))
    for _ in range(icp_iterations):
        verts = mean + np.tensordot(a, basis, 1)
        f, w, _ = closest_points_on_mesh(s * mp @ r.T + t, verts, tri[tris])
        idx = tri[tris[f]]
        p_mean, p_basis = gather(mean, idx, w), gather(basis, idx, w)
        a = _identity_fit(p_basis, std, p_mean, s * mp @ r.T + t, regularisation)
        s, r, t = similarity_fit(mp, p_mean + np.tensordot(a, p_basis, 1))
    verts = mean + np.tensordot(a, basis, 1)
    f, w, d = closest_points_on_mesh(s * mp @ r.T + t, verts, tri[tris])
    return MediaPipeCorrespondence(face_ids=tris[f].astype(np.int32),
                                   barycentric=w.astype(np.float32),
                                   distance_mm=d.astype(np.float32),
                                   rms_mm=float(np.sqrt(np.mean(d ** 2))))



def with_mediapipe_landmarks(model: MorphableModel,
                             correspondence: MediaPipeCorrespondence | None = None, *,
                             name: str = "mediapipe468",
                             combined: str = "ibug68+mediapipe468",
                             max_distance_mm: float | None = None) -> MorphableModel:
    """``model`` with MediaPipe's 468 points as landmark sets.

    Adds ``landmarks[name]`` (468 points, :meth:`MediaPipeCorrespondence.landmark_set`) and
    ``landmarks[combined]``: the model's iBUG-68 landmarks followed by the 468 points (536 rows),
    whose first 17 rows keep the iBUG-68 contour (``contours[combined]``), so that a fit on it
    slides the jawline like an iBUG-68 fit and its first 68 fitted points are iBUG-68.

    Args:
      model: a model with the ``"ibug68"`` landmark set (in mm).
      correspondence: from :func:`mediapipe_correspondence` (None: computed now, which reads
        MediaPipe's canonical mesh from ``$JAXFACE_DATA``, a few seconds).
      max_distance_mm: canonical vertices farther than this from the model surface are marked
        not valid (fits ignore them).
    """
    corr = mediapipe_correspondence(model) if correspondence is None else correspondence
    mp = corr.landmark_set(model, max_distance_mm)
    ib = model.landmarks["ibug68"]
    both = LandmarkSet(
        indices=np.concatenate([np.asarray(ib.indices), np.asarray(mp.indices)]).astype(np.int32),
        weights=np.concatenate([np.asarray(ib.weights), np.asarray(mp.weights)]
                               ).astype(np.float32),
        valid=None if ib.valid is None and mp.valid is None else np.concatenate(
            [np.asarray(ib.valid_mask()), np.asarray(mp.valid_mask())]))
    contours = dict(model.contours)
    if "ibug68" in model.contours:
        contours[combined] = model.contours["ibug68"]
    return dataclasses.replace(model, landmarks={**model.landmarks, name: mp, combined: both},
                               contours=contours)
