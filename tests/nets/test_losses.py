"""Losses: values against direct NumPy formulas and gradients against finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxface.nets import (
    landmark_loss,
    parameter_loss,
    photometric_loss,
    vertex_distance_weights,
    vertex_loss,
)
from jaxface.nets.losses import coefficient_regularizer


def test_parameter_loss_eq15_eq16(rng):
    a, b = rng.normal(size=7), rng.normal(size=7)
    w = rng.uniform(size=7)
    assert np.isclose(parameter_loss(a, b), np.sum((a - b) ** 2), rtol=1e-5)
    assert np.isclose(parameter_loss(a, b, p=1), np.sum(np.abs(a - b)), rtol=1e-5)
    assert np.isclose(parameter_loss(a, b, w), (a - b) @ np.diag(w) @ (a - b), rtol=1e-5)
    with pytest.raises(ValueError):
        parameter_loss(a, b, p=3)


def test_vertex_distance_weights_on_a_linear_model(rng):
    basis = rng.normal(size=(5, 10, 3))
    pts = lambda v: jnp.einsum("k,kvc->vc", v, basis)  # noqa: E731
    pred, tgt = rng.normal(size=5), rng.normal(size=5)
    w = np.asarray(vertex_distance_weights(pts, pred, tgt))
    # replacing one coefficient moves the points by |delta_i| * ||B_i||
    ref = np.abs(pred - tgt) * np.sqrt(np.sum(basis ** 2, axis=(1, 2)))
    np.testing.assert_allclose(w, ref / ref.sum(), rtol=1e-4)
    mask = np.array([1, 1, 0, 1, 0.0])
    wm = np.asarray(vertex_distance_weights(pts, pred, tgt, mask))
    np.testing.assert_allclose(wm, ref * mask / (ref * mask).sum(), rtol=1e-4)
    # the weights are constants for the optimiser
    g = jax.grad(lambda p: jnp.sum(vertex_distance_weights(pts, p, tgt)))(jnp.asarray(pred))
    assert np.all(np.asarray(g) == 0)


def test_vertex_and_landmark_losses(rng):
    a, b = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    assert np.isclose(vertex_loss(a, b), np.mean(np.linalg.norm(a - b, axis=-1)), rtol=1e-5)
    p, t = rng.normal(size=(68, 2)) * 10, rng.normal(size=(68, 2)) * 10
    t[3] = np.nan
    valid = np.ones(68)
    valid[5] = 0
    d = np.linalg.norm(p - np.nan_to_num(t), axis=-1)
    keep = np.ones(68, bool)
    keep[[3, 5]] = False
    assert np.isclose(landmark_loss(p, t, valid, scale=2.0), d[keep].mean() / 2, rtol=1e-5)
    assert np.isfinite(jax.grad(lambda q: landmark_loss(q, t))(jnp.asarray(p))).all()


def test_photometric_loss_masked(rng):
    r, i = rng.uniform(size=(8, 9, 3)), rng.uniform(size=(8, 9, 3))
    m = (rng.uniform(size=(8, 9)) > 0.5).astype(np.float32)
    d = np.linalg.norm(r - i, axis=-1)
    assert np.isclose(photometric_loss(r, i, m), (d * m).sum() / m.sum(), rtol=1e-4)
    assert float(photometric_loss(r, i, np.zeros((8, 9)))) == 0.0


def test_gradients_against_finite_differences(rng):
    with jax.enable_x64(True):
        a, b = jnp.asarray(rng.normal(size=6)), jnp.asarray(rng.normal(size=6))
        w = jnp.asarray(rng.uniform(size=6))
        check_grads(lambda x: parameter_loss(x, b, w), (a,), order=1, modes=["rev"])
        p = jnp.asarray(rng.normal(size=(12, 3)))
        q = jnp.asarray(rng.normal(size=(12, 3)))
        check_grads(lambda x: vertex_loss(x, q), (p,), order=1, modes=["rev"])
        r = jnp.asarray(rng.uniform(size=(4, 5, 3)))
        im = jnp.asarray(rng.uniform(size=(4, 5, 3)))
        m = jnp.asarray(rng.uniform(size=(4, 5)))
        check_grads(lambda x: photometric_loss(x, im, m), (r,), order=1, modes=["rev"])
        check_grads(lambda x: coefficient_regularizer(x, 2 * x), (a,), order=1, modes=["rev"])
