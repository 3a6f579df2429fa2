"""Edges, adjacency, boundaries and components (host-side NumPy)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from jaxface.mesh import (
    boundary_edges,
    boundary_loops,
    boundary_vertices,
    connected_components,
    edges,
    face_adjacency,
    triangle_edge_ids,
    vertex_adjacency,
    vertex_faces,
)

from .meshes import grid_mesh, octahedron


def test_edges_counts_euler():
    v, t = octahedron()
    e = edges(t)
    assert e.shape == (12, 2)
    assert np.all(e[:, 0] < e[:, 1])
    assert len(v) - len(e) + len(t) == 2  # Euler characteristic of a sphere
    _, g = grid_mesh(4)
    # 4x4 grid: 3*4 horizontal + 3*4 vertical + 9 diagonals
    assert edges(g).shape == (33, 2)
    assert np.all(np.diff(edges(g)[:, 0]) >= 0)


def test_triangle_edge_ids_consistent():
    _, t = grid_mesh(3)
    e, te = triangle_edge_ids(t)
    for tri, ids in zip(t, te, strict=True):
        for k in range(3):
            a, b = tri[k], tri[(k + 1) % 3]
            np.testing.assert_array_equal(e[ids[k]], [min(a, b), max(a, b)])


def test_vertex_adjacency_csr_and_padded():
    _, t = octahedron()
    adj = vertex_adjacency(t, n_vertices=7)  # vertex 6 isolated
    assert adj.padded.shape == (7, 4)
    np.testing.assert_array_equal(adj.degree, [4, 4, 4, 4, 4, 4, 0])
    np.testing.assert_array_equal(adj.padded[6], [-1, -1, -1, -1])
    np.testing.assert_array_equal(adj.indices[adj.indptr[0] : adj.indptr[1]], [2, 3, 4, 5])
    np.testing.assert_array_equal(adj.padded[4], [0, 1, 2, 3])
    # symmetric
    pairs = {(i, int(j)) for i in range(7) for j in adj.padded[i] if j >= 0}
    assert all((j, i) in pairs for i, j in pairs)
    with pytest.raises(ValueError, match="n_vertices=3"):
        vertex_adjacency(t, n_vertices=3)


def test_padded_adjacency_inside_jit(rng):
    _, t = grid_mesh(4)
    adj = vertex_adjacency(t)
    assert adj.padded.dtype == np.int32
    x = rng.normal(size=16).astype(np.float32)

    @jax.jit
    def neighbour_sum(x, nbr):
        valid = nbr >= 0
        return jnp.sum(jnp.where(valid, x[jnp.where(valid, nbr, 0)], 0.0), axis=1)

    a = sp.csr_matrix((np.ones(adj.indices.size), adj.indices, adj.indptr), shape=(16, 16))
    np.testing.assert_allclose(neighbour_sum(x, adj.padded), a @ x, rtol=1e-5, atol=1e-6)


def test_vertex_adjacency_grid_degrees():
    _, t = grid_mesh(4)
    adj = vertex_adjacency(t)
    # corner (0,0): right, up, diagonal -> 3; opposite corner 15 likewise; corners 3, 12 -> 2.
    assert adj.degree[0] == 3 and adj.degree[15] == 3 and adj.degree[3] == 2
    assert adj.degree[5] == 6  # interior
    assert adj.padded.shape[1] == 6


def test_vertex_faces():
    _, t = octahedron()
    vf = vertex_faces(t)
    assert vf.padded.shape == (6, 4)
    for v in range(6):
        expected = np.flatnonzero((t == v).any(axis=1))
        np.testing.assert_array_equal(vf.padded[v], expected)


def test_face_adjacency_closed_and_boundary():
    _, t = octahedron()
    fa = face_adjacency(t)
    assert np.all(fa >= 0)
    for f in range(len(t)):
        for k in range(3):
            g = fa[f, k]
            a, b = t[f, k], t[f, (k + 1) % 3]
            assert g != f and a in t[g] and b in t[g]
    _, g = grid_mesh(2)  # two triangles sharing the diagonal (0, 3)
    fa = face_adjacency(g)
    np.testing.assert_array_equal(fa, [[-1, -1, 1], [0, -1, -1]])


def test_face_adjacency_non_manifold_edge():
    t = np.array([[0, 1, 2], [1, 0, 3], [0, 1, 4]])
    fa = face_adjacency(t)
    # edge (0,1) is shared by all three faces: each sees the next one cyclically
    np.testing.assert_array_equal(fa[:, 0], [1, 2, 0])


def test_boundary_edges_and_vertices():
    _, t = octahedron()
    assert boundary_edges(t).shape == (0, 2)
    assert boundary_loops(t) == []
    _, g = grid_mesh(4)
    be = boundary_edges(g)
    assert be.shape == (12, 2)
    bv = boundary_vertices(g)
    np.testing.assert_array_equal(bv, [0, 1, 2, 3, 4, 7, 8, 11, 12, 13, 14, 15])
    loops = boundary_loops(g)
    assert len(loops) == 1 and sorted(loops[0].tolist()) == bv.tolist()
    # oriented like the CCW triangles: along the bottom row x increases
    assert (0, 1) in {tuple(e) for e in be.tolist()}


def test_boundary_loops_two_holes():
    # An annulus: the grid without its centre cell has an outer and an inner boundary.
    _, g = grid_mesh(4)
    centre = 2 * (1 * 3 + 1)  # cell (1,1) -> triangles 8, 9
    keep = np.ones(len(g), bool)
    keep[[centre, centre + 1]] = False
    loops = boundary_loops(g[keep])
    assert sorted(len(lp) for lp in loops) == [4, 12]
    inner = next(lp for lp in loops if len(lp) == 4)
    assert sorted(inner.tolist()) == [5, 6, 9, 10]


def test_connected_components():
    _, t = octahedron()
    t2 = np.concatenate([t, t + 6])
    n, labels = connected_components(t2, n_vertices=13)
    assert n == 3
    np.testing.assert_array_equal(labels, [0] * 6 + [1] * 6 + [2])


def test_bad_triangles_raise():
    with pytest.raises(ValueError, match=r"shape \(T, 3\)"):
        edges(np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="negative"):
        edges(np.array([[0, -1, 2]]))


def test_mediapipe_canonical_face_is_a_disk(data_dir):
    from jaxface.mesh import read_obj

    m = read_obj(data_dir / "mediapipe-face-geometry" / "canonical_face_model.obj")
    e = edges(m.triangles)
    assert m.n_vertices - len(e) + m.n_triangles == 1  # Euler characteristic of a disk
    assert connected_components(m.triangles, m.n_vertices)[0] == 1
    loops = boundary_loops(m.triangles)
    assert len(loops) == 1 and len(loops[0]) == 36  # the face oval
    assert (face_adjacency(m.triangles) < 0).sum() == 36
