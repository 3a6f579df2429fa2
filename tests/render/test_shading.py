"""Tests for jaxface.render.shading: SH Lambertian lighting and Phong / Blinn-Phong."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.render import shading as sh

sh_shading = jax.jit(sh.sh_shading)
shade_phong = jax.jit(sh.shade_phong, static_argnames="blinn")


def _fibonacci_sphere(n: int) -> np.ndarray:
    """Nearly uniform unit vectors: an equal-weight quadrature rule on the sphere."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = math.pi * (1.0 + math.sqrt(5.0)) * i
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _random_normals(rng, n):
    v = rng.normal(size=(n, 3))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_sh_basis_constants_and_orthonormality():
    c = sh.SH_CONSTANTS
    np.testing.assert_allclose(c, [0.282095, 0.488603, 1.092548, 0.315392, 0.546274], atol=1e-6)
    dirs = _fibonacci_sphere(20000)
    y = np.asarray(jax.jit(sh.sh_basis)(dirs), np.float64)
    gram = 4.0 * math.pi * (y.T @ y) / len(dirs)
    np.testing.assert_allclose(gram, np.eye(9), atol=2e-3)
    # the order (l, m) = (0,0), (1,-1), (1,0), (1,1), (2,-2), (2,-1), (2,0), (2,1), (2,2)
    n = np.array([[0.6, 0.0, 0.8]])
    y0 = np.asarray(sh.sh_basis(n))[0]
    expected = [c[0], 0.0, c[1] * 0.8, c[1] * 0.6, 0.0, 0.0, c[3] * (3 * 0.64 - 1),
                c[2] * 0.48, c[4] * 0.36]
    np.testing.assert_allclose(y0, expected, atol=1e-6)
    # normals are normalised first
    np.testing.assert_allclose(sh.sh_basis(n * 7.0), sh.sh_basis(n), atol=1e-6)


def test_matches_ramamoorthi_hanrahan_c1_c5(rng):
    """E(n) from R&H's eq. 12 (c1..c5, their coefficient naming) equals pi * sh_shading."""
    c1, c2, c3, c4, c5 = 0.429043, 0.511664, 0.743125, 0.886227, 0.247708
    lc = rng.normal(size=9)  # L00, L1-1, L10, L11, L2-2, L2-1, L20, L21, L22
    L00, L1m1, L10, L11, L2m2, L2m1, L20, L21, L22 = lc
    n = _random_normals(rng, 32).astype(np.float64)
    x, y, z = n.T
    e = (c1 * L22 * (x * x - y * y) + c3 * L20 * z * z + c4 * L00 - c5 * L20
         + 2 * c1 * (L2m2 * x * y + L21 * x * z + L2m1 * y * z)
         + 2 * c2 * (L11 * x + L1m1 * y + L10 * z))
    ours = np.asarray(sh_shading(n.astype(np.float32), lc.astype(np.float32)))
    np.testing.assert_allclose(math.pi * ours, e, rtol=1e-5, atol=1e-5)


def test_constant_environment_gives_constant_shading(rng):
    n = _random_normals(rng, 100)
    coeffs = sh.sh_ambient(jnp.array([0.2, 0.5, 0.9]))
    assert coeffs.shape == (9, 3)
    np.testing.assert_allclose(coeffs[0], np.array([0.2, 0.5, 0.9]) * 2 * math.sqrt(math.pi),
                               rtol=1e-6)
    np.testing.assert_allclose(sh_shading(n, coeffs), np.tile([0.2, 0.5, 0.9], (100, 1)),
                               rtol=1e-6)
    # irradiance of a constant environment by numerical integration: E = pi * c
    albedo = jnp.array([0.5, 0.25, 1.0])
    out = jax.jit(sh.shade_lambertian_sh)(albedo, n, sh.sh_ambient(1.0))
    np.testing.assert_allclose(out, np.tile(albedo, (100, 1)), rtol=1e-6)


def test_directional_light_approximates_clamped_cosine():
    light = np.array([0.3, -0.5, 0.8])
    light /= np.linalg.norm(light)
    coeffs = sh.sh_directional(light, intensity=jnp.array([1.0, 2.0, 0.5]))
    n = _fibonacci_sphere(4000).astype(np.float32)
    shade = np.asarray(sh_shading(n, coeffs))
    t = n @ light
    exact = np.maximum(t, 0.0)[:, None] * np.array([1.0, 2.0, 0.5])
    err = np.abs(shade - exact) / np.array([1.0, 2.0, 0.5])
    # the order-2 approximation of max(0, t) is 1/4 + t/2 + 5/32 (3 t^2 - 1) (R&H A_l factors)
    approx = 0.25 + t / 2 + 5.0 / 32.0 * (3 * t * t - 1)
    np.testing.assert_allclose(shade[:, 0], approx, atol=2e-5)
    assert err.max() < 0.094 and err.max() > 0.09  # max error 3/32 at t = 0
    # least-squares optimality in L2 on the sphere: the mean error is much smaller
    assert np.sqrt(np.mean(err**2)) < 0.05


def test_fit_sh_lstsq_recovers_coefficients(rng):
    truth = jnp.asarray(rng.normal(size=(9, 3)) * [[1.0]] * 0.3 + sh.sh_ambient(0.6), jnp.float32)
    n = _random_normals(rng, 400).reshape(20, 20, 3)  # a per-pixel normal map
    albedo = jnp.asarray(rng.uniform(0.2, 0.9, size=(20, 20, 3)), jnp.float32)
    colors = jax.jit(sh.shade_lambertian_sh)(albedo, n, truth)
    fit_j = jax.jit(sh.fit_sh_lstsq)
    fit = fit_j(albedo, n, colors, jnp.ones((20, 20)))
    np.testing.assert_allclose(fit, truth, atol=2e-4)
    # weights: corrupted pixels with zero weight do not matter
    bad = colors.at[:3].set(5.0)
    w = jnp.ones((20, 20)).at[:3].set(0.0)
    np.testing.assert_allclose(fit_j(albedo, n, bad, w), truth, atol=2e-4)
    # grey light shared by the channels
    grey = jnp.tile(truth[:, :1], (1, 3))
    colors = jax.jit(sh.shade_lambertian_sh)(albedo, n, grey)
    fit = jax.jit(sh.fit_sh_lstsq, static_argnames="shared_channels")(
        albedo, n, colors, shared_channels=True
    )
    np.testing.assert_allclose(fit, grey, atol=2e-4)
    with pytest.raises(ValueError, match="leading shapes"):
        sh.fit_sh_lstsq(albedo, n[:5], colors)


def _scene():
    albedo = jnp.array([0.5, 0.4, 0.3])
    points = jnp.zeros((1, 3))
    normals = jnp.array([[0.0, 0.0, 1.0]])
    eye = jnp.array([0.0, 0.0, 10.0])  # v = (0, 0, 1)
    mat = sh.PhongMaterial(ambient=1.0, diffuse=1.0, specular=0.5, shininess=10.0)
    return albedo, points, normals, eye, mat


def test_phong_hand_computed():
    albedo, points, normals, eye, mat = _scene()
    light = sh.DirectionalLight(direction=jnp.array([0.0, 0.6, 0.8]), color=jnp.ones(3),
                                intensity=2.0)
    # n.l = 0.8; Blinn: n.h = 1.8 / sqrt(3.6), (n.h)^10 = 0.9^5 = 0.59049
    out = shade_phong(albedo, points, normals, eye, [light], mat, ambient=0.1, blinn=True)
    np.testing.assert_allclose(out[0], albedo * (0.1 + 2 * 0.8) + 0.5 * 2 * 0.59049, rtol=1e-5)
    # Phong: r = (0, -0.6, 0.8), r.v = 0.8, 0.8^10 = 0.1073741824
    out = shade_phong(albedo, points, normals, eye, [light], mat, ambient=0.1, blinn=False)
    np.testing.assert_allclose(out[0], albedo * 1.7 + 0.5 * 2 * 0.1073741824, rtol=1e-5)
    # point light at distance 5 in the same direction, attenuation 1 / (1 + 0.04 d^2) = 0.5
    pl = sh.PointLight(position=jnp.array([0.0, 3.0, 4.0]), color=jnp.array([1.0, 0.5, 0.25]),
                       intensity=2.0, attenuation=jnp.array([1.0, 0.0, 0.04]))
    out = shade_phong(albedo, points, normals, eye, [pl], mat, ambient=0.0, blinn=True)
    rad = np.array([1.0, 0.5, 0.25]) * 2.0 * 0.5
    np.testing.assert_allclose(out[0], albedo * rad * 0.8 + 0.5 * rad * 0.59049, rtol=1e-5)
    # two lights add up
    both = shade_phong(albedo, points, normals, eye, [light, pl], mat, ambient=0.1, blinn=True)
    one = shade_phong(albedo, points, normals, eye, [light], mat, ambient=0.1, blinn=True)
    np.testing.assert_allclose(both, one + out, rtol=1e-5)


def test_phong_light_behind_surface_only_ambient():
    albedo, points, normals, eye, mat = _scene()
    light = sh.DirectionalLight(direction=jnp.array([0.0, 0.6, -0.8]))
    out = shade_phong(albedo, points, normals, eye, [light], mat, ambient=0.3, blinn=True)
    np.testing.assert_allclose(out[0], albedo * 0.3, rtol=1e-6)
    out = shade_phong(albedo, points, normals, eye, [light], mat, ambient=0.3, blinn=False)
    np.testing.assert_allclose(out[0], albedo * 0.3, rtol=1e-6)


def _fd_check(f, x, eps=1e-6, rtol=1e-6, atol=1e-9, seed=0):
    x = jnp.asarray(x, jnp.float64)
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    w = jax.random.normal(k1, jax.eval_shape(f, x).shape, jnp.float64)
    u = jax.random.normal(k2, x.shape, jnp.float64)

    def s(x):
        return jnp.sum(w * f(x))

    gr = jax.jit(jax.grad(s))(x)
    assert np.all(np.isfinite(gr))
    sj = jax.jit(s)
    fd = (sj(x + eps * u) - sj(x - eps * u)) / (2 * eps)
    np.testing.assert_allclose(jnp.sum(gr * u), fd, rtol=rtol, atol=atol)


def test_gradients_vs_finite_differences(rng):
    with jax.enable_x64(True):
        n = jnp.asarray(_random_normals(rng, 16), jnp.float64)
        coeffs = jnp.asarray(rng.normal(size=(9, 3)), jnp.float64)
        albedo = jnp.asarray(rng.uniform(0.2, 0.9, size=(16, 3)))
        _fd_check(lambda q: sh.shade_lambertian_sh(albedo, q, coeffs), n)
        _fd_check(lambda c: sh.shade_lambertian_sh(albedo, n, c), coeffs)
        pts = jnp.asarray(rng.normal(size=(16, 3)) * 10)
        # keep every sample away from the n.l = 0 kink
        light_dir = jnp.array([0.2, -0.3, 0.9])
        n_lit = n * jnp.where(n @ light_dir < 0, -1.0, 1.0)[:, None]
        n_lit = n_lit + 0.3 * light_dir

        def phong(params):
            ld, shin = params[:3], params[3]
            lights = [sh.DirectionalLight(direction=ld, color=jnp.array([1.0, 0.9, 0.8])),
                      sh.PointLight(position=jnp.array([5.0, -40.0, 60.0]),
                                    attenuation=jnp.array([1.0, 0.01, 0.0]))]
            mat = sh.PhongMaterial(ambient=0.5, diffuse=0.8, specular=0.4, shininess=shin)
            return sh.shade_phong(albedo, pts, n_lit, jnp.array([0.0, 0.0, 100.0]), lights, mat,
                                  ambient=0.1)

        _fd_check(phong, jnp.concatenate([light_dir, jnp.array([12.0])]), rtol=1e-5)
        _fd_check(lambda q: sh.shade_phong(albedo, pts, q, jnp.array([0.0, 0.0, 100.0]),
                                           [sh.DirectionalLight(light_dir)],
                                           sh.PhongMaterial(specular=0.5, shininess=8.0)),
                  n_lit, rtol=1e-5)


def test_gradient_finite_at_degenerate_inputs():
    """Zero normals, grazing light and a shininess derivative at n.h = 0 stay finite."""
    def f(x):
        normals = jnp.stack([x[:3], jnp.zeros(3)])  # one zero normal
        light = sh.DirectionalLight(direction=jnp.array([1.0, 0.0, 0.0]))  # grazing
        mat = sh.PhongMaterial(specular=1.0, shininess=x[3])
        a = sh.shade_phong(jnp.ones(3), jnp.zeros((2, 3)), normals, jnp.array([0.0, 0.0, 5.0]),
                           [light], mat)
        return jnp.sum(a) + jnp.sum(sh.sh_shading(normals, sh.sh_ambient(0.5)))

    grad = jax.jit(jax.grad(f))(jnp.array([0.0, 0.0, 1.0, 16.0]))
    assert np.all(np.isfinite(grad))


def test_vmap_and_image_shapes(rng):
    n = _random_normals(rng, 48).reshape(2, 4, 6, 3)  # batch of 2 normal maps
    coeffs = jnp.stack([sh.sh_ambient(0.5), sh.sh_directional(jnp.array([0.0, 0.0, -1.0]))])
    out = jax.jit(jax.vmap(sh.sh_shading))(n, coeffs)
    assert out.shape == (2, 4, 6, 3)
    np.testing.assert_allclose(out[1], sh_shading(n[1], coeffs[1]), rtol=1e-6)
    np.testing.assert_allclose(out[0], 0.5, rtol=1e-6)
    # grey (9,) coefficients give a (...,) image
    assert sh_shading(n[0], coeffs[0][:, 0]).shape == (4, 6)
    # lights are pytrees: vmap over a batch of light directions
    dirs = jnp.asarray(_random_normals(rng, 5))

    def one(d):
        return sh.shade_phong(jnp.ones(3), jnp.zeros((4, 6, 3)), n[0], jnp.array([0, 0, 9.0]),
                              [sh.DirectionalLight(d)])

    batched = jax.jit(jax.vmap(one))(dirs)
    assert batched.shape == (5, 4, 6, 3)
    np.testing.assert_allclose(batched[2], jax.jit(one)(dirs[2]), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(9,\) or \(9, C\)"):
        sh.sh_shading(n, jnp.ones((4, 3)))
