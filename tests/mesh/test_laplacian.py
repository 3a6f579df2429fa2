"""Cotangent / uniform Laplacians, sparse and jit forms, mass matrices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.mesh import (
    cotangent_laplacian,
    cotangent_weights,
    laplacian_apply,
    laplacian_matrix,
    mass_matrix,
    uniform_laplacian,
    uniform_weights,
    vertex_adjacency,
    vertex_areas,
)

from .meshes import grid_mesh, octahedron


def _bumpy_octahedron(rng):
    v, t = octahedron()
    return v * (1 + 0.3 * rng.random((len(v), 1))), t


def _jit_lap(v, t, x):
    @jax.jit
    def f(v, x):
        ei, ej, w = cotangent_weights(v, t)
        return laplacian_apply(ei, ej, w, x)

    return np.asarray(f(jnp.asarray(v, jnp.float32), jnp.asarray(x, jnp.float32)))


def test_single_equilateral_triangle_values():
    v = np.array([[0, 0, 0], [1, 0, 0], [0.5, np.sqrt(3) / 2, 0]])
    lap = cotangent_laplacian(v, [[0, 1, 2]]).toarray()
    c = 1 / (2 * np.sqrt(3))  # cot(60 deg) / 2
    np.testing.assert_allclose(lap, [[2 * c, -c, -c], [-c, 2 * c, -c], [-c, -c, 2 * c]])


def test_regular_grid_interior_row():
    v, t = grid_mesh(3)
    lap = cotangent_laplacian(v, t).toarray()
    # Centre vertex 4 of a 3x3 grid: axis edges get (cot45 + cot45)/2 = 1, diagonals 0.
    np.testing.assert_allclose(lap[4], [0, -1, 0, -1, 4, -1, 0, -1, 0], atol=1e-12)


def test_constant_kernel_and_symmetry(rng):
    v, t = _bumpy_octahedron(rng)
    lap = cotangent_laplacian(v, t)
    np.testing.assert_allclose(lap @ np.ones(len(v)), 0, atol=1e-12)
    assert abs(lap - lap.T).max() < 1e-12
    np.testing.assert_allclose(_jit_lap(v, t, np.ones((len(v), 3))), 0, atol=1e-5)


def test_linear_precision_on_planar_mesh():
    v, t = grid_mesh(5, jitter=0.3, seed=1)
    lap = cotangent_laplacian(v, t)
    interior = np.setdiff1d(np.arange(len(v)), np.unique(np.r_[0:5, 20:25, 0:25:5, 4:25:5]))
    f = 2.0 * v[:, 0] - 3.0 * v[:, 1] + 0.5
    np.testing.assert_allclose((lap @ f)[interior], 0, atol=1e-10)
    np.testing.assert_allclose((lap @ v)[interior], 0, atol=1e-10)
    assert np.abs((lap @ f)[[0, 24]]).max() > 1e-3  # boundary rows are not zero
    np.testing.assert_allclose(_jit_lap(v, t, v)[interior], 0, atol=1e-4)


def test_positive_semidefinite(rng):
    for v, t in (_bumpy_octahedron(rng), grid_mesh(5, jitter=0.45, seed=3)):
        lap = cotangent_laplacian(v, t).toarray()
        ev = np.linalg.eigvalsh(lap)
        assert ev.min() > -1e-10
        assert np.sum(ev < 1e-9) == 1  # connected: only the constants in the kernel


def test_sparse_and_jit_forms_agree(rng):
    v, t = _bumpy_octahedron(rng)
    v = v + 0.05 * rng.normal(size=v.shape)
    x = rng.normal(size=(len(v), 2))
    lap = cotangent_laplacian(v, t)
    np.testing.assert_allclose(_jit_lap(v, t, x), lap @ x, rtol=1e-5, atol=1e-5)
    ei, ej, w = jax.jit(lambda p: cotangent_weights(p, t))(jnp.asarray(v, jnp.float32))
    np.testing.assert_allclose(
        laplacian_matrix(ei, ej, w, len(v)).toarray(), lap.toarray(), atol=1e-6
    )


def test_jit_form_grad_vs_finite_differences(rng):
    v0, t = _bumpy_octahedron(rng)
    x = rng.normal(size=(len(v0), 3))
    with jax.enable_x64(True):

        def energy(p):  # trace(x^T L(p) x) with the vertex positions as the variable
            ei, ej, w = cotangent_weights(p, t)
            return jnp.sum(x * laplacian_apply(ei, ej, w, jnp.asarray(x)))

        g = np.asarray(jax.jit(jax.grad(energy))(jnp.asarray(v0)))
    assert g.dtype == np.float64

    def energy_np(p):  # central differences of the independent sparse (host) implementation
        return np.sum(x * (cotangent_laplacian(p, t) @ x))

    eps = 1e-6
    fd = np.zeros_like(v0)
    for i in range(v0.shape[0]):
        for k in range(3):
            d = np.zeros_like(v0)
            d[i, k] = eps
            fd[i, k] = (energy_np(v0 + d) - energy_np(v0 - d)) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_degenerate_triangles_are_finite():
    # zero-area (repeated vertex), collinear (needle) and a zero-length edge
    v = jnp.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0], [0, 1, 0.0]])
    t = np.array([[0, 1, 3], [0, 1, 2], [1, 1, 3], [3, 4, 1]])

    def loss(q):
        w = cotangent_weights(q, t)[2]
        return jnp.sum(w**2) + jnp.sum(vertex_areas(q, t, "voronoi") ** 2)

    @jax.jit
    def run(p):
        return cotangent_weights(p, t)[2], vertex_areas(p, t, "voronoi"), jax.grad(loss)(p)

    w, areas, g = run(v)
    assert np.all(np.isfinite(w)) and np.all(np.isfinite(areas)) and np.all(np.isfinite(g))
    assert np.abs(w).max() <= 0.5 / 1e-4 * (1 + 1e-6)  # |cot| clamped at 1/min_sin
    assert np.abs(w).max() > 1e3  # the needle triangle really hits the clamp
    lap = cotangent_laplacian(np.asarray(v), t)
    assert np.all(np.isfinite(lap.toarray()))
    np.testing.assert_allclose(lap.toarray(), laplacian_matrix(*_np_weights(v, t)).toarray(),
                               rtol=1e-4)  # fmt: skip


def _np_weights(v, t):
    ei, ej, w = jax.jit(lambda p: cotangent_weights(p, t))(jnp.asarray(v, jnp.float32))
    return ei, ej, w, len(v)


def test_uniform_laplacian():
    _, t = grid_mesh(4)
    lap = uniform_laplacian(t)
    adj = vertex_adjacency(t)
    np.testing.assert_allclose(lap.diagonal(), adj.degree)
    np.testing.assert_allclose(lap @ np.ones(16), 0)
    assert abs(lap - lap.T).max() == 0
    assert lap[5, 6] == -1 and lap[0, 15] == 0
    ei, ej, w = uniform_weights(t)
    x = np.arange(16.0)[:, None] ** 2
    got = jax.jit(laplacian_apply)(ei, ej, jnp.asarray(w), jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(got, lap @ x, rtol=1e-6)
    big = uniform_laplacian(t, n_vertices=17)
    assert big.shape == (17, 17) and big[16, 16] == 0


def test_laplacian_apply_vmap_over_signals(rng):
    v, t = grid_mesh(3)
    lap = cotangent_laplacian(v, t)
    xs = rng.normal(size=(4, 9))

    @jax.jit
    def apply_all(p, xs):
        ei, ej, w = cotangent_weights(p, t)
        return jax.vmap(lambda x: laplacian_apply(ei, ej, w, x))(xs)

    got = apply_all(jnp.asarray(v, jnp.float32), jnp.asarray(xs, jnp.float32))
    np.testing.assert_allclose(got, (lap @ xs.T).T, atol=1e-5)


def test_mass_matrices(rng):
    # A jittered grid (obtuse and acute triangles) plus two lone triangles: a right isoceles one
    # (legs 1; circumcentre on the hypotenuse, Voronoi areas 1/4, 1/8, 1/8) and one obtuse at
    # its third corner (area 1; mixed areas 1/4, 1/4, 1/2).
    v, t = grid_mesh(4, jitter=0.45, seed=2)
    right = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0.0]]) + 10
    obtuse = np.array([[0, 0, 0], [4, 0, 0], [2, 0.5, 0.0]]) + 20
    v = np.concatenate([v, right, obtuse])
    t = np.concatenate([t, [[16, 17, 18], [19, 20, 21]]])
    areas = jax.jit(lambda p: (vertex_areas(p, t, "barycentric"), vertex_areas(p, t, "voronoi")))(
        jnp.asarray(v, jnp.float32)
    )
    for kind, jit_area in zip(("barycentric", "voronoi"), areas, strict=True):
        m = mass_matrix(v, t, kind)
        assert m.shape == (22, 22) and m.nnz == 22
        # the jitter moves interior vertices only, inside the 3x3 square
        np.testing.assert_allclose(m.diagonal()[:16].sum(), 9.0, rtol=1e-10)
        assert m.diagonal().min() > 0
        np.testing.assert_allclose(jit_area, m.diagonal(), rtol=1e-5)  # jax and numpy agree
    vor = mass_matrix(v, t, "voronoi").diagonal()
    np.testing.assert_allclose(vor[16:], [0.25, 0.125, 0.125, 0.25, 0.25, 0.5], rtol=1e-12)
    bary = mass_matrix(v, t, "barycentric").diagonal()
    np.testing.assert_allclose(bary[16:], [1 / 6] * 3 + [1 / 3] * 3, rtol=1e-12)
    assert not np.allclose(vor[:16], bary[:16])
    with pytest.raises(ValueError, match="kind"):
        vertex_areas(jnp.asarray(right), [[0, 1, 2]], "cotan")
    with pytest.raises(ValueError, match="kind"):
        mass_matrix(right, [[0, 1, 2]], "cotan")


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"verts must have shape \(V, 3\)"):
        cotangent_laplacian(np.zeros((3, 2)), [[0, 1, 2]])
    with pytest.raises(ValueError, match="n_vertices=3"):
        cotangent_laplacian(np.zeros((3, 3)), [[0, 1, 3]])
    with pytest.raises(ValueError, match="out of range"):
        laplacian_matrix([0], [5], [1.0], 3)
