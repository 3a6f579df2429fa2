"""Linear landmark fitting: exact recovery, noise, batching, ignored landmarks, box QP."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import lsq_linear

from jaxface.fit.linear import (
    LinearFitResult,
    affine_to_scaled_orthographic,
    fit_linear,
    linear_to_perspective_init,
    solve_box_qp,
)
from jaxface.geometry import euler_to_matrix
from jaxface.models.morphable import LandmarkSet, landmarks, make_model, vertices

N_LM = 68
ITERS = 40  # one static configuration for every synthetic test (one compilation per model)
VALID = np.ones(N_LM, bool)
VALID[[0, 1, 2, 60]] = False  # the blendshape model lacks four landmarks (LandmarkSet.valid)


def _model(kind: str, seed: int = 0, valid=None):
    rng = np.random.default_rng(seed)
    v = 150
    mean = rng.normal(0, 40.0, (v, 3))
    ident = rng.normal(0, 1.0, (6, v, 3))
    std = np.linspace(4.0, 1.0, 6)
    ex = rng.normal(0, 5.0, (4, v, 3))
    tris = np.stack([np.arange(v - 2), np.arange(1, v - 1), np.arange(2, v)], 1)
    ids = rng.choice(v, N_LM, replace=False)
    return make_model(mean=mean, identity_basis=ident, identity_std=std, triangles=tris,
                      expression_basis=ex, expression_kind=kind,
                      expression_std=None if kind == "blendshape" else np.full(4, 2.0),
                      landmarks={"ibug68": LandmarkSet.from_vertex_ids(ids, valid)},
                      name=f"synthetic-{kind}")


def _truth(model, seed: int = 1):
    rng = np.random.default_rng(seed)
    ident = rng.normal(0, 1, model.n_identity) * np.asarray(model.identity_std)
    if model.expression_kind == "blendshape":
        expr = np.array([0.3, 0.0, 0.8, 0.55])
    else:
        expr = rng.normal(0, 1, model.n_expression) * np.asarray(model.expression_std)
    cam = np.array([[1.8, 0.3, -0.4, 200.0], [-0.2, -1.6, 0.5, 240.0]])  # general affine
    lm = landmarks(model, vertices(model, jnp.asarray(ident, jnp.float32),
                                   jnp.asarray(expr, jnp.float32)))
    uv = np.asarray(lm) @ cam[:, :3].T + cam[:, 3]
    return ident, expr, cam, uv.astype(np.float32)


@pytest.fixture(scope="module")
def pca_model():
    return _model("pca")


@pytest.fixture(scope="module")
def blend_model():
    return _model("blendshape", valid=VALID)


def _fit(model, uv, **kw):
    kw.setdefault("lambda_identity", 1e-7)
    kw.setdefault("lambda_expression", 1e-7)
    return fit_linear(model, uv, (480, 640), n_iterations=ITERS, use_contour=False, **kw)


@pytest.mark.parametrize("kind", ["pca", "blendshape"])
def test_exact_recovery_affine(kind, pca_model, blend_model):
    model = pca_model if kind == "pca" else blend_model
    ident, expr, cam, uv = _truth(model)
    r = _fit(model, uv)
    assert isinstance(r, LinearFitResult)
    np.testing.assert_allclose(r.identity, ident, atol=2e-2 * np.abs(ident).max())
    np.testing.assert_allclose(r.expression, expr, atol=2e-2)
    np.testing.assert_allclose(r.camera.matrix, cam, rtol=2e-3, atol=0.2)
    assert float(r.rmse_px) < 0.05
    np.testing.assert_allclose(r.landmarks2d, uv, atol=0.1)
    if kind == "blendshape":
        assert np.all(np.asarray(r.expression) >= 0) and np.all(np.asarray(r.expression) <= 1)


def test_noise_robustness(blend_model):
    ident, expr, cam, uv = _truth(blend_model, seed=3)
    rng = np.random.default_rng(4)
    noisy = uv + rng.normal(0, 1.0, uv.shape).astype(np.float32)
    r = _fit(blend_model, noisy, lambda_identity=1.0, lambda_expression=1.0, sigma=1.0)
    # the fit explains the data to about the noise level (E|n| ~ sqrt(2) px; few dof) ...
    assert 0.9 < float(r.rmse_px) < 1.6
    # ... and stays close to the noise-free projection
    assert float(np.sqrt(np.mean(np.sum((np.asarray(r.landmarks2d) - uv) ** 2, -1)))) < 1.0
    rot_true, s_true, _ = affine_to_scaled_orthographic(jnp.asarray(cam, jnp.float32))
    assert abs(float(r.scale) - float(s_true)) / float(s_true) < 0.02


def test_vmap_matches_single(blend_model):
    uvs = np.stack([_truth(blend_model, seed=s)[3] for s in (5, 6, 7)])
    uvs = uvs + np.random.default_rng(8).normal(0, 0.5, uvs.shape).astype(np.float32)
    batched = jax.vmap(lambda y: _fit(blend_model, y))(jnp.asarray(uvs))
    assert batched.identity.shape == (3, blend_model.n_identity)
    for i in range(3):
        single = _fit(blend_model, uvs[i])
        np.testing.assert_allclose(batched.landmarks2d[i], single.landmarks2d, atol=1e-2)
        np.testing.assert_allclose(batched.expression[i], single.expression, atol=1e-3)


def test_ignored_landmarks(blend_model):
    _, _, _, uv = _truth(blend_model, seed=9)
    clean = _fit(blend_model, uv)
    bad = uv.copy()
    bad[[3, 10, 40]] += 300.0  # gross outliers ...
    w = np.ones(N_LM, np.float32)
    w[[3, 10, 40]] = 0.0  # ... with weight 0
    r = _fit(blend_model, bad, weights=w)
    np.testing.assert_allclose(r.identity, clean.identity, atol=1e-2)
    assert np.isnan(np.asarray(r.residuals)[[3, 10, 40]]).all()
    assert float(r.rmse_px) < 0.05
    # NaN rows are missing landmarks
    nan = uv.copy()
    nan[[3, 10, 40]] = np.nan
    r2 = _fit(blend_model, nan)
    np.testing.assert_allclose(r2.identity, clean.identity, atol=1e-2)
    assert np.isfinite(np.asarray(r2.identity)).all()


def test_invalid_model_landmarks_ignored(blend_model):
    _, _, _, uv = _truth(blend_model, seed=11)
    uv = uv.copy()
    uv[~VALID] += 500.0  # whatever the observation, an undefined landmark never counts
    r = _fit(blend_model, uv)
    assert float(r.rmse_px) < 0.05
    assert np.isnan(np.asarray(r.residuals)[~VALID]).all()


def test_scaled_orthographic_decomposition():
    rot = euler_to_matrix(jnp.array([0.2, -0.5, 0.1]))
    p = jnp.concatenate([2.5 * rot[:2], jnp.array([[10.0], [20.0]])], axis=1)
    r, s, t = affine_to_scaled_orthographic(p)
    np.testing.assert_allclose(r, rot, atol=1e-5)
    np.testing.assert_allclose(s, 2.5, rtol=1e-5)
    np.testing.assert_allclose(t, [10.0, 20.0])
    np.testing.assert_allclose(np.linalg.det(np.asarray(r)), 1.0, atol=1e-5)


def test_box_qp_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 8))
    a[:, 1] = a[:, 2] + 1e-2 * rng.normal(size=30)  # ill-conditioned pair
    x_free = np.array([-0.5, 1.5, 0.3, 0.7, 2.0, -1.0, 0.5, 0.2])  # outside the box both ways
    b = a @ x_free + 0.05 * rng.normal(size=30)
    lam = 1e-2
    ref = lsq_linear(np.vstack([a, np.sqrt(lam) * np.eye(8)]), np.concatenate([b, np.zeros(8)]),
                     bounds=(0.0, 1.0), tol=1e-12).x
    h = jnp.asarray(a.T @ a + lam * np.eye(8), jnp.float32)
    g = jnp.asarray(a.T @ b, jnp.float32)
    x = solve_box_qp(h, g, jnp.zeros(8), 0.0, 1.0, iterations=300)
    np.testing.assert_allclose(x, ref, atol=5e-3)
    assert np.any(ref <= 1e-9) and np.any(ref >= 1 - 1e-9)  # both bounds are active


def test_bad_input(blend_model):
    with pytest.raises(ValueError, match="landmarks must have shape"):
        fit_linear(blend_model, np.zeros((5, 2)), (100, 100))
    with pytest.raises(ValueError, match="landmark set"):
        fit_linear(blend_model, np.zeros((68, 2)), (100, 100), landmark_set="nope")
    with pytest.raises(ValueError, match="image_size"):
        fit_linear(blend_model, np.zeros((68, 2)), (0, 100))


def test_default_model_and_perspective_init():
    from jaxface.camera import project
    from jaxface.models.ict import load_default
    from jaxface.models.morphable import random_coefficients

    model = load_default()
    ident, expr = random_coefficients(model, jax.random.PRNGKey(0), 0.7)
    lm3 = landmarks(model, vertices(model, ident, expr))
    rot = euler_to_matrix(jnp.array([0.1, 0.35, 0.05])) @ jnp.diag(jnp.array([1.0, -1, -1]))
    uv = 2.0 * (lm3 @ rot.T)[:, :2] + jnp.array([220.0, 230.0])
    r = fit_linear(model, uv, (450, 450), n_iterations=4)
    assert float(r.rmse_px) < 2.0
    assert abs(float(r.scale) - 2.0) < 0.15  # overall size trades off against identity
    # rotation error in degrees
    cos = (np.trace(np.asarray(r.rotation).T @ np.asarray(rot)) - 1) / 2
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))) < 3.0
    pose, cam = linear_to_perspective_init(model, r, (450, 450), focal=1e6)
    lm_fit = landmarks(model, vertices(model, r.identity, r.expression))
    proj = project(cam, pose.apply(lm_fit))
    # a long focal length makes the perspective view match the scaled orthographic one
    so = r.scale * (lm_fit @ r.rotation.T)[:, :2] + r.translation
    np.testing.assert_allclose(proj, so, atol=0.2)
    np.testing.assert_allclose(proj, r.landmarks2d, atol=3.0)  # affine vs its SO part
