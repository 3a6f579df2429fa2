"""Tests for jaxface.geometry: rotations, Similarity, umeyama.

Library calls go through module-level ``jax.jit`` wrappers: one compilation per function and
shape is much cheaper on the shared CPUs than eager op-by-op dispatch.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jaxface import geometry as g

a2m = jax.jit(g.axis_angle_to_matrix)
m2a = jax.jit(g.matrix_to_axis_angle)
a2q = jax.jit(g.axis_angle_to_quaternion)
q2m = jax.jit(g.quaternion_to_matrix)
m2q = jax.jit(g.matrix_to_quaternion)
e2m = jax.jit(g.euler_to_matrix)


def _random_rotvecs(rng: np.random.Generator, n: int, max_angle: float = 3.0) -> np.ndarray:
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    return (axis * rng.uniform(0.05, max_angle, size=(n, 1))).astype(np.float32)


def _assert_rotation(r, atol=1e-5):
    r = np.asarray(r, np.float64)
    eye = np.broadcast_to(np.eye(3), r.shape)
    np.testing.assert_allclose(r @ np.swapaxes(r, -1, -2), eye, atol=atol)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=atol)


# ------------------------------------------------------------------ known values / conventions


def test_axis_angle_and_quaternion_known_values_and_scipy(rng):
    np.testing.assert_allclose(
        a2m(jnp.array([0.0, 0.0, math.pi / 2])) @ np.array([1.0, 0.0, 0.0]), [0, 1, 0], atol=1e-6
    )
    v = _random_rotvecs(rng, 16)
    np.testing.assert_allclose(a2m(v), Rotation.from_rotvec(v).as_matrix(), atol=2e-6)
    # quaternions are scalar-first: 90 degrees about +x is (cos 45, sin 45, 0, 0)
    q = jnp.array([math.cos(math.pi / 4), math.sin(math.pi / 4), 0.0, 0.0])
    np.testing.assert_allclose(q2m(q), [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-6)
    qs = Rotation.from_rotvec(v).as_quat()[:, [3, 0, 1, 2]]  # scipy is scalar-last
    qs *= np.sign(qs[:, :1])
    np.testing.assert_allclose(a2q(v), qs, atol=2e-6)
    np.testing.assert_allclose(
        m2q(Rotation.from_rotvec(v).as_matrix().astype(np.float32)), qs, atol=2e-6
    )


def test_quaternion_multiply_and_conjugate(rng):
    a = a2q(_random_rotvecs(rng, 16))
    b = a2q(_random_rotvecs(rng, 16))
    ab = jax.jit(g.quaternion_multiply)(a, b)
    np.testing.assert_allclose(q2m(ab), q2m(a) @ q2m(b), atol=1e-5)
    conj = jax.jit(g.quaternion_conjugate)(a)
    np.testing.assert_allclose(q2m(conj), np.swapaxes(np.asarray(q2m(a)), -1, -2), atol=1e-6)


def test_euler_convention_pinned():
    """angles = (pitch, yaw, roll) about (x, y, z); R = Rz(roll) @ Ry(yaw) @ Rx(pitch)."""
    a, b, c = 0.3, -0.7, 1.1
    ca, sa, cb, sb, cc, sc = (math.cos(a), math.sin(a), math.cos(b), math.sin(b),
                              math.cos(c), math.sin(c))
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    h = math.pi / 2
    r = e2m(jnp.array([[a, b, c], [0.0, h, 0.0], [0.0, 0.0, h], [h, 0.0, 0.0]]))
    np.testing.assert_allclose(r[0], rz @ ry @ rx, atol=1e-6)
    # the same as scipy's extrinsic "xyz"
    np.testing.assert_allclose(r[0], Rotation.from_euler("xyz", [a, b, c]).as_matrix(), atol=1e-6)
    # a positive yaw turns the optical axis +z towards +x
    np.testing.assert_allclose(r[1] @ np.array([0.0, 0.0, 1.0]), [1, 0, 0], atol=1e-6)
    # a positive roll turns +x towards +y
    np.testing.assert_allclose(r[2] @ np.array([1.0, 0.0, 0.0]), [0, 1, 0], atol=1e-6)
    # a positive pitch turns +y towards +z
    np.testing.assert_allclose(r[3] @ np.array([0.0, 1.0, 0.0]), [0, 0, 1], atol=1e-6)


# ------------------------------------------------------------------ round trips / properties


@jax.jit
def _round_trips(v, e):
    r = g.axis_angle_to_matrix(v)
    q = g.matrix_to_quaternion(r)
    re = g.euler_to_matrix(e)
    return dict(
        r=r,
        v_back=g.matrix_to_axis_angle(r),
        r_from_q=g.quaternion_to_matrix(q),
        v_from_q=g.quaternion_to_axis_angle(q),
        r_from_6d=g.rotation_6d_to_matrix(g.matrix_to_rotation_6d(r)),
        re=re,
        e_back=g.matrix_to_euler(re),
    )


def test_round_trips(rng):
    v = _random_rotvecs(rng, 50, max_angle=3.1)
    e = rng.uniform([-3, -1.5, -3], [3, 1.5, 3], size=(50, 3)).astype(np.float32)
    out = _round_trips(v, e)
    _assert_rotation(out["r"])
    np.testing.assert_allclose(out["v_back"], v, atol=2e-5)
    np.testing.assert_allclose(out["r_from_q"], out["r"], atol=2e-6)
    np.testing.assert_allclose(out["v_from_q"], v, atol=2e-5)
    np.testing.assert_allclose(out["r_from_6d"], out["r"], atol=2e-6)
    _assert_rotation(out["re"])
    np.testing.assert_allclose(out["e_back"], e, atol=5e-5)


def test_small_angles_and_taylor_switch_continuous():
    ths = np.array([0.0, 1e-8, 1e-4, 0.0999, 0.1, 0.1001, 0.5])
    v = np.stack([ths, np.zeros_like(ths), np.zeros_like(ths)], 1)
    with jax.enable_x64(True):
        r, back, q = jax.jit(
            lambda v: (g.axis_angle_to_matrix(v), g.matrix_to_axis_angle(g.axis_angle_to_matrix(v)),
                       g.axis_angle_to_quaternion(v))
        )(jnp.asarray(v))
        np.testing.assert_allclose(r, Rotation.from_rotvec(v).as_matrix(), atol=1e-14)
        np.testing.assert_allclose(back, v, atol=1e-12)
        np.testing.assert_allclose(q[:, 0], np.cos(ths / 2), atol=1e-15)
        np.testing.assert_allclose(q[:, 1], np.sin(ths / 2), atol=1e-15)


def test_near_pi_and_6d_and_gimbal_lock(rng):
    axis = np.array([0.3, -0.5, 0.8])
    axis /= np.linalg.norm(axis)
    v = np.stack([axis * (math.pi - 1e-3), axis * math.pi]).astype(np.float32)
    d6 = rng.normal(size=(30, 6)).astype(np.float32)
    e_lock = jnp.array([[0.4, math.pi / 2, 0.0], [-0.2, -math.pi / 2, 0.3]])

    @jax.jit
    def run(v, d6, e_lock):
        r = g.axis_angle_to_matrix(v)
        back = g.matrix_to_axis_angle(r)
        r_lock = g.euler_to_matrix(e_lock)
        return (r, back, g.axis_angle_to_matrix(back), g.rotation_6d_to_matrix(d6), r_lock,
                g.euler_to_matrix(g.matrix_to_euler(r_lock)))

    r, back, r_back, r6, r_lock, r_lock_back = run(v, d6, e_lock)
    back = np.asarray(back)
    np.testing.assert_allclose(back[0], v[0], atol=1e-4)
    # at exactly pi, v and -v are the same rotation
    assert min(np.abs(back[1] - v[1]).max(), np.abs(back[1] + v[1]).max()) < 1e-4
    np.testing.assert_allclose(r_back, r, atol=1e-5)
    # 6D from arbitrary vectors is a rotation whose first column is the normalised a1
    _assert_rotation(r6)
    np.testing.assert_allclose(
        r6[:, :, 0], d6[:, :3] / np.linalg.norm(d6[:, :3], axis=1, keepdims=True), atol=1e-6
    )
    np.testing.assert_allclose(r_lock_back, r_lock, atol=1e-5)


# ------------------------------------------------------------------ gradients


def _grad_vs_fd(f, xs, seed=0, eps=1e-6, rtol=1e-6, atol=1e-9):
    """Reverse-mode gradient of a random projection ``sum(w * f(x))`` at a batch of float64
    points ``xs`` against central differences along random directions (jitted, vmapped)."""
    xs = jnp.asarray(xs, jnp.float64)
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    w = jax.random.normal(k1, jax.eval_shape(f, xs[0]).shape, jnp.float64)
    u = jax.random.normal(k2, xs.shape, jnp.float64)

    def scalar(x):
        return jnp.sum(w * f(x))

    grads = jax.jit(jax.vmap(jax.grad(scalar)))(xs)
    fb = jax.jit(jax.vmap(scalar))
    fd = (fb(xs + eps * u) - fb(xs - eps * u)) / (2 * eps)
    analytic = jnp.sum((grads * u).reshape(xs.shape[0], -1), axis=1)
    assert np.all(np.isfinite(grads))
    np.testing.assert_allclose(analytic, fd, rtol=rtol, atol=atol)


_POINTS = [[0.0, 0.0, 0.0], [1e-3, -2e-3, 5e-4], [0.05, 0.02, -0.06], [0.06, 0.04, -0.06],
           [0.3, -1.2, 0.7], [0.0, 0.1, 2.9]]


def test_gradients_vs_finite_differences():
    """Includes theta = 0 (Taylor branches) and the identity matrix; gradients are finite."""
    with jax.enable_x64(True):
        v = jnp.asarray(_POINTS, jnp.float64)
        _grad_vs_fd(g.axis_angle_to_matrix, v)
        _grad_vs_fd(g.axis_angle_to_quaternion, v)
        r = jax.jit(g.axis_angle_to_matrix)(v)
        _grad_vs_fd(g.matrix_to_axis_angle, r)  # covers matrix_to_quaternion too
        _grad_vs_fd(g.matrix_to_euler, r)
        d6 = jnp.concatenate([v + jnp.array([1.0, 0, 0]), v[:, ::-1] + jnp.array([0, 1.0, 0])], 1)
        _grad_vs_fd(g.rotation_6d_to_matrix, d6)


def test_gradients_at_pi_gimbal_lock_and_identity():
    w3 = jnp.array([[0.3, -1.1, 0.7], [0.9, 0.2, -0.5], [-0.4, 0.8, 1.3]])
    w4 = jnp.array([0.5, -0.3, 1.2, 0.7])

    @jax.jit
    def grads(v, rs):
        def per_matrix(r):
            return (jax.grad(lambda r: jnp.sum(w3[0] * g.matrix_to_axis_angle(r)))(r),
                    jax.grad(lambda r: jnp.sum(w4 * g.matrix_to_quaternion(r)))(r),
                    jax.grad(lambda r: jnp.sum(w3[1] * g.matrix_to_euler(r)))(r))

        return [jax.jvp(g.matrix_to_axis_angle, (jnp.eye(3),), (g.skew(w3[2]),))[1],
                *jax.vmap(per_matrix)(rs), jax.jacfwd(g.axis_angle_to_matrix)(v)]

    r_pi = a2m(jnp.array([0.0, 0.0, math.pi]))
    r_lock = e2m(jnp.array([0.4, math.pi / 2, 0.0]))  # gimbal lock
    r_pi2 = a2m(jnp.array([math.pi - 1e-6, 0.0, 0.0]))
    out = grads(jnp.zeros(3), jnp.stack([r_pi, r_lock, r_pi2]))
    for j in out:
        assert np.all(np.isfinite(j)), j
    # d rotvec / d R at the identity is the vee of the skew part
    np.testing.assert_allclose(out[0], w3[2], atol=1e-6)
    for i in range(3):  # d R / d rotvec at 0 is the generator skew(e_i)
        np.testing.assert_allclose(out[-1][..., i], g.skew(jnp.eye(3)[i]), atol=1e-7)


# ------------------------------------------------------------------ jit / vmap


def test_vmap_matches_batched_call(rng):
    v = _random_rotvecs(rng, 8)
    batched = a2m(v)
    np.testing.assert_allclose(jax.jit(jax.vmap(g.axis_angle_to_matrix))(v), batched, atol=1e-7)
    r2 = jnp.stack([batched, batched])  # (2, 8, 3, 3): arbitrary leading shape
    np.testing.assert_allclose(
        jax.jit(jax.vmap(g.matrix_to_axis_angle))(r2)[1], m2a(batched), atol=1e-6
    )


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        g.axis_angle_to_matrix(jnp.zeros(4))
    with pytest.raises(ValueError, match="3, 3"):
        g.matrix_to_quaternion(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="6"):
        g.rotation_6d_to_matrix(jnp.zeros(5))


# ------------------------------------------------------------------ Similarity / umeyama


def _random_similarity(rng) -> g.Similarity:
    return g.Similarity(
        scale=jnp.float32(rng.uniform(0.5, 2.0)),
        rotation=a2m(_random_rotvecs(rng, 1)[0]),
        translation=jnp.asarray(rng.normal(size=3) * 50, jnp.float32),
    )


def test_similarity_apply_compose_inverse(rng):
    a, b = _random_similarity(rng), _random_similarity(rng)
    p = jnp.asarray(rng.normal(size=(10, 3)) * 30, jnp.float32)

    @jax.jit
    def run(a, b, p):
        return (a.apply(p), a.compose(b).apply(p), a.apply(b.apply(p)),
                a.inverse().apply(a.apply(p)), a.compose(a.inverse()).to_matrix(),
                g.Similarity.from_matrix(a.to_matrix()), g.Similarity.identity().apply(p))

    ap, abp, a_bp, p_back, ident, back, p_id = run(a, b, p)
    np.testing.assert_allclose(
        ap, a.scale * p @ np.asarray(a.rotation).T + a.translation, rtol=1e-5, atol=1e-4
    )
    np.testing.assert_allclose(abp, a_bp, atol=1e-3)
    np.testing.assert_allclose(p_back, p, atol=1e-4)
    np.testing.assert_allclose(ident, np.eye(4), atol=1e-4)
    np.testing.assert_allclose(back.scale, a.scale, rtol=1e-6)
    np.testing.assert_allclose(back.rotation, a.rotation, atol=1e-6)
    np.testing.assert_allclose(p_id, p)
    # a pytree: vmap over a batch of transforms
    stacked = jax.tree.map(lambda x, y: jnp.stack([x, y]), a, b)
    out = jax.jit(jax.vmap(lambda s, q: s.apply(q), in_axes=(0, None)))(stacked, p)
    np.testing.assert_allclose(out[1], b.apply(p), atol=1e-4)


umeyama_j = jax.jit(g.umeyama, static_argnames="with_scale")


@pytest.mark.parametrize("with_scale", [True, False])
def test_umeyama_recovers_transform(rng, with_scale):
    t = _random_similarity(rng)
    if not with_scale:
        t = g.Similarity(jnp.float32(1.0), t.rotation, t.translation)
    src = jnp.asarray(rng.normal(size=(40, 3)) * 50, jnp.float32)
    dst = t.apply(src)
    est = umeyama_j(src, dst, with_scale=with_scale)
    np.testing.assert_allclose(est.scale, t.scale, rtol=1e-5)
    np.testing.assert_allclose(est.rotation, t.rotation, atol=1e-5)
    np.testing.assert_allclose(est.translation, t.translation, atol=1e-3)
    np.testing.assert_allclose(est.apply(src), dst, atol=1e-3)


def test_umeyama_reflection_safe_weights_and_2d(rng):
    src = jnp.asarray(rng.normal(size=(40, 3)), jnp.float32)
    mirrored = src * jnp.array([-1.0, 1.0, 1.0])  # a reflection is NOT a similarity
    est = umeyama_j(src, mirrored)
    _assert_rotation(est.rotation)
    # weights: outliers with zero weight are ignored
    t = _random_similarity(rng)
    dst = t.apply(src).at[:5].add(1000.0)
    w = jnp.ones(40).at[:5].set(0.0)
    est = jax.jit(g.umeyama)(src, dst, weights=w)
    np.testing.assert_allclose(est.rotation, t.rotation, atol=1e-4)
    np.testing.assert_allclose(est.scale, t.scale, rtol=1e-4)
    # 2D
    ang = 0.7
    r2 = jnp.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    s2 = src[:, :2]
    est2 = umeyama_j(s2, 2.0 * s2 @ r2.T + jnp.array([3.0, -1.0]))
    np.testing.assert_allclose(est2.rotation, r2, atol=1e-5)
    np.testing.assert_allclose(est2.scale, 2.0, rtol=1e-5)
    with pytest.raises(ValueError, match="equal shapes"):
        g.umeyama(src, src[:, :2])


def test_umeyama_gradient_vs_finite_differences(rng):
    with jax.enable_x64(True):
        src = jnp.asarray(rng.normal(size=(12, 3)))
        dst = jnp.asarray(rng.normal(size=(3, 12, 3))) + 2.0 * src

        def f(d):
            s = g.umeyama(src, d)
            return jnp.concatenate([s.rotation.ravel(), s.translation, s.scale[None]])

        _grad_vs_fd(f, dst, rtol=1e-5)
