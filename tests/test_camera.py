"""Tests for jaxface.camera."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import camera as cam
from jaxface import geometry as g

project = jax.jit(cam.project)
unproject = jax.jit(cam.unproject)
to_screen = jax.jit(cam.to_screen)


def _pcam():
    return cam.PerspectiveCamera(
        fx=jnp.float32(1000.0), fy=jnp.float32(1100.0), cx=jnp.float32(320.0),
        cy=jnp.float32(240.0)
    )


def test_known_perspective_projection():
    p = jnp.array([[10.0, -20.0, 500.0], [0.0, 0.0, 800.0]])
    uv = project(_pcam(), p)
    np.testing.assert_allclose(uv, [[1000 * 10 / 500 + 320, 1100 * -20 / 500 + 240], [320, 240]],
                               rtol=1e-6)
    k = cam.intrinsics_matrix(_pcam())
    np.testing.assert_allclose(k, [[1000, 0, 320], [0, 1100, 240], [0, 0, 1]])
    hom = p @ np.asarray(k).T
    np.testing.assert_allclose(uv, hom[:, :2] / hom[:, 2:], rtol=1e-6)
    back = cam.PerspectiveCamera.from_matrix(k)
    np.testing.assert_allclose([back.fx, back.fy, back.cx, back.cy], [1000, 1100, 320, 240])


def test_default_camera_pixel_convention():
    c = cam.default_camera((480, 640), fov_degrees=40.0)
    # principal point at (W/2, H/2): pixel centres are at integer + 0.5
    np.testing.assert_allclose([c.cx, c.cy], [320.0, 240.0])
    f = 240.0 / math.tan(math.radians(20.0))
    np.testing.assert_allclose([c.fx, c.fy], [f, f], rtol=1e-6)
    # a point on the upper edge of the vertical FOV projects to the top image border v = 0
    z = 1000.0
    top = jnp.array([[0.0, -z * math.tan(math.radians(20.0)), z]])
    np.testing.assert_allclose(project(c, top), [[320.0, 0.0]], atol=1e-3)
    with pytest.raises(ValueError, match="fov"):
        cam.default_camera((480, 640), fov_degrees=180.0)
    with pytest.raises(ValueError, match="image_size"):
        cam.default_camera((0, 640))


def test_weak_perspective_and_affine(rng):
    wp = cam.WeakPerspectiveCamera(scale=jnp.float32(2.0), cx=jnp.float32(50.0),
                                   cy=jnp.float32(60.0))
    p = jnp.asarray(rng.normal(size=(7, 3)) * 40, jnp.float32)
    np.testing.assert_allclose(project(wp, p), 2.0 * p[:, :2] + jnp.array([50.0, 60.0]),
                               rtol=1e-6)
    # an affine camera built from a scaled rotation is a weak-perspective camera of rotated points
    r = g.euler_to_matrix(jnp.array([0.2, -0.4, 0.1]))
    pmat = jnp.concatenate([2.0 * r[:2], jnp.array([[50.0], [60.0]])], axis=1)
    aff = cam.AffineCamera.from_matrix(jnp.concatenate([pmat, jnp.array([[0.0, 0, 0, 1]])], 0))
    pr = p @ r.T
    np.testing.assert_allclose(project(aff, p), project(wp, pr), atol=1e-4)
    s_aff, s_wp = to_screen(aff, p), to_screen(wp, pr)
    np.testing.assert_allclose(s_aff.xyz, s_wp.xyz, atol=1e-4)  # depth = rotated z
    np.testing.assert_allclose(s_wp.w, 1.0)
    assert bool(jnp.all(s_wp.valid)) and bool(jnp.all(s_aff.valid))
    with pytest.raises(ValueError, match="last row"):
        cam.AffineCamera.from_matrix(jnp.ones((3, 4)))
    with pytest.raises(TypeError, match="PerspectiveCamera"):
        cam.intrinsics_matrix(wp)


def test_estimate_affine_camera_exact(rng):
    pmat = jnp.asarray(rng.normal(size=(2, 4)) * [[3, 3, 3, 100], [3, 3, 3, 100]], jnp.float32)
    x3 = jnp.asarray(rng.normal(size=(20, 3)) * 50, jnp.float32)
    x2 = x3 @ pmat[:, :3].T + pmat[:, 3]
    w = jnp.ones(20).at[:3].set(0.0)
    x2 = x2.at[:3].add(500.0)  # outliers with zero weight
    est = jax.jit(cam.estimate_affine_camera)(x3, x2, w)
    np.testing.assert_allclose(est.matrix, pmat, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("kind", ["perspective", "weak", "affine"])
def test_project_unproject_round_trip(rng, kind):
    if kind == "perspective":
        c = _pcam()
    elif kind == "weak":
        c = cam.WeakPerspectiveCamera(scale=jnp.float32(1.5), cx=jnp.float32(10.0),
                                      cy=jnp.float32(-5.0))
    else:
        c = cam.AffineCamera(jnp.asarray(rng.normal(size=(2, 4)), jnp.float32))
    p = jnp.asarray(rng.normal(size=(16, 3)) * 30 + [0, 0, 600], jnp.float32)
    s = to_screen(c, p)
    back = unproject(c, s.xyz[:, :2], s.xyz[:, 2])
    np.testing.assert_allclose(back, p, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(s.xyz[:, :2], project(c, p), rtol=1e-6)


def test_look_at():
    r, t = jax.jit(cam.look_at)(jnp.array([0.0, 0.0, 500.0]), jnp.zeros(3),
                                jnp.array([0.0, 1.0, 0.0]))
    # looking down world -z with world +y up: camera x = world x, camera y (down) = world -y
    np.testing.assert_allclose(r, np.diag([1.0, -1.0, -1.0]), atol=1e-7)
    np.testing.assert_allclose(t, [0, 0, 500.0], atol=1e-5)
    # general case: target on the optical axis, world up points to image "up" (-y)
    eye = jnp.array([300.0, -120.0, 410.0])
    target = jnp.array([10.0, 20.0, -30.0])
    pose = cam.Pose.look_at(eye, target)
    _r = np.asarray(pose.rotation)
    np.testing.assert_allclose(_r @ _r.T, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(_r), 1.0, atol=1e-6)
    tc = pose.apply(target)
    np.testing.assert_allclose(tc[:2], [0, 0], atol=1e-3)
    np.testing.assert_allclose(tc[2], np.linalg.norm(eye - target), rtol=1e-6)
    np.testing.assert_allclose(pose.apply(eye), [0, 0, 0], atol=1e-3)
    np.testing.assert_allclose(pose.camera_center(), eye, atol=1e-3)
    up_cam = _r @ np.array([0.0, 1.0, 0.0])
    assert up_cam[1] < -0.9 and abs(up_cam[0]) < 1e-6
    # a point above the target appears higher (smaller v) in the image
    c = cam.default_camera((100, 100))
    v_target = project(c, pose.apply(target[None]))[0, 1]
    v_above = project(c, pose.apply((target + jnp.array([0.0, 10.0, 0.0]))[None]))[0, 1]
    assert v_above < v_target
    inv = pose.inverse()
    np.testing.assert_allclose(inv.apply(pose.apply(eye)), eye, atol=1e-3)


def test_behind_camera_and_z0_are_finite():
    c = _pcam()
    p = jnp.array([[10.0, 5.0, 0.0], [10.0, 5.0, -100.0], [1.0, 2.0, 0.5], [1.0, 2.0, 300.0]])
    s = to_screen(c, p)
    assert np.all(np.isfinite(s.xyz)) and np.all(np.isfinite(s.w))
    np.testing.assert_array_equal(s.valid, [False, False, False, True])
    np.testing.assert_allclose(s.xyz[:3, 2], cam.DEFAULT_NEAR)
    np.testing.assert_allclose(cam.in_front(p), s.valid)
    jac = jax.jit(jax.jacrev(lambda q: cam.project(c, q)))(p)
    assert np.all(np.isfinite(jac))
    # behind the camera the depth gradient is zero (clamped), the x/y gradient is finite
    np.testing.assert_allclose(jac[1, :, 1, 2], 0.0)


def _fd_check(f, x, eps=1e-6, rtol=1e-6, atol=1e-8, seed=0):
    """Reverse-mode gradient of ``sum(w * f(x))`` vs a central difference along a random
    direction, in float64."""
    x = jnp.asarray(x, jnp.float64)
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    w = jax.random.normal(k1, jax.eval_shape(f, x).shape, jnp.float64)
    u = jax.random.normal(k2, x.shape, jnp.float64)

    def s(x):
        return jnp.sum(w * f(x))

    gr = jax.jit(jax.grad(s))(x)
    sj = jax.jit(s)
    fd = (sj(x + eps * u) - sj(x - eps * u)) / (2 * eps)
    np.testing.assert_allclose(jnp.sum(gr * u), fd, rtol=rtol, atol=atol)


def test_gradients_vs_finite_differences(rng):
    with jax.enable_x64(True):
        p = jnp.asarray(rng.normal(size=(6, 3)) * 30 + [0, 0, 500])

        def wrt_intrinsics(k):
            c = cam.PerspectiveCamera(fx=k[0], fy=k[1], cx=k[2], cy=k[3])
            return cam.to_screen(c, p).xyz

        _fd_check(wrt_intrinsics, jnp.array([1000.0, 1100.0, 320.0, 240.0]))

        def wrt_points(q):
            c = cam.PerspectiveCamera(fx=1000.0, fy=1100.0, cx=320.0, cy=240.0)
            return cam.project(c, q)

        _fd_check(wrt_points, p, rtol=1e-5)

        def wrt_pose(v):  # rotation vector + translation -> pixels, as used by fitting
            pose = cam.Pose(g.axis_angle_to_matrix(v[:3]), v[3:])
            return cam.project(cam.PerspectiveCamera(1000.0, 1000.0, 320.0, 240.0), pose.apply(p))

        _fd_check(wrt_pose, jnp.array([0.0, 0.0, 0.0, 5.0, -3.0, 20.0]), rtol=1e-5)

        def weak(k):
            c = cam.WeakPerspectiveCamera(scale=k[0], cx=k[1], cy=k[2])
            return cam.project(c, p)

        _fd_check(weak, jnp.array([2.0, 50.0, 60.0]))


def test_vmap_over_cameras_and_points(rng):
    fx = jnp.array([800.0, 1000.0, 1200.0])
    cams = cam.PerspectiveCamera(fx=fx, fy=fx, cx=jnp.full(3, 320.0), cy=jnp.full(3, 240.0))
    p = jnp.asarray(rng.normal(size=(3, 5, 3)) * 30 + [0, 0, 500], jnp.float32)
    out = jax.jit(jax.vmap(cam.project))(cams, p)
    for i in range(3):
        ci = cam.PerspectiveCamera(fx=fx[i], fy=fx[i], cx=320.0, cy=240.0)
        np.testing.assert_allclose(out[i], project(ci, p[i]), rtol=1e-6)
    # arbitrary leading shapes without vmap
    np.testing.assert_allclose(project(_pcam(), p).shape, (3, 5, 2))


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        cam.project(_pcam(), jnp.zeros((4, 2)))
    with pytest.raises(TypeError, match="camera must be"):
        cam.project(object(), jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        cam.unproject(_pcam(), jnp.zeros((4, 3)), jnp.ones(4))
