"""Face / vertex normals: values, NaN safety, jit / vmap / grad."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.mesh import face_areas, face_normals, safe_normalize, vertex_normals

from .meshes import np_vertex_normals, octahedron


def test_face_normals_octahedron():
    v, t = octahedron()
    n, raw, area = jax.jit(
        lambda x: (face_normals(x, t), face_normals(x, t, unit=False), face_areas(x, t))
    )(jnp.asarray(v, jnp.float32))
    centroids = v[t].mean(axis=1)
    expected = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    np.testing.assert_allclose(n, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), 2 * np.sqrt(3) / 2, rtol=1e-6)
    np.testing.assert_allclose(area, np.sqrt(3) / 2, rtol=1e-6)


def test_vertex_normals_area_weighted():
    # Two triangles sharing vertex 0: one large in z=0, one small in x=0.
    v = jnp.array([[0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, 1], [0, 1, 0.0]])
    t = np.array([[0, 1, 2], [0, 3, 4]])
    n, nu = jax.jit(lambda x: (vertex_normals(x, t, unit=False), vertex_normals(x, t)))(v)
    np.testing.assert_allclose(n[0], [-1.0, 0.0, 16.0], atol=1e-6)  # 2*area weights
    np.testing.assert_allclose(nu[0], np.array([-1.0, 0, 16]) / np.sqrt(257), rtol=1e-6)
    np.testing.assert_allclose(nu[1], [0, 0, 1], atol=1e-7)


def test_vertex_normals_closed_mesh_are_radial():
    v, t = octahedron()
    n = jax.jit(vertex_normals)(jnp.asarray(v), t)
    np.testing.assert_allclose(n, v, atol=1e-6)


def test_degenerate_faces_and_isolated_vertices_are_finite():
    # face 1 has zero area (repeated vertex), vertex 4 is isolated, face 2 is collinear.
    v = jnp.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0], [5, 5, 5.0]])
    t = np.array([[0, 1, 2], [1, 1, 2], [0, 1, 3]])

    def loss(x):
        return (
            jnp.sum(vertex_normals(x, t) ** 2)
            + jnp.sum(face_normals(x, t))
            + jnp.sum(face_areas(x, t))
            + jnp.sum(safe_normalize(x[4] - x[4]))
        )

    @jax.jit
    def run(x):
        return vertex_normals(x, t), face_normals(x, t), jax.grad(loss)(x)

    n, fn, g = (np.asarray(a) for a in run(v))
    assert np.all(np.isfinite(n)) and np.all(np.isfinite(g))
    np.testing.assert_array_equal(n[4], 0.0)
    np.testing.assert_array_equal(fn[1], 0.0)
    np.testing.assert_array_equal(g[4], 0.0)


def test_vertex_normals_grad_vs_finite_differences(rng):
    v0, t = octahedron()
    v0 = v0 + 0.1 * rng.normal(size=v0.shape)
    w = rng.normal(size=v0.shape)
    with jax.enable_x64(True):
        g = jax.jit(jax.grad(lambda x: jnp.sum(vertex_normals(x, t) * w)))(jnp.asarray(v0))
        g = np.asarray(g)
    assert g.dtype == np.float64
    # central differences of an independent float64 NumPy implementation
    eps = 1e-6
    fd = np.zeros_like(v0)
    for i in range(v0.shape[0]):
        for k in range(3):
            d = np.zeros_like(v0)
            d[i, k] = eps
            fd[i, k] = np.sum((np_vertex_normals(v0 + d, t) - np_vertex_normals(v0 - d, t)) * w)
    np.testing.assert_allclose(g, fd / (2 * eps), rtol=1e-6, atol=1e-8)


def test_vmap_and_batch_dims_match_loop(rng):
    v, t = octahedron()
    batch = jnp.asarray(v[None] + 0.1 * rng.normal(size=(4,) + v.shape), jnp.float32)

    @jax.jit
    def run(b):
        return (
            jax.vmap(lambda x: vertex_normals(x, t))(b),
            vertex_normals(b, t),  # leading batch dim handled directly
            jax.vmap(lambda x: face_normals(x, t))(b),
        )

    vm, direct, fn = run(batch)
    for b in range(4):
        np.testing.assert_allclose(vm[b], np_vertex_normals(np.asarray(batch[b]), t), atol=1e-6)
    np.testing.assert_allclose(direct, vm, atol=1e-6)
    assert fn.shape == (4, t.shape[0], 3)
