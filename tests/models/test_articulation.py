"""Articulation (FLAME-type LBS) against an independent NumPy re-implementation of FLAME."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.errors import ModelFormatError
from jaxface.models.articulation import (
    Articulation,
    articulate,
    check_parents,
    forward_kinematics,
    pose_feature,
)
from jaxface.models.flame import load_flame
from jaxface.models.morphable import (
    load_npz,
    restrict,
    save_npz,
    truncate,
    validate,
    vertices,
)
from tests.models import fixtures as fx

# ------------------------------------------------------------------------------------------------
# Independent NumPy FLAME (float64), written from the FLAME paper / reference lbs code
# ------------------------------------------------------------------------------------------------


def _rodrigues(r: np.ndarray) -> np.ndarray:
    theta = np.linalg.norm(r)
    if theta < 1e-12:
        return np.eye(3)
    k = r / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def flame_numpy(gt: dict, betas_id: np.ndarray, betas_exp: np.ndarray,
                pose: np.ndarray) -> np.ndarray:
    """FLAME: template + shape/expression blendshapes, pose correctives from (R - I) of joints
    1..4, joints regressed from the shaped mesh, rigid transforms down kintree, LBS."""
    v_shaped = (gt["mean"] + np.einsum("k,kvc->vc", betas_id, gt["identity_basis"])
                + np.einsum("k,kvc->vc", betas_exp, gt["expression_basis"]))
    joints = gt["J_regressor"] @ v_shaped
    rots = [_rodrigues(p) for p in pose]
    feat = np.concatenate([(r - np.eye(3)).ravel() for r in rots[1:]])
    # posedirs in the file: (V, 3, 36); offsets = posedirs . feature
    v_posed = v_shaped + np.einsum("pvc,p->vc", gt["posedirs"], feat)
    parents = gt["parents"]
    world = []
    for j, p in enumerate(parents):
        local = np.eye(4)
        local[:3, :3] = rots[j]
        local[:3, 3] = joints[j] - (joints[p] if p >= 0 else 0.0)
        world.append(local if p < 0 else world[p] @ local)
    rel = []
    for j, g in enumerate(world):
        a = g.copy()
        a[:3, 3] -= g[:3, :3] @ joints[j]
        rel.append(a)
    rel = np.stack(rel)
    t = np.einsum("vj,jab->vab", gt["weights"], rel)
    homo = np.concatenate([v_posed, np.ones((v_posed.shape[0], 1))], 1)
    return np.einsum("vab,vb->va", t, homo)[:, :3]


@pytest.fixture
def flame(tmp_path):
    gt = fx.write_flame_pkl(tmp_path / "generic_model.pkl")
    return load_flame(tmp_path / "generic_model.pkl"), gt


def _rel_err(got, want) -> float:
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def test_vertices_with_pose_match_numpy_flame(flame, rng):
    model, gt = flame
    assert model.articulation is not None and model.articulation.parents == (-1, 0, 1, 1, 1)
    for scale in (0.0, 0.3, 1.0):
        a, b = rng.normal(size=300), rng.normal(size=100)
        pose = scale * rng.normal(size=(5, 3))
        want = flame_numpy(gt, a, b, pose)
        got = jax.jit(vertices)(model, a, b, pose)
        assert _rel_err(got, want) <= 1e-5, scale
    # correctives matter on this fixture: dropping them changes the result
    no_pd = dataclasses.replace(model, articulation=dataclasses.replace(model.articulation,
                                                                        pose_basis=None))
    assert _rel_err(vertices(no_pd, a, b, pose), want) > 1e-4


def test_rest_pose_and_global_rotation(flame, rng):
    model, _ = flame
    a = rng.normal(size=300)
    rest = np.asarray(vertices(model, a))
    np.testing.assert_allclose(np.asarray(vertices(model, a, None, np.zeros((5, 3)))), rest,
                               atol=1e-4)
    # a root-only pose rotates the whole mesh rigidly about joint 0
    r = np.array([0.1, -0.4, 0.2])
    j0 = np.asarray(model.articulation.joint_regressor) @ rest
    posed = np.asarray(vertices(model, a, None, np.stack([r] + [np.zeros(3)] * 4)))
    want = (rest - j0[0]) @ _rodrigues(r).T + j0[0]
    np.testing.assert_allclose(posed, want, atol=1e-3)
    with pytest.raises(ValueError, match="pose must be"):
        vertices(model, a, None, np.zeros((4, 3)))
    linear = dataclasses.replace(model, articulation=None)
    with pytest.raises(ValueError, match="no articulation"):
        vertices(linear, a, None, np.zeros((5, 3)))


def test_pose_gradient_matches_finite_differences(flame, rng):
    model, _ = flame
    a = rng.normal(size=300)
    shaped = np.asarray(vertices(model, a), np.float64)
    target = rng.normal(size=shaped.shape)
    pose0 = 0.3 * rng.normal(size=(5, 3))
    with jax.enable_x64(True):
        art64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), model.articulation)

        @jax.jit
        def loss(p):
            return jnp.sum(articulate(art64, jnp.asarray(shaped), p) * target)

        g = np.asarray(jax.grad(loss)(jnp.asarray(pose0)))
        fd = np.zeros_like(pose0)
        h = 1e-6
        for idx in np.ndindex(pose0.shape):
            e = np.zeros_like(pose0)
            e[idx] = h
            fd[idx] = (float(loss(jnp.asarray(pose0 + e))) - float(loss(jnp.asarray(pose0 - e)))
                       ) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())
        # gradient at the rest pose is finite
        assert np.all(np.isfinite(np.asarray(jax.grad(loss)(jnp.zeros((5, 3))))))


def test_vmap_over_poses_and_coefficients(flame, rng):
    model, gt = flame
    poses = 0.2 * rng.normal(size=(3, 5, 3))
    ids = rng.normal(size=(3, 300))
    batch = jax.vmap(lambda i, p: vertices(model, i, None, p))(ids, poses)
    assert batch.shape == (3, model.n_vertices, 3)
    for k in range(3):
        want = flame_numpy(gt, ids[k], np.zeros(100), poses[k])
        assert _rel_err(batch[k], want) <= 1e-5


def test_forward_kinematics_chain():
    # two joints on a chain: rotating joint 0 by 90 degrees about z moves joint 1 around it
    rot = np.stack([np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), np.eye(3)])
    joints = np.array([[0.0, 0, 0], [10.0, 0, 0]])
    a, posed = forward_kinematics(jnp.asarray(rot), jnp.asarray(joints), (-1, 0))
    np.testing.assert_allclose(np.asarray(posed), [[0, 0, 0], [0, 10, 0]], atol=1e-5)
    np.testing.assert_allclose(np.asarray(a[1]) @ np.array([10.0, 0, 0, 1]), [0, 10, 0, 1],
                               atol=1e-5)
    assert pose_feature(jnp.asarray(rot)).shape == (9,)
    assert not np.any(np.asarray(pose_feature(jnp.asarray(np.stack([np.eye(3)] * 3)))))
    with pytest.raises(ValueError, match="precede"):
        check_parents((-1, 2, 0))
    with pytest.raises(ValueError, match="root"):
        check_parents((0, 0))


def test_npz_roundtrip_validate_and_restrict(flame, tmp_path, rng):
    model, gt = flame
    save_npz(model, tmp_path / "flame.npz")
    back = load_npz(tmp_path / "flame.npz")
    assert back.articulation.parents == model.articulation.parents
    a, pose = rng.normal(size=300), 0.3 * rng.normal(size=(5, 3))
    np.testing.assert_allclose(np.asarray(vertices(back, a, None, pose)),
                               np.asarray(vertices(model, a, None, pose)), atol=1e-4)
    # a broken articulation is refused
    with np.load(tmp_path / "flame.npz") as z:
        d = dict(z)
    d["articulation/skinning_weights"] = d["articulation/skinning_weights"][:-1]
    np.savez(tmp_path / "bad.npz", **d)
    with pytest.raises(ModelFormatError) as e:
        load_npz(tmp_path / "bad.npz")
    assert e.value.field == "articulation"
    del d["articulation/skinning_weights"]
    np.savez(tmp_path / "bad2.npz", **d)
    with pytest.raises(ModelFormatError) as e:
        load_npz(tmp_path / "bad2.npz")
    assert e.value.field == "articulation/skinning_weights"

    # restrict keeping the joint-regressor vertices: exact on the kept vertices
    jr = np.asarray(model.articulation.joint_regressor)
    needed = np.any(jr != 0, axis=0)
    mask = needed | (np.arange(model.n_vertices) % 2 == 0)
    sub = restrict(model, mask)
    np.testing.assert_allclose(np.asarray(vertices(sub, a, None, pose)),
                               np.asarray(vertices(model, a, None, pose))[mask], atol=1e-3)
    # dropping a regressor vertex: refitted on a small model, refused on the 400-mode one
    mask2 = mask.copy()
    mask2[np.flatnonzero(needed)[0]] = False
    small = truncate(model, 2, 1)
    sub2 = restrict(small, mask2)
    a2, b2 = rng.normal(size=2), rng.normal(size=1)
    np.testing.assert_allclose(np.asarray(vertices(sub2, a2, b2, pose)),
                               np.asarray(vertices(small, a2, b2, pose))[mask2], atol=1e-2)
    with pytest.raises(ValueError, match="joint regressor"):
        restrict(model, mask2)


def test_validate_rejects_bad_articulation(flame):
    model, _ = flame
    art = model.articulation
    bad = Articulation(art.joint_regressor, np.asarray(art.skinning_weights) * 2.0,
                       art.pose_basis, art.joints_template, art.parents)
    with pytest.raises(ModelFormatError, match="sum to 1"):
        validate(dataclasses.replace(model, articulation=bad))
    bad = Articulation(art.joint_regressor, art.skinning_weights,
                       np.asarray(art.pose_basis)[:10], None, art.parents)
    with pytest.raises(ModelFormatError, match="9 \\(J - 1\\)"):
        validate(dataclasses.replace(model, articulation=bad))
