"""The parameter decoder: layout, round trips, consistency with the synthetic generator, and
gradients through decode -> landmarks against finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.fit.landmarks import MODEL_TO_CAMERA
from jaxface.models import load_default
from jaxface.nets import (
    crop_camera,
    decode,
    from_vector,
    make_decoder,
    prediction_landmarks,
    raw_to_vector,
    sample_points,
    synthetic_batch,
    to_vector,
)


@pytest.fixture(scope="module")
def dec():
    return make_decoder(load_default(), 64)


@pytest.fixture(scope="module")
def batch(dec):
    return jax.jit(lambda k: synthetic_batch(dec, k, 2))(jax.random.key(7))


def _one(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


def test_layout(dec):
    m = dec.model
    assert dec.size == m.n_identity + m.n_expression + 6 + 3 + 27 + dec.n_albedo
    blocks = dec.blocks
    assert list(blocks) == ["identity", "expression", "rotation", "position", "light", "albedo"]
    assert blocks["albedo"].stop == dec.size
    assert dec.sample_points_ok if hasattr(dec, "sample_points_ok") else True
    with pytest.raises(ValueError, match="raw output must have shape"):
        decode(dec, jnp.zeros(dec.size + 1), crop_camera(64))


def test_zero_output_is_frontal_neutral_centred(dec):
    cam = crop_camera(64)
    p = decode(dec, jnp.zeros(dec.size), cam)
    np.testing.assert_allclose(p.rotation, MODEL_TO_CAMERA, atol=1e-6)
    assert np.all(np.asarray(p.identity) == 0)
    assert np.all(np.asarray(p.expression) < 0.15)  # sigmoid(-2)
    ref = np.asarray(p.rotation @ dec.reference + p.translation)
    uv = np.asarray(cam.fx) * ref[:2] / ref[2] + 32.0
    np.testing.assert_allclose(uv, [32.0, 32.0], atol=1e-3)


def test_vector_round_trip_on_generated_targets(dec, batch):
    for i in range(2):
        tgt, cam = _one(batch.target, i), _one(batch.camera, i)
        v = to_vector(dec, tgt)
        back = from_vector(dec, v, cam)
        np.testing.assert_allclose(back.rotation, tgt.rotation, atol=1e-5)
        np.testing.assert_allclose(back.translation, tgt.translation, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(back.identity[:dec.n_identity],
                                   tgt.identity[:dec.n_identity], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(back.sh, tgt.sh, atol=1e-6)
        np.testing.assert_allclose(back.albedo_coefficients, tgt.albedo_coefficients,
                                   rtol=1e-5, atol=1e-7)
        # the targets' landmarks are the generator's, in crop pixels
        np.testing.assert_allclose(prediction_landmarks(dec, tgt), batch.landmarks2d[i],
                                   atol=1e-2)


def test_raw_to_vector_inverts_logits(dec):
    raw = jax.random.normal(jax.random.key(1), (dec.size,))
    v = raw_to_vector(dec, raw)
    b = dec.blocks
    np.testing.assert_allclose(v[b["expression"]],
                               1 / (1 + np.exp(-(np.asarray(raw[b["expression"]]) - 2.0))),
                               rtol=1e-5)
    np.testing.assert_allclose(v[b["identity"]], raw[b["identity"]])


def test_sample_points_match_full_model(dec, batch):
    tgt = _one(batch.target, 0)
    from jaxface.nets import prediction_vertices

    full = prediction_vertices(dec, tgt, dec.sample_ids)
    np.testing.assert_allclose(sample_points(dec, tgt), full, atol=1e-3)


def test_jit_vmap(dec, batch):
    raw = 0.1 * jax.random.normal(jax.random.key(2), (2, dec.size))
    f = jax.jit(jax.vmap(lambda r, c: prediction_landmarks(dec, decode(dec, r, c))))
    out = f(raw, batch.camera)
    assert out.shape == (2, 68, 2) and np.all(np.isfinite(out))
    one = prediction_landmarks(dec, decode(dec, raw[1], _one(batch.camera, 1)))
    np.testing.assert_allclose(out[1], one, atol=1e-3)


def test_gradient_matches_finite_differences(dec):
    """d(weighted landmark sum)/d(raw) by autodiff vs central differences (the decoder and the
    model evaluate in float32, so the step is large and the tolerance ~1e-2 relative)."""
    cam = crop_camera(64)
    b = dec.blocks
    idx = np.r_[b["identity"].start, b["identity"].start + 3, b["expression"].start + 5,
                np.arange(b["rotation"].start, b["position"].stop)]
    raw0 = 0.05 * jax.random.normal(jax.random.key(3), (dec.size,))
    w = jax.random.normal(jax.random.key(4), (68, 2))

    @jax.jit
    def f(sub):
        raw = raw0.at[idx].set(sub)
        return jnp.sum(prediction_landmarks(dec, decode(dec, raw, cam)) * w)

    x = raw0[idx]
    g = np.asarray(jax.grad(f)(x))
    eps = 1e-2
    fd = np.array([(float(f(x.at[i].add(eps))) - float(f(x.at[i].add(-eps)))) / (2 * eps)
                   for i in range(len(idx))])
    np.testing.assert_allclose(g, fd, rtol=2e-2, atol=2e-3 * np.abs(fd).max())
