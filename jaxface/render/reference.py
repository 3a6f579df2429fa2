"""Slow, obviously correct NumPy reference rasteriser (for tests only).

A plain loop over triangles in index order, each tested against the pixel centres of its bounding
box in float64 with a strict ``<`` depth test, so depth ties go to the smallest triangle id — the
same rule as :func:`jaxface.render.rasterize`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rasterize_reference"]


def rasterize_reference(
    screen_vertices: np.ndarray,
    triangles: np.ndarray,
    image_size: tuple[int, int],
    w: np.ndarray | None = None,
    cull_backfaces: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference z-buffer. Returns ``(triangle_id (H, W), barycentric (H, W, 3), depth (H, W))``.

    Same conventions as :func:`jaxface.render.rasterize`: pixel centres at ``i + 0.5``, inclusive
    edges, zero-area triangles ignored, perspective-correct barycentrics ``∝ e_i / w_i``.
    """
    v = np.asarray(screen_vertices, np.float64)
    tri = np.asarray(triangles, np.int64)
    h, wd = image_size
    ids = np.full((h, wd), -1, np.int64)
    zbuf = np.full((h, wd), np.inf)
    bary = np.zeros((h, wd, 3))
    for t, (a, b, c) in enumerate(tri):
        (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = v[a], v[b], v[c]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if area == 0 or not np.isfinite(area) or (cull_backfaces and area > 0):
            continue
        j0 = max(int(np.ceil(min(x0, x1, x2) - 0.5)), 0)
        j1 = min(int(np.floor(max(x0, x1, x2) - 0.5)), wd - 1)
        i0 = max(int(np.ceil(min(y0, y1, y2) - 0.5)), 0)
        i1 = min(int(np.floor(max(y0, y1, y2) - 0.5)), h - 1)
        for i in range(i0, i1 + 1):
            py = i + 0.5
            for j in range(j0, j1 + 1):
                px = j + 0.5
                e0 = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
                e1 = (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)
                e2 = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
                e = np.array([e0, e1, e2]) * np.sign(area)
                if (e < 0).any():
                    continue
                if w is not None:
                    e = e / np.asarray(w, np.float64)[[a, b, c]]
                bc = e / e.sum()
                z = bc @ np.array([z0, z1, z2])
                if z < zbuf[i, j]:
                    zbuf[i, j] = z
                    ids[i, j] = t
                    bary[i, j] = bc
    return ids.astype(np.int32), bary, zbuf


def fit_to_image(
    vertices: np.ndarray, image_size: tuple[int, int], fill: float = 0.9
) -> np.ndarray:
    """Orthographic screen vertices for tests and benchmarks: ``(V, 3)`` model-space points
    (y up, facing +z) scaled so that their x/y extent fills ``fill`` of the image, y flipped to
    point down, depth ``-z`` (so the part facing +z is nearest)."""
    v = np.asarray(vertices, np.float64)
    h, wd = image_size
    lo, hi = v.min(0), v.max(0)
    c = (lo + hi) / 2
    s = fill * min(wd / max(hi[0] - lo[0], 1e-12), h / max(hi[1] - lo[1], 1e-12))
    out = np.stack([(v[:, 0] - c[0]) * s + wd / 2, -(v[:, 1] - c[1]) * s + h / 2, -v[:, 2]], 1)
    return out.astype(np.float32)
