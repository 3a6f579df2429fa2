"""interpolate(): values, background, batching, face-varying indices, gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.render import interpolate, rasterize
from jaxface.render.reference import rasterize_reference

V = np.array([[2.2, 3.1, 1.0], [29.4, 5.3, 2.0], [6.7, 28.8, 3.0], [30.1, 30.2, 1.5]], np.float32)
F = np.array([[0, 1, 2], [1, 3, 2]], np.int32)


def test_reproduces_affine_attribute_and_zeros_background():
    # an attribute that is an affine function of screen position is reproduced exactly
    attr = np.stack([V[:, 0] * 0.5 + 1.0, V[:, 1] - 2.0 * V[:, 0]], 1).astype(np.float32)
    fr = rasterize(V, F, (32, 32))
    out = np.asarray(interpolate(attr, fr, F))
    jj, ii = np.meshgrid(np.arange(32) + 0.5, np.arange(32) + 0.5)
    m = np.asarray(fr.mask)
    assert m.sum() > 300
    np.testing.assert_allclose(out[..., 0][m], (jj * 0.5 + 1.0)[m], atol=1e-4)
    np.testing.assert_allclose(out[..., 1][m], (ii - 2.0 * jj)[m], atol=1e-3)
    np.testing.assert_array_equal(out[~m], 0.0)


def test_matches_reference_barycentrics():
    attr = np.random.default_rng(0).uniform(size=(4, 5)).astype(np.float32)
    fr = rasterize(V, F, (32, 32))
    ids, bary, _ = rasterize_reference(V, F, (32, 32))
    expected = np.einsum("hwk,hwkc->hwc", bary, attr[F[np.maximum(ids, 0)]]) * (ids >= 0)[..., None]
    np.testing.assert_allclose(np.asarray(interpolate(attr, fr, F)), expected, atol=1e-5)


def test_face_varying_indices_and_batch():
    uv = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.5]], np.float32)
    uv_tri = np.array([[0, 1, 2], [4, 3, 2]], np.int32)  # second face uses its own uv corner
    fr = rasterize(V, F, (32, 32))
    out = np.asarray(interpolate(uv, fr, uv_tri))
    ids = np.asarray(fr.triangle_id)
    b = np.asarray(fr.barycentric)
    m = ids == 1
    np.testing.assert_allclose(out[m], np.einsum("nk,kc->nc", b[m], uv[uv_tri[1]]), atol=1e-6)
    vb = np.stack([V, V + np.array([1.0, 0.0, 0.0], np.float32)])
    frb = rasterize(vb, F, (32, 32))
    ab = np.stack([uv[:4], 2 * uv[:4]])
    outb = interpolate(ab, frb, F)
    assert outb.shape == (2, 32, 32, 2)
    np.testing.assert_allclose(outb[0], interpolate(uv[:4], rasterize(V, F, (32, 32)), F))
    shared = interpolate(uv[:4], frb, F)
    np.testing.assert_allclose(shared[1], interpolate(uv[:4], rasterize(vb[1], F, (32, 32)), F))


def test_bad_shapes_raise():
    fr = rasterize(V, F, (8, 8))
    with pytest.raises(ValueError, match="attributes"):
        interpolate(np.ones(4), fr, F)
    with pytest.raises(ValueError, match="triangles"):
        interpolate(np.ones((4, 2)), fr, F[:, :2])


def test_gradient_wrt_attributes_and_vertices():
    with jax.enable_x64(True):
        attr = jnp.asarray(np.random.default_rng(1).uniform(size=(4, 2)))
        v = jnp.asarray(V, jnp.float64)

        @jax.jit
        def loss(a, v):
            img = interpolate(a, rasterize(v, F, (32, 32)), F)
            return jnp.sum(img * jnp.cos(jnp.arange(img.size)).reshape(img.shape))

        ga, gv = jax.grad(loss, argnums=(0, 1))(attr, v)
        eps = 1e-5
        for idx in [(0, 0), (3, 1)]:
            d = jnp.zeros_like(attr).at[idx].set(eps)
            fd = (loss(attr + d, v) - loss(attr - d, v)) / (2 * eps)
            np.testing.assert_allclose(ga[idx], fd, rtol=1e-6)
        for idx in [(1, 0), (2, 1)]:
            d = jnp.zeros_like(v).at[idx].set(eps)
            fd = (loss(attr, v + d) - loss(attr, v - d)) / (2 * eps)
            np.testing.assert_allclose(gv[idx], fd, rtol=1e-5)


@pytest.mark.parametrize("channels", [1, 3, 5, 8])
def test_values_and_attribute_gradients_match_plain_formula(channels):
    """Values and attribute gradients equal the plain ``sum_k b_k attr[tri[id, k]]`` (and its
    scatter-add transpose) for several channel counts, single and batched."""
    rng = np.random.default_rng(channels)
    attr = jnp.asarray(rng.normal(size=(4, channels)).astype(np.float32))
    fr = rasterize(V, F, (32, 32))
    ids = np.asarray(fr.triangle_id)
    b = np.asarray(fr.barycentric)
    corners = np.asarray(attr)[F[np.maximum(ids, 0)]]  # (H, W, 3, C)
    want = np.where((ids >= 0)[..., None], np.einsum("hwk,hwkc->hwc", b, corners), 0.0)
    got = interpolate(attr, fr, F)
    assert got.shape == (32, 32, channels)
    np.testing.assert_allclose(got, want, atol=1e-5)
    wts = jnp.asarray(rng.normal(size=(32, 32, channels)).astype(np.float32))
    g = jax.grad(lambda a: jnp.sum(interpolate(a, fr, F) * wts))(attr)
    g_ref = np.zeros((4, channels), np.float32)
    for k in range(3):
        np.add.at(g_ref, F[np.maximum(ids, 0), k][ids >= 0],
                  (b[..., k:k + 1] * np.asarray(wts))[ids >= 0])
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5)
    frb = rasterize(np.stack([V, V]), F, (32, 32))
    gb = jax.grad(lambda a: jnp.sum(interpolate(a, frb, F) * wts))(jnp.stack([attr, 2 * attr]))
    np.testing.assert_allclose(gb[0], g_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gb[1], g_ref, rtol=1e-5, atol=1e-5)
