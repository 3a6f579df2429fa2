"""render(): the composed pipeline against its own pieces and an independent NumPy reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.camera import default_camera, project
from jaxface.fit import MODEL_TO_CAMERA
from jaxface.geometry import axis_angle_to_matrix
from jaxface.models import landmarks, load_default, vertices
from jaxface.render.pipeline import FaceParams, render
from jaxface.render.reference import rasterize_reference
from jaxface.render.shading import sh_directional, sh_shading

SIZE = (72, 64)


@pytest.fixture(scope="module")
def setup():
    model = load_default()
    cam = default_camera(SIZE, 30.0)
    params = FaceParams(
        identity=jnp.zeros(model.n_identity).at[0].set(1.0),
        expression=jnp.zeros(model.n_expression),
        rotation=axis_angle_to_matrix(jnp.array([0.1, 0.4, 0.0])) @ MODEL_TO_CAMERA,
        translation=jnp.array([0.0, 10.0, 900.0]))
    sh = 0.3 * jnp.zeros((9, 3)).at[0].set(3.5) + sh_directional(jnp.array([0.0, 0.0, -1.0]))
    fn = jax.jit(lambda p, sh: render(model, p, cam, SIZE, sh=sh, background=0.25))
    return model, cam, params, sh, fn


def test_hard_render_matches_reference(setup):
    model, cam, params, sh, fn = setup
    out = fn(params, sh)
    scr = np.asarray(out.screen)
    tid_ref = rasterize_reference(scr, np.asarray(model.triangles), SIZE)
    tid_ref = tid_ref[0] if isinstance(tid_ref, tuple) else tid_ref
    tid = np.asarray(out.triangle_id)
    covered = (tid >= 0) | (tid_ref >= 0)
    assert covered.sum() > 500
    assert np.mean(tid[covered] != tid_ref[covered]) < 0.01
    mask = np.asarray(out.mask)
    np.testing.assert_array_equal(mask, (tid >= 0).astype(np.float32))
    # shading: albedo * SH irradiance of the interpolated camera-frame normal
    n = np.asarray(out.normals)[tid >= 0]
    expected = np.asarray(out.albedo)[tid >= 0] * np.asarray(sh_shading(jnp.asarray(n), sh))
    np.testing.assert_allclose(np.asarray(out.rgb)[tid >= 0], expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.rgb)[tid < 0], 0.25)
    # visible surfaces face the camera (normals towards -z)
    assert np.mean(n[:, 2] < 0) > 0.95


def test_landmarks_and_visibility(setup):
    model, cam, params, sh, fn = setup
    out = fn(params, sh)
    verts = vertices(model, params.identity, params.expression)
    cam_v = verts @ params.rotation.T + params.translation
    np.testing.assert_allclose(out.landmarks2d, project(cam, landmarks(model, cam_v)), atol=1e-3)
    vis = np.asarray(out.visibility)
    nose_tip = int(np.asarray(model.landmarks["ibug68"].indices)[30, 0])
    assert vis[nose_tip]
    # the head is turned: far-side jaw is hidden, some of the back of the head too
    assert 0.2 < vis.mean() < 0.8


def test_gradients_are_finite_and_linear_in_light(setup):
    model, cam, params, sh, fn = setup

    def loss(p, sh):
        return jnp.sum(fn(p, sh).rgb)

    g_p, g_sh = jax.grad(loss, argnums=(0, 1))(params, sh)
    for leaf in jax.tree_util.tree_leaves((g_p, g_sh)):
        assert np.all(np.isfinite(np.asarray(leaf)))
    # the image is linear in the SH coefficients: the gradient equals a finite difference
    # (a large step: exact for a linear function, and float32 sums stay accurate)
    d = jnp.zeros_like(sh).at[4, 1].set(1.0)
    fd = (loss(params, sh + 0.5 * d) - loss(params, sh - 0.5 * d)) / 1.0
    np.testing.assert_allclose(float(g_sh[4, 1]), float(fd), rtol=2e-3)


def test_antialias_gives_translation_gradient(setup):
    model, cam, params, sh, _ = setup
    target = render(model, params, cam, SIZE, sh=sh, background=0.25, mode="antialias").rgb
    f = jax.jit(lambda tx: jnp.sum((render(
        model, FaceParams(params.identity, params.expression, params.rotation,
                          params.translation + jnp.array([tx, 0.0, 0.0])),
        cam, SIZE, sh=sh, background=0.25, mode="antialias").rgb - target) ** 2))
    g = float(jax.grad(f)(2.0))
    fd = float((f(2.5) - f(1.5)) / 1.0)
    assert g > 0 and fd > 0  # moving back towards the target lowers the loss
    assert 0.3 < g / fd < 3.0


def test_vmap_over_params(setup):
    model, cam, params, sh, fn = setup
    batch = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), params)
    batch = FaceParams(batch.identity, batch.expression, batch.rotation,
                       batch.translation.at[1, 0].add(30.0))
    out = jax.vmap(lambda p: fn(p, sh))(batch)
    assert out.rgb.shape == (2, *SIZE, 3)
    single = fn(params, sh)
    np.testing.assert_allclose(out.rgb[0], single.rgb, atol=1e-6)
    assert not np.allclose(out.rgb[1], single.rgb)


def test_bad_mode(setup):
    model, cam, params, sh, _ = setup
    with pytest.raises(ValueError, match="mode"):
        render(model, params, cam, SIZE, mode="wireframe")


@pytest.mark.slow
def test_soft_mode_close_to_hard_for_small_sigma(setup):
    model, cam, params, sh, fn = setup
    hard = fn(params, sh)
    soft = jax.jit(lambda p: render(model, p, cam, SIZE, sh=sh, background=0.25, mode="soft",
                                    soft_sigma=1e-3, soft_gamma=1e-4))(params)
    assert np.mean(np.abs(np.asarray(soft.mask) - np.asarray(hard.mask))) < 0.05
    assert np.mean(np.abs(np.asarray(soft.rgb) - np.asarray(hard.rgb))) < 0.03
