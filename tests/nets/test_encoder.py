"""The encoder: shapes under jit with a batch, single images, clear errors on bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxface.nets import Encoder, EncoderConfig

CFG = EncoderConfig(image_size=48, widths=(8, 12, 16), hidden=16,
                    head_sizes=(("identity", 5), ("rotation", 6), ("position", 3)))


@pytest.fixture(scope="module")
def enc():
    return Encoder(CFG, rngs=nnx.Rngs(0))


def test_jit_batch_and_single(enc):
    gd, st = nnx.split(enc)
    f = jax.jit(lambda s, x: nnx.merge(gd, s)(x))
    x = jax.random.uniform(jax.random.key(0), (4, 48, 48, 3))
    out = f(st, x)
    assert out.shape == (4, CFG.output_size) and np.all(np.isfinite(out))
    np.testing.assert_allclose(enc(x[2]), out[2], atol=1e-5)
    # each image's output depends on that image only (no batch statistics)
    np.testing.assert_allclose(f(st, x[:2]), out[:2], atol=1e-5)


def test_initial_outputs_are_small(enc):
    out = enc(jnp.full((2, 48, 48, 3), 0.5))
    assert float(jnp.max(jnp.abs(out))) < 0.1


@pytest.mark.parametrize("shape,dtype,match", [
    ((2, 64, 64, 3), np.float32, "48 x 48 pixels"),
    ((2, 48, 48, 1), np.float32, "3 \\(RGB\\) channels"),
    ((2, 48, 48, 4), np.float32, "3 \\(RGB\\) channels"),
    ((48, 48), np.float32, "must be"),
    ((2, 48, 48, 3), np.uint8, "float in \\[0, 1\\]"),
])
def test_bad_input_is_a_clear_error(enc, shape, dtype, match):
    with pytest.raises(ValueError, match=match):
        enc(np.zeros(shape, dtype))


def test_config_json_round_trip():
    assert EncoderConfig.from_json(CFG.to_json()) == CFG
    with pytest.raises(ValueError, match="head_sizes"):
        Encoder(EncoderConfig(image_size=48), rngs=nnx.Rngs(0))
