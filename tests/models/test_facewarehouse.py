"""Bilinear (FaceWarehouse-style) model: evaluation, linearisation and the core-file reader."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.errors import ModelFormatError
from jaxface.models.facewarehouse import (
    BilinearModel,
    bilinear_to_linear,
    bilinear_vertices,
    load_facewarehouse_blendshapes,
    load_facewarehouse_core,
)
from jaxface.models.morphable import vertices
from tests.models import fixtures as fx


def test_core_file_and_bilinear_vertices(tmp_path, rng):
    gt = fx.write_facewarehouse_core(tmp_path / "core.bin")
    m = load_facewarehouse_core(tmp_path / "core.bin", gt["triangles"], scale=10.0)
    assert isinstance(m, BilinearModel) and (m.n_identity, m.n_expression) == (4, 5)
    w_id, w_exp = rng.normal(size=4), rng.uniform(size=5)
    want = 10.0 * np.einsum("i,e,ievc->vc", w_id, w_exp, gt["core"])
    got = jax.jit(bilinear_vertices)(m, w_id, w_exp)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-3)
    batch = jax.vmap(bilinear_vertices, in_axes=(None, 0, 0))(m, jnp.stack([w_id, w_id]),
                                                              jnp.stack([w_exp, 0 * w_exp]))
    np.testing.assert_allclose(np.asarray(batch[0]), np.asarray(got), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(batch[1]), 0.0)
    # gradient w.r.t. the identity weights: exact (bilinear) vs central finite differences
    r = rng.normal(size=want.shape)

    @jax.jit
    def energy(wi):
        return jnp.sum(bilinear_vertices(m, wi, w_exp) * r)

    g = np.asarray(jax.grad(energy)(jnp.asarray(w_id, jnp.float32)))
    eps = 1e-2
    fd = np.array([(energy(w_id + eps * e) - energy(w_id - eps * e)) / (2 * eps)
                   for e in np.eye(4)])
    np.testing.assert_allclose(g, fd, rtol=2e-3)
    with pytest.raises(ValueError, match="vmap"):
        bilinear_vertices(m, jnp.zeros((2, 4)), jnp.zeros(5))


def test_header_order_is_honoured(tmp_path, rng):
    order = ("exp", "coord", "id")
    gt = fx.write_facewarehouse_core(tmp_path / "c.bin", header_order=order)
    m = load_facewarehouse_core(tmp_path / "c.bin", gt["triangles"], header_order=order)
    np.testing.assert_allclose(np.asarray(m.core), gt["core"], atol=1e-6)


def test_linearisation(tmp_path, rng):
    gt = fx.write_facewarehouse_core(tmp_path / "core.bin")
    m = load_facewarehouse_core(tmp_path / "core.bin", gt["triangles"], neutral_index=0)
    w_id = rng.normal(size=4)
    lin = bilinear_to_linear(m, w_id)
    assert lin.expression_kind == "blendshape" and lin.n_expression == 4
    # expression blendshape j at full weight == the bilinear face with expression j
    e = np.zeros(4)
    e[2] = 1.0
    onehot = np.zeros(5)
    onehot[3] = 1.0
    np.testing.assert_allclose(np.asarray(vertices(lin, None, e)),
                               np.asarray(bilinear_vertices(m, w_id, onehot)), atol=1e-3)
    # identity offsets are exact at the neutral expression
    a = rng.normal(size=4)
    neutral = np.eye(5)[0]
    np.testing.assert_allclose(np.asarray(vertices(lin, a)),
                               np.asarray(bilinear_vertices(m, w_id + a, neutral)), atol=1e-3)


def test_bad_core_files(tmp_path):
    gt = fx.write_facewarehouse_core(tmp_path / "core.bin")
    raw = (tmp_path / "core.bin").read_bytes()
    (tmp_path / "trunc.bin").write_bytes(raw[:-4])
    with pytest.raises(ModelFormatError, match="truncated") as e:
        load_facewarehouse_core(tmp_path / "trunc.bin", gt["triangles"])
    assert e.value.field == "data"
    (tmp_path / "short.bin").write_bytes(raw[:8])
    with pytest.raises(ModelFormatError):
        load_facewarehouse_core(tmp_path / "short.bin", gt["triangles"])
    with pytest.raises(ModelFormatError) as e:  # 3V is in the middle slot, not divisible there
        load_facewarehouse_core(tmp_path / "core.bin", gt["triangles"],
                                header_order=("id", "coord", "exp"))
    assert e.value.field == "header"
    with pytest.raises(ModelFormatError) as e:
        load_facewarehouse_core(tmp_path / "core.bin", gt["triangles"] + 1000)
    assert e.value.field == "triangles"


def test_shape_bs_files_build_a_bilinear_model(tmp_path):
    # three subjects' shape.bs, each a neutral + 46 expressions, from a rank-(2, 4) generator
    rng = np.random.default_rng(3)
    base = rng.normal(0, 10.0, (2, 4, 25, 3))
    w_id, w_ex = rng.normal(size=(3, 2)), rng.normal(size=(47, 4))
    truth = np.einsum("si,ej,ijvc->sevc", w_id, w_ex, base).astype(np.float32)
    for s_ in range(3):
        body = truth[s_].astype("<f4").tobytes()
        (tmp_path / f"t{s_}.bs").write_bytes(np.array([46, 25, 40], "<i4").tobytes() + body)
    shapes = [load_facewarehouse_blendshapes(tmp_path / f"t{s_}.bs", scale=10.0)
              for s_ in range(3)]
    np.testing.assert_array_equal(shapes[1], truth[1] * np.float32(10.0))
    from jaxface.models.build import build_bilinear_model

    tri = np.array([[0, 1, 2], [1, 3, 2]])
    m, info = build_bilinear_model(np.stack(shapes), tri, n_identity=2, n_expression=4,
                                   return_info=True)
    got = bilinear_vertices(m, info.identity_factors[2], jnp.eye(47)[5])
    np.testing.assert_allclose(np.asarray(got), shapes[2][5], rtol=1e-4, atol=1e-2)

    # the fixture writer's file (independent of the loader) reads back exactly
    want = fx.write_facewarehouse_shape_bs(tmp_path / "shape.bs")
    np.testing.assert_array_equal(load_facewarehouse_blendshapes(tmp_path / "shape.bs"), want)


def test_bad_shape_bs_files(tmp_path):
    fx.write_facewarehouse_shape_bs(tmp_path / "shape.bs")
    raw = (tmp_path / "shape.bs").read_bytes()
    (tmp_path / "trunc.bs").write_bytes(raw[:-4])
    with pytest.raises(ModelFormatError) as e:
        load_facewarehouse_blendshapes(tmp_path / "trunc.bs")
    assert e.value.field == "data" and "truncated" in str(e.value)
    (tmp_path / "short.bs").write_bytes(raw[:8])
    with pytest.raises(ModelFormatError) as e:
        load_facewarehouse_blendshapes(tmp_path / "short.bs")
    assert e.value.field == "header"
    (tmp_path / "neg.bs").write_bytes(np.array([46, -3, 0], "<i4").tobytes() + raw[12:])
    with pytest.raises(ModelFormatError, match="bad header"):
        load_facewarehouse_blendshapes(tmp_path / "neg.bs")
    bad = bytearray(raw)
    bad[12:16] = np.float32(np.nan).tobytes()
    (tmp_path / "nan.bs").write_bytes(bytes(bad))
    with pytest.raises(ModelFormatError, match="NaN"):
        load_facewarehouse_blendshapes(tmp_path / "nan.bs")
    # a core-tensor file is not a shape.bs (sizes do not match the header's meaning)
    fx.write_facewarehouse_core(tmp_path / "core.bin")
    with pytest.raises(ModelFormatError):
        load_facewarehouse_blendshapes(tmp_path / "core.bin")
