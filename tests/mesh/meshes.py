"""Small meshes shared by the mesh tests (plain helpers, no fixtures)."""

from __future__ import annotations

import numpy as np


def grid_mesh(n: int = 4, jitter: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An n x n vertex planar grid in z = 0 (unit spacing), two CCW triangles per cell."""
    ys, xs = np.meshgrid(np.arange(n, dtype=np.float64), np.arange(n, dtype=np.float64),
                         indexing="ij")  # fmt: skip
    v = np.stack([xs.ravel(), ys.ravel(), np.zeros(n * n)], axis=1)
    if jitter:
        rng = np.random.default_rng(seed)
        interior = (xs.ravel() > 0) & (xs.ravel() < n - 1) & (ys.ravel() > 0) & (ys.ravel() < n - 1)
        v[interior, :2] += rng.uniform(-jitter, jitter, size=(int(interior.sum()), 2))
    tris = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j + 1, (i + 1) * n + j
            tris += [[a, b, c], [a, c, d]]
    return v, np.asarray(tris, np.int32)


def octahedron() -> tuple[np.ndarray, np.ndarray]:
    """A closed unit octahedron with outward CCW faces."""
    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float64)
    t = np.array(
        [[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]],
        np.int32,
    )
    return v, t


def np_vertex_normals(v: np.ndarray, t: np.ndarray, unit: bool = True) -> np.ndarray:
    """Float64 NumPy reference: area-weighted vertex normals (zero where undefined)."""
    v = np.asarray(v, np.float64)
    fn = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    acc = np.zeros_like(v)
    for k in range(3):
        np.add.at(acc, t[:, k], fn)
    if not unit:
        return acc
    norm = np.linalg.norm(acc, axis=1, keepdims=True)
    return np.where(norm > 0, acc / np.where(norm > 0, norm, 1), 0.0)
