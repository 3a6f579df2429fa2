"""GNM Head loader on a fixture in the exact upstream npz layout (google/GNM gnm_head.npz)."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.cli import main
from jaxface.errors import ModelFormatError
from jaxface.models import load_gnm
from jaxface.models.morphable import load_npz, save_npz, vertices
from jaxface.models.registry import guess_format, load_any
from tests.models import gnm_fixture as gx


def _params(d, rng, rot_scale=0.3):
    k_id = d["vertex_identity_basis"].shape[0]
    k_ex = d["expression_basis"].shape[0]
    return (rng.uniform(-1, 1, k_id), rng.uniform(-1, 1, k_ex),
            rng.uniform(-rot_scale, rot_scale, (4, 3)))


def _rel_err(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def test_fixture_is_the_upstream_schema(tmp_path):
    d = gx.write_gnm_npz(tmp_path / "gnm_head.npz")
    with np.load(tmp_path / "gnm_head.npz", allow_pickle=False) as z:
        assert len(z.files) == 23
        assert str(z["version"]) == "3.0" and z["joint_names"].dtype.kind == "U"
        assert z["pose_correctives_regressor"].shape == (36, 3 * 72)
        assert z["skinning_weights"].shape == (4, 72)
    assert d["joint_parent_indices"][0] == 0


def test_load_linear_part(tmp_path, rng):
    d = gx.write_gnm_npz(tmp_path / "gnm_head.npz")
    m = load_gnm(tmp_path / "gnm_head.npz")
    assert (m.n_vertices, m.n_identity, m.n_expression) == (72, 6, 5)
    assert m.units == "mm" and m.expression_kind == "pca" and m.name == "gnm_head"
    assert m.expression_names == tuple(str(n) for n in d["expression_names"])
    np.testing.assert_array_equal(np.asarray(m.identity_std), 1.0)
    np.testing.assert_array_equal(np.asarray(m.expression_std), 1.0)
    np.testing.assert_array_equal(np.asarray(m.triangles), d["triangles"])
    np.testing.assert_allclose(np.asarray(m.mean),
                               d["template_vertex_positions"].astype(np.float64) * 1000,
                               atol=1e-4)
    a, b, _ = _params(d, rng)
    want = gx.gnm_reference(d, a, b, np.zeros((4, 3)), np.zeros(3)) * 1000
    assert _rel_err(vertices(m, a, b), want) < 1e-5
    # vertex groups -> boolean regions (upstream's > 1e-4 threshold)
    assert set(m.regions) == {"skin", "left_eye", "right_eye"}
    assert int(np.sum(m.regions["left_eye"])) == 72 // 4
    assert m.uv is None and m.landmarks == {}


@pytest.mark.parametrize("correctives,regressor", [("zero", "consistent"),
                                                   ("nonroot", "consistent"),
                                                   ("nonroot", "independent")])
def test_articulated_vertices_match_numpy_reference(tmp_path, rng, correctives, regressor):
    d = gx.write_gnm_npz(tmp_path / "g.npz", correctives=correctives, regressor=regressor)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exact joints: no approximation warning
        m = load_gnm(tmp_path / "g.npz")
    art = m.articulation
    assert art.parents == (-1, 0, 1, 1) and art.n_joints == 4
    assert art.n_pose_basis == (0 if correctives == "zero" else 27)
    if regressor == "consistent":  # the file's regressor is used as it is
        np.testing.assert_array_equal(np.asarray(art.joint_regressor), d["joint_regressor"])
    np.testing.assert_allclose(np.asarray(art.joints_template),
                               d["template_joint_positions"] * 1000.0, rtol=1e-6)
    for _ in range(3):
        a, b, rot = _params(d, rng)
        t = rng.uniform(-0.01, 0.01, 3)
        want = gx.gnm_reference(d, a, b, rot, t) * 1000  # mm
        got = np.asarray(vertices(m, a, b, rot)) + t * 1000
        assert _rel_err(got, want) <= 1e-5
    # rest pose = the linear model
    np.testing.assert_allclose(np.asarray(vertices(m, a, b, np.zeros((4, 3)))),
                               np.asarray(vertices(m, a, b)), atol=1e-3)


def test_jit_vmap_grad(tmp_path, rng):
    d = gx.write_gnm_npz(tmp_path / "g.npz", correctives="nonroot")
    m = load_gnm(tmp_path / "g.npz")
    n = 3
    a = rng.uniform(-1, 1, (n, 6)).astype(np.float32)
    b = rng.uniform(-1, 1, (n, 5)).astype(np.float32)
    rot = rng.uniform(-0.3, 0.3, (n, 4, 3)).astype(np.float32)
    f = jax.jit(jax.vmap(vertices, in_axes=(None, 0, 0, 0)))
    got = np.asarray(f(m, a, b, rot))
    assert got.shape == (n, 72, 3)
    for i in range(n):
        want = gx.gnm_reference(d, a[i], b[i], rot[i], np.zeros(3)) * 1000
        assert _rel_err(got[i], want) <= 1e-5
    g = jax.grad(lambda r: jnp.sum(vertices(m, a[0], b[0], r) ** 2))(jnp.asarray(rot[0]))
    assert g.shape == (4, 3) and bool(jnp.all(jnp.isfinite(g)))


def test_save_npz_roundtrip_and_registry(tmp_path, rng):
    gx.write_gnm_npz(tmp_path / "gnm_head.npz", correctives="nonroot")
    assert guess_format(tmp_path / "gnm_head.npz") == "gnm"
    m = load_any(tmp_path / "gnm_head.npz")  # auto
    save_npz(m, tmp_path / "ours.npz")
    m2 = load_npz(tmp_path / "ours.npz")
    rot = rng.uniform(-0.3, 0.3, (4, 3))
    np.testing.assert_allclose(np.asarray(vertices(m2, None, None, rot)),
                               np.asarray(vertices(m, None, None, rot)), atol=1e-4)
    assert m2.articulation.parents == m.articulation.parents


def test_cli_info_and_convert(tmp_path, capsys):
    gx.write_gnm_npz(tmp_path / "gnm_head.npz", correctives="nonroot")
    out = tmp_path / "gnm.npz"
    assert main(["models", "convert", str(tmp_path / "gnm_head.npz"), "--format", "gnm",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "4 joints, parents [-1, 0, 1, 1], 27 pose correctives" in text
    assert "expression:  5 modes (pca)" in text and "skin (72)" in text
    assert load_npz(out).articulation.n_joints == 4
    assert main(["models", "info", str(tmp_path / "gnm_head.npz")]) == 0  # auto -> gnm
    assert "identity:    6 modes" in capsys.readouterr().out
    assert main(["models", "info", str(tmp_path / "gnm_head.npz"), "--format", "gnm",
                 "--landmarks", str(out)]) == 1
    assert "takes no" in capsys.readouterr().err


def _write(tmp_path, d, name="bad.npz"):
    np.savez(tmp_path / name, **d)
    return tmp_path / name


def test_bad_files(tmp_path):
    good = gx.gnm_arrays()
    # missing key
    d = dict(good)
    del d["skinning_weights"]
    with pytest.raises(ModelFormatError, match="missing key 'skinning_weights'") as e:
        load_gnm(_write(tmp_path, d))
    assert e.value.field == "skinning_weights" and "bad.npz" in str(e.value)
    # wrong shapes: expected vs found
    d = dict(good, vertex_identity_basis=good["vertex_identity_basis"][:, :50])
    with pytest.raises(ModelFormatError, match=r"expected shape \(\*, 72, 3\), found "
                                               r"\(6, 50, 3\)") as e:
        load_gnm(_write(tmp_path, d))
    assert e.value.field == "vertex_identity_basis"
    d = dict(good, pose_correctives_regressor=good["pose_correctives_regressor"][:27])
    with pytest.raises(ModelFormatError, match=r"expected shape \(36, 216\)") as e:
        load_gnm(_write(tmp_path, d))
    assert e.value.field == "pose_correctives_regressor"
    # bad values
    d = dict(good, triangles=np.array([[0, 1, 72]], np.int32))
    with pytest.raises(ModelFormatError) as e:
        load_gnm(_write(tmp_path, d))
    assert e.value.field == "triangles"
    d = dict(good, joint_parent_indices=np.array([0, 0, 3, 1], np.int32))
    with pytest.raises(ModelFormatError, match="parents must precede") as e:
        load_gnm(_write(tmp_path, d))
    assert e.value.field == "joint_parent_indices"
    tv = good["template_vertex_positions"].copy()
    tv[3, 1] = np.nan
    with pytest.raises(ModelFormatError, match="NaN") as e:
        load_gnm(_write(tmp_path, dict(good, template_vertex_positions=tv)))
    assert e.value.field == "template_vertex_positions"
    with pytest.raises(ModelFormatError, match="sum to 1") as e:
        load_gnm(_write(tmp_path, dict(good, skinning_weights=good["skinning_weights"] * 2)))
    # root-joint pose correctives cannot be represented
    gx.write_gnm_npz(tmp_path / "root.npz", correctives="root")
    with pytest.raises(ModelFormatError, match="root joint") as e:
        load_gnm(tmp_path / "root.npz")
    assert e.value.field == "pose_correctives_regressor"
    # pickled object arrays are refused
    d = dict(good, joint_names=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ModelFormatError, match="allow_pickle"):
        load_gnm(_write(tmp_path, d))


def test_truncated_and_foreign_files(tmp_path):
    gx.write_gnm_npz(tmp_path / "g.npz")
    raw = (tmp_path / "g.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFormatError, match="not a readable GNM"):
        load_gnm(tmp_path / "trunc.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ModelFormatError, match="not an .npz"):
        load_gnm(tmp_path / "one.npy")
    # a FLAME model saved as npz (v_template, shapedirs, ...): the wrong model, named as such
    flame = {"v_template": np.zeros((5, 3)), "shapedirs": np.zeros((5, 3, 4)),
             "posedirs": np.zeros((5, 3, 36)), "J_regressor": np.zeros((5, 5)),
             "weights": np.zeros((5, 5)), "kintree_table": np.zeros((2, 5), np.int64),
             "f": np.zeros((2, 3), np.int32)}
    with pytest.raises(ModelFormatError, match="looks like a FLAME model") as e:
        load_gnm(_write(tmp_path, flame, "flame.npz"))
    assert e.value.field == "template_vertex_positions"
    # our own model file
    m = load_gnm(tmp_path / "g.npz")
    save_npz(m, tmp_path / "ours.npz")
    with pytest.raises(ModelFormatError, match="jaxface model npz"):
        load_gnm(tmp_path / "ours.npz")


def test_joints_that_no_vertex_regressor_reproduces_warn(tmp_path):
    # an expression direction equal to an identity direction: the joints must follow it as
    # identity and ignore it as expression, which no vertex regressor can do.
    d = gx.gnm_arrays(regressor="independent")
    d["expression_basis"][0] = d["vertex_identity_basis"][0]
    np.savez(tmp_path / "g.npz", **d)
    with pytest.warns(UserWarning, match="approximate"):
        m = load_gnm(tmp_path / "g.npz")
    assert m.articulation is not None
