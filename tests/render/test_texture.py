"""texture(): UV convention, filters, boundary modes, batching, gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.render import texture

IMG = np.random.default_rng(0).uniform(size=(4, 6, 3)).astype(np.float32)


def centre(r, c, h=4, w=6):
    return np.array([(c + 0.5) / w, 1.0 - (r + 0.5) / h], np.float32)


@pytest.mark.parametrize("filt", ["bilinear", "nearest"])
def test_texel_centres_return_texels_v_up(filt):
    for r in range(4):
        for c in range(6):
            np.testing.assert_allclose(texture(IMG, centre(r, c), filt), IMG[r, c], atol=1e-6)
    # v = 0 is the bottom row, v = 1 the top row
    np.testing.assert_allclose(texture(IMG, np.array([0.5 / 6, 0.01]), "nearest"), IMG[3, 0])
    np.testing.assert_allclose(texture(IMG, np.array([0.5 / 6, 0.99]), "nearest"), IMG[0, 0])


def test_bilinear_midpoints_and_boundaries():
    mid = (centre(1, 2) + centre(2, 3)) / 2
    expected = IMG[1:3, 2:4].mean(axis=(0, 1))
    np.testing.assert_allclose(texture(IMG, mid), expected, atol=1e-6)
    # clamp: beyond the last column centre the edge texel repeats
    np.testing.assert_allclose(texture(IMG, np.array([0.999, centre(0, 0)[1]])), IMG[0, 5],
                               atol=1e-6)
    # wrap: halfway between the last and the first column
    uv = np.array([1.0, centre(2, 0)[1]], np.float32)
    np.testing.assert_allclose(texture(IMG, uv, boundary="wrap"), (IMG[2, 5] + IMG[2, 0]) / 2,
                               atol=1e-6)
    np.testing.assert_allclose(texture(IMG, centre(1, 1) + 1.0, boundary="wrap"), IMG[1, 1],
                               atol=1e-5)
    np.testing.assert_allclose(texture(IMG, centre(1, 1) + 3.0, "nearest", "clamp"),
                               IMG[0, 5], atol=1e-6)


def test_shapes_batch_and_errors():
    uv = np.random.default_rng(1).uniform(size=(5, 7, 2)).astype(np.float32)
    assert texture(IMG, uv).shape == (5, 7, 3)
    out = texture(np.stack([IMG, 2 * IMG]), np.stack([uv, uv]))
    np.testing.assert_allclose(out[1], 2 * texture(IMG, uv), atol=1e-6)
    assert np.all(np.asarray(texture(IMG, np.array([np.nan, 0.5]))) == 0)
    with pytest.raises(ValueError, match="filter"):
        texture(IMG, uv, filter="cubic")
    with pytest.raises(ValueError, match="boundary"):
        texture(IMG, uv, boundary="mirror")
    with pytest.raises(ValueError, match="uv"):
        texture(IMG, uv[..., :1])


def test_gradients_match_finite_differences():
    with jax.enable_x64(True):
        img = jnp.asarray(IMG, jnp.float64)
        uv = jnp.array([[0.31, 0.57], [0.77, 0.12]], jnp.float64)

        def loss(uv, img):
            return jnp.sum(texture(img, uv) * jnp.array([1.0, -2.0, 0.5]))

        g_uv, g_img = jax.grad(loss, argnums=(0, 1))(uv, img)
        eps = 1e-6
        for idx in [(0, 0), (0, 1), (1, 0), (1, 1)]:
            d = jnp.zeros_like(uv).at[idx].set(eps)
            fd = (loss(uv + d, img) - loss(uv - d, img)) / (2 * eps)
            np.testing.assert_allclose(g_uv[idx], fd, rtol=1e-6)
        d = jnp.zeros_like(img).at[1, 1, 0].set(eps)
        fd = (loss(uv, img + d) - loss(uv, img - d)) / (2 * eps)
        np.testing.assert_allclose(g_img[1, 1, 0], fd, rtol=1e-6)
        assert float(jnp.abs(g_img).sum()) > 0
