"""antialias(): topology, exact visibility, coverage, silhouette gradients vs finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.render import antialias, edge_neighbors, rasterize

F1 = np.array([[0, 1, 2]], np.int32)
FG = jnp.array([1.0, 0.5, 0.2])
BG = jnp.array([0.0, 0.1, 0.3])


@jax.jit
def _render_jit(v):
    return _render(v)


def _render(v, f=F1, size=(32, 32)):
    fr = rasterize(v, f, size)
    col = jnp.where(fr.mask[..., None], FG, BG)
    return antialias(col, fr, v, f), fr, col


def test_edge_neighbors():
    f = np.array([[0, 1, 2], [2, 1, 3], [3, 4, 2]], np.int32)
    nb = edge_neighbors(f)
    # triangle 0: edge opposite vertex 0 is (1, 2), shared with triangle 1
    np.testing.assert_array_equal(nb[0], [1, -1, -1])
    np.testing.assert_array_equal(nb[1], [-1, 2, 0])  # edge (1, 3) is a boundary
    assert nb[2].tolist().count(1) == 1


def test_only_silhouette_pixels_change_and_coverage_matches_area():
    v = jnp.array([[4.3, 3.7, 1.0], [27.2, 9.1, 1.0], [11.6, 26.4, 1.0]])
    out, fr, col = _render_jit(v)
    changed = np.any(np.abs(np.asarray(out - col)) > 0, axis=-1)
    mask = np.asarray(fr.mask)
    # changed pixels are next to the silhouette: a 4-neighbour has the other visibility
    pad = np.pad(mask, 1, mode="edge")
    boundary = ((pad[:-2, 1:-1] != mask) | (pad[2:, 1:-1] != mask)
                | (pad[1:-1, :-2] != mask) | (pad[1:-1, 2:] != mask))
    assert changed.any() and not (changed & ~boundary).any()
    # the foreground fraction approximates the analytic triangle area better than the count
    frac = (np.asarray(out)[..., 0] - 0.0) / 1.0
    area = 0.5 * abs((27.2 - 4.3) * (26.4 - 3.7) - (11.6 - 4.3) * (9.1 - 3.7))
    assert abs(frac.sum() - area) < 2.0
    # visibility is untouched
    np.testing.assert_array_equal(rasterize(v, F1, (32, 32)).triangle_id, fr.triangle_id)


def test_interior_edges_of_a_flat_mesh_are_not_blended():
    v = jnp.array([[3.0, 3.0, 1.0], [29.0, 3.0, 1.0], [29.0, 29.0, 1.0], [3.0, 29.0, 1.0]])
    f = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    fr = rasterize(v, f, (32, 32))
    col = jnp.where((fr.triangle_id == 0)[..., None], FG, jnp.where(fr.mask[..., None], 0.5, BG))
    out = antialias(col, fr, v, f)
    ids = np.asarray(fr.triangle_id)
    diag = (ids == 0) | (ids == 1)
    interior = diag.copy()
    interior[:5], interior[-5:], interior[:, :5], interior[:, -5:] = False, False, False, False
    np.testing.assert_array_equal(np.asarray(out)[interior], np.asarray(col)[interior])


def test_silhouette_gradients_match_finite_differences():
    with jax.enable_x64(True):
        v = jnp.array([[4.3, 3.7, 1.0], [27.2, 9.1, 1.0], [11.6, 26.4, 1.0],
                       [18.3, 12.2, 0.5], [30.7, 20.1, 0.5], [20.4, 30.6, 0.5]])
        f = np.array([[0, 1, 2], [3, 4, 5]], np.int32)
        nb = edge_neighbors(f)
        cols = jnp.array([[1.0, 0.5, 0.2], [0.2, 0.9, 0.4]])

        @jax.jit
        def loss(v):
            fr = rasterize(v, f, (32, 32))
            c = jnp.where(fr.mask[..., None], cols[jnp.maximum(fr.triangle_id, 0)], BG)
            im = antialias(c, fr, v, f, neighbors=nb)
            return jnp.sum(im * jnp.cos(jnp.arange(im.size)).reshape(im.shape))

        g = jax.grad(loss)(v)
        eps = 1e-5
        for idx in [(0, 0), (0, 1), (1, 0), (2, 1), (3, 0), (4, 1), (5, 0)]:
            dv = jnp.zeros_like(v).at[idx].set(eps)
            fd = (loss(v + dv) - loss(v - dv)) / (2 * eps)
            np.testing.assert_allclose(g[idx], fd, rtol=1e-4, atol=1e-6)
            assert abs(float(g[idx])) > 1e-3


def test_batched_and_no_nan_for_degenerate():
    v = jnp.array([[4.3, 3.7, 1.0], [27.2, 9.1, 1.0], [11.6, 26.4, 1.0]])
    vb = jnp.stack([v, v + jnp.array([2.0, 1.0, 0.0])])
    fr = rasterize(vb, F1, (32, 32))
    col = jnp.where(fr.mask[..., None], FG, BG)
    out = antialias(col, fr, vb, F1)
    np.testing.assert_allclose(out[1], _render_jit(vb[1])[0], atol=1e-6)
    vd = jnp.array([[5.0, 5.0, 1.0], [5.0, 5.0, 1.0], [5.0, 5.0, 1.0]])  # zero-area / empty
    grad = jax.jit(jax.grad(lambda v: jnp.sum(_render(v)[0])))
    assert np.isfinite(np.asarray(grad(vd))).all()
    vb2 = jnp.array([[0.0, 0.0, 1.0], [32.0, 0.0, 1.0], [0.0, 32.0, 1.0]])  # on the border
    assert np.isfinite(np.asarray(grad(vb2))).all()
