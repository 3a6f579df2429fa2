"""Shading: second-order spherical-harmonics Lambertian lighting and Phong / Blinn-Phong.

All functions take normals (and points) with any leading shape ``(..., 3)``: per-vertex arrays
``(V, 3)`` or per-pixel images ``(H, W, 3)`` alike. Normals are normalised internally (zero
normals stay zero and shade with the ambient term only). Lights, normals and points must be in
one frame (world or camera).

Spherical harmonics (survey eqs 9-10)
-------------------------------------
The Lambertian image ``I = A * max(0, l . n)`` (eq. 9) under a general distant environment is
approximated to second order (eq. 10), ``I(x) ~= A(x) * gamma^T Y(n(x))``.

Basis: the 9 real, orthonormal SH functions (no Condon-Shortley phase), in the order
``(l, m) = (0,0), (1,-1), (1,0), (1,1), (2,-2), (2,-1), (2,0), (2,1), (2,2)``, of a unit
normal ``n = (x, y, z)``::

    Y00  = 0.282095                      (1 / (2 sqrt(pi)))
    Y1-1 = 0.488603 y,  Y10 = 0.488603 z,  Y11 = 0.488603 x          (sqrt(3 / (4 pi)))
    Y2-2 = 1.092548 xy, Y2-1 = 1.092548 yz, Y21 = 1.092548 xz        (sqrt(15 / (4 pi)))
    Y20  = 0.315392 (3 z^2 - 1)                                       (sqrt(5 / (16 pi)))
    Y22  = 0.546274 (x^2 - y^2)                                       (sqrt(15 / (16 pi)))

Coefficients ``sh`` of shape ``(9, 3)`` (or ``(9,)`` for grey light): row ``k`` is basis
function ``k`` above, column ``c`` is the colour channel (R, G, B). They are the SH coefficients
``L_lm`` of the incident *radiance* ``L(omega)`` of a distant environment. Following Ramamoorthi &
Hanrahan (2001, "An efficient representation for irradiance environment maps"), the irradiance
is ``E(n) = sum_lm pi A_l L_lm Y_lm(n)`` with the clamped-cosine convolution factors
``pi A_0 = pi``, ``pi A_1 = 2 pi / 3``, ``pi A_2 = pi / 4``, and the outgoing radiance of a
Lambertian surface of albedo ``rho`` is ``rho E(n) / pi``. Hence

    sh_shading(n, sh) = E(n) / pi = sum_k A_l(k) Y_k(n) sh[k]  =  irradiance_basis(n) @ sh,
    irradiance_basis(n)[k] = A_l(k) Y_k(n),  A = (1, 2/3, 2/3, 2/3, 1/4, 1/4, 1/4, 1/4, 1/4).

(This equals R&H's ``c1..c5`` form, ``c1 = 0.429043, c2 = 0.511664, c3 = 0.743125,
c4 = 0.886227, c5 = 0.247708``, divided by ``pi``.) The survey's ``gamma^T Y(n)`` is
``sh^T irradiance_basis(n)``. Normalisation consequences:

* a constant environment of radiance ``c`` has ``L_00 = 2 sqrt(pi) c`` and shades every normal
  with exactly ``c`` (:func:`sh_ambient`);
* a directional light of intensity ``I`` towards ``l`` (:func:`sh_directional`, coefficients
  ``pi I Y_k(l)``) shades ``~= I max(0, n . l)``, the Phong diffuse term; the order-2
  approximation error is at most ``0.094 I`` (at ``n . l = 0``; ``0.0625 I`` at ``n . l = +-1``).

Phong / Blinn-Phong
-------------------
``colour = albedo * (k_a * ambient + sum_j k_d * E_j max(0, n.l_j))
+ sum_j k_s * E_j * [n.l_j > 0] * spec_j``, with ``E_j = colour_j * intensity_j *
attenuation_j``, ``spec_j = max(0, n.h_j)^shininess`` (Blinn, ``h = normalize(l + v)``) or
``max(0, r_j.v)^shininess`` (Phong, ``r = 2 (n.l) n - l``), ``v`` the unit vector from the point to
the eye. Point lights attenuate with ``1 / (c0 + c1 d + c2 d^2)``.

Shadows: ``shade_phong(..., visibility=...)`` multiplies each light's diffuse and specular terms
by a per-point visibility in [0, 1], e.g. from the shadow maps of :mod:`jaxface.render.shadow`.

Gaps: the SH model has no self-occlusion (no visibility term for environment lighting).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxface._pytree import pytree_dataclass, static_field

Array = jax.Array

__all__ = [
    "SH_BAND_FACTORS",
    "SH_CONSTANTS",
    "DirectionalLight",
    "PhongLighting",
    "PhongMaterial",
    "PointLight",
    "fit_sh_lstsq",
    "irradiance_basis",
    "sh_ambient",
    "sh_basis",
    "sh_directional",
    "sh_shading",
    "shade_lambertian_sh",
    "shade_phong",
]

_PI = math.pi
SH_CONSTANTS = (
    0.5 / math.sqrt(_PI),  # Y00
    math.sqrt(3.0 / (4.0 * _PI)),  # Y1m
    math.sqrt(15.0 / (4.0 * _PI)),  # Y2-2, Y2-1, Y21
    math.sqrt(5.0 / (16.0 * _PI)),  # Y20
    math.sqrt(15.0 / (16.0 * _PI)),  # Y22
)
"""Real SH normalisation constants ``(0.282095, 0.488603, 1.092548, 0.315392, 0.546274)``."""

SH_BAND_FACTORS = (1.0, 2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0, 0.25, 0.25, 0.25, 0.25, 0.25)
"""``A_l`` per coefficient: the Lambertian (clamped-cosine) kernel divided by ``pi``."""


def _float(x: Any) -> Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _vec3(x: Any, name: str) -> Array:
    x = _float(x)
    if x.ndim < 1 or x.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (..., 3), got {tuple(x.shape)}")
    return x


def _normalize(v: Array) -> Array:
    sq = jnp.sum(v * v, axis=-1, keepdims=True)
    return v / jnp.sqrt(jnp.maximum(sq, 1e-24))


def _check_sh(sh: Any) -> Array:
    sh = _float(sh)
    if sh.ndim not in (1, 2) or sh.shape[0] != 9:
        raise ValueError(f"sh must have shape (9,) or (9, C), got {tuple(sh.shape)}")
    return sh


# --------------------------------------------------------------------------------------------
# spherical harmonics
# --------------------------------------------------------------------------------------------


def sh_basis(normals: Any) -> Array:
    """The 9 real orthonormal SH functions ``Y_k(n)`` (order: module doc). (..., 3) -> (..., 9).

    ``normals`` are normalised first.
    """
    n = _normalize(_vec3(normals, "normals"))
    x, y, z = n[..., 0], n[..., 1], n[..., 2]
    c0, c1, c2, c3, c4 = SH_CONSTANTS
    return jnp.stack(
        [
            jnp.full_like(x, c0),
            c1 * y,
            c1 * z,
            c1 * x,
            c2 * x * y,
            c2 * y * z,
            c3 * (3.0 * z * z - 1.0),
            c2 * x * z,
            c4 * (x * x - y * y),
        ],
        axis=-1,
    )


def irradiance_basis(normals: Any) -> Array:
    """``A_l Y_k(n)``: the basis of survey eq. 10, ``sh_shading = irradiance_basis @ sh``."""
    b = sh_basis(normals)
    return b * jnp.asarray(SH_BAND_FACTORS, b.dtype)


def sh_shading(normals: Any, sh: Any) -> Array:
    """Lambertian shading (``E / pi``, the radiance of a white surface) of SH lighting.

    Args:
      normals: (..., 3).
      sh: (9, C) radiance coefficients (C colour channels, usually 3) or (9,) for grey light.
    Returns:
      (..., C), or (...,) for ``sh`` of shape (9,). Not clamped (can be slightly negative).
    """
    sh = _check_sh(sh)
    return jnp.matmul(irradiance_basis(normals), sh, precision=jax.lax.Precision.HIGHEST)


def shade_lambertian_sh(albedo: Any, normals: Any, sh: Any) -> Array:
    """``albedo * sh_shading(normals, sh)`` (survey eq. 10). albedo (..., C) or broadcastable."""
    return _float(albedo) * sh_shading(normals, sh)


def sh_ambient(level: Any = 1.0, channels: int = 3) -> Array:
    """Coefficients (9, channels) of a constant environment that shades every normal with
    ``level`` (scalar or (channels,)): ``L_00 = 2 sqrt(pi) level``, all others 0."""
    lv = jnp.broadcast_to(_float(level), (channels,))
    return jnp.zeros((9, channels), lv.dtype).at[0].set(lv / SH_CONSTANTS[0])


def sh_directional(direction: Any, intensity: Any = 1.0, channels: int = 3) -> Array:
    """Project a distant directional light onto the SH basis.

    Args:
      direction: (3,) direction from the surface *towards* the light (normalised here).
      intensity: scalar or (channels,) colour intensity.
      channels: number of colour channels C (static).
    Returns:
      (9, C) coefficients ``pi * intensity * Y_k(direction)``, for which ``sh_shading(n)``
      approximates ``intensity * max(0, n . direction)`` (error <= 0.094 * intensity).
    """
    y = sh_basis(_vec3(direction, "direction"))
    inten = jnp.broadcast_to(_float(intensity), (channels,))
    return _PI * y[:, None] * inten[None, :]


def fit_sh_lstsq(
    albedo: Any,
    normals: Any,
    colors: Any,
    weights: Any = None,
    regularization: float = 0.0,
    shared_channels: bool = False,
) -> Array:
    """Least-squares SH lighting: ``argmin_sh sum w |albedo * sh_shading(n, sh) - colors|^2
    + regularization * |sh|^2``, one independent 9-vector per channel.

    Args:
      albedo: (..., C) or broadcastable to ``colors`` (e.g. (..., 1) or a scalar).
      normals: (..., 3) with the same leading shape as ``colors``.
      colors: (..., C) observed intensities.
      weights: optional (...,) non-negative sample weights (e.g. a face mask).
      regularization: Tikhonov weight (>= 0) on the coefficients.
      shared_channels: static; fit one grey 9-vector for all channels (white light) and
        return it tiled to (9, C).
    Returns:
      (9, C) coefficients in the layout of :func:`sh_shading`. Jit-able (the SVD-based solver
      returns the minimum-norm solution when the normals do not excite all 9 functions).
    """
    colors = _float(colors)
    normals = _vec3(normals, "normals")
    if colors.ndim < 1 or colors.shape[:-1] != normals.shape[:-1]:
        raise ValueError(
            f"colors (..., C) and normals (..., 3) need equal leading shapes, got "
            f"{tuple(colors.shape)} and {tuple(normals.shape)}"
        )
    c = colors.shape[-1]
    albedo = jnp.broadcast_to(_float(albedo), colors.shape)
    basis = irradiance_basis(normals).reshape(-1, 9)  # (P, 9)
    alb = albedo.reshape(-1, c)
    obs = colors.reshape(-1, c)
    p = basis.shape[0]
    if weights is None:
        sw = jnp.ones((p,), basis.dtype)
    else:
        w = _float(weights)
        if w.shape != colors.shape[:-1]:
            raise ValueError(f"weights must have shape {colors.shape[:-1]}, got {w.shape}")
        sw = jnp.sqrt(jnp.maximum(w.reshape(p), 0.0))
    reg_rows = jnp.sqrt(jnp.asarray(regularization, basis.dtype)) * jnp.eye(9, dtype=basis.dtype)

    def solve(design: Array, target: Array) -> Array:
        a = jnp.concatenate([design, reg_rows], axis=0)
        b = jnp.concatenate([target, jnp.zeros((9,), target.dtype)], axis=0)
        return jnp.linalg.lstsq(a, b)[0]

    if shared_channels:
        design = (alb.T[:, :, None] * basis[None] * sw[None, :, None]).reshape(-1, 9)
        target = (obs.T * sw[None]).reshape(-1)
        g = solve(design, target)
        return jnp.tile(g[:, None], (1, c))
    designs = alb.T[:, :, None] * basis[None] * sw[None, :, None]  # (C, P, 9)
    targets = obs.T * sw[None]  # (C, P)
    return jax.vmap(solve)(designs, targets).T


# --------------------------------------------------------------------------------------------
# Phong / Blinn-Phong
# --------------------------------------------------------------------------------------------


@pytree_dataclass
class DirectionalLight:
    """A distant light.

    Attributes:
      direction: (3,) from the surface *towards* the light (normalised when used).
      color: (3,) RGB colour.
      intensity: () scalar multiplier.
    """

    direction: Any
    color: Any = (1.0, 1.0, 1.0)
    intensity: Any = 1.0


@pytree_dataclass
class PointLight:
    """A point light with attenuation ``1 / (c0 + c1 d + c2 d^2)`` (``d`` in mm).

    Attributes:
      position: (3,) in the frame of the shaded points.
      color: (3,) RGB colour.
      intensity: () scalar multiplier.
      attenuation: (3,) ``(c0, c1, c2)``; the default ``(1, 0, 0)`` means no fall-off.
    """

    position: Any
    color: Any = (1.0, 1.0, 1.0)
    intensity: Any = 1.0
    attenuation: Any = (1.0, 0.0, 0.0)


@pytree_dataclass
class PhongMaterial:
    """Phong reflectance coefficients (each (3,) RGB or scalar).

    Attributes:
      ambient: k_a, multiplies the ambient light and the albedo.
      diffuse: k_d, multiplies the albedo.
      specular: k_s (not multiplied by the albedo: dielectric highlights are white).
      shininess: () Phong exponent (> 0).
    """

    ambient: Any = 1.0
    diffuse: Any = 1.0
    specular: Any = 0.0
    shininess: Any = 32.0


@pytree_dataclass
class PhongLighting:
    """Phong / Blinn-Phong lighting for :func:`jaxface.render.render` (instead of SH).

    Attributes:
      lights: tuple of :class:`DirectionalLight` / :class:`PointLight` (camera frame; the
        tuple's length is static).
      material: :class:`PhongMaterial` (default: ``k_a = k_d = 1``, no specular).
      ambient: ambient light colour, scalar or (3,).
      blinn: static; half-vector (Blinn) or reflection-vector (Phong) highlights.
      shadows: static; each light's contribution is multiplied by its shadow-map visibility
        (:func:`jaxface.render.shadow.shadow_visibility`, a map rendered from the light).
      shadow_map_size: static texels per side of each shadow map.
      shadow_pcf: static odd percentage-closer-filtering kernel (soft shadow edges).
    """

    lights: Any
    material: Any = None
    ambient: Any = 0.0
    blinn: bool = static_field(default=True)
    shadows: bool = static_field(default=False)
    shadow_map_size: int = static_field(default=256)
    shadow_pcf: int = static_field(default=3)


def _safe_pow(x: Array, p: Array) -> Array:
    """``max(x, 0) ** p`` with finite gradients wrt ``x`` and ``p`` (0 where ``x <= 0``)."""
    pos = x > 0
    xs = jnp.where(pos, x, 1.0)
    return jnp.where(pos, jnp.exp(p * jnp.log(xs)), 0.0)


def shade_phong(
    albedo: Any,
    points: Any,
    normals: Any,
    eye: Any,
    lights: Sequence[DirectionalLight | PointLight],
    material: PhongMaterial | None = None,
    ambient: Any = 0.0,
    blinn: bool = True,
    visibility: Sequence[Any] | None = None,
) -> Array:
    """Phong (``blinn=False``) or Blinn-Phong (``blinn=True``) shading, see the module doc.

    Args:
      albedo: (..., 3) or broadcastable.
      points: (..., 3) surface positions (used for view and point-light directions).
      normals: (..., 3) surface normals (normalised here).
      eye: (3,) camera centre in the same frame (the origin for camera-frame points).
      lights: a (static-length) sequence of :class:`DirectionalLight` / :class:`PointLight`.
      material: :class:`PhongMaterial`; default: ``k_a = k_d = 1``, no specular.
      ambient: ambient light colour, scalar or (3,).
      blinn: static; half-vector (Blinn) or reflection-vector (Phong) highlights.
      visibility: optional sequence, one entry per light: None or a (...,) per-point factor in
        [0, 1] (e.g. :func:`jaxface.render.shadow.shadow_visibility`) multiplying that light's
        diffuse and specular terms.
    Returns:
      (..., 3) linear RGB (unclamped).
    """
    if material is None:
        material = PhongMaterial()
    points = _vec3(points, "points")
    n = _normalize(_vec3(normals, "normals"))
    eye = _vec3(eye, "eye")
    albedo = _float(albedo)
    v = _normalize(eye - points)
    ka, kd, ks = (_float(a) for a in (material.ambient, material.diffuse, material.specular))
    shin = _float(material.shininess)
    out = jnp.zeros(n.shape[:-1] + (3,), n.dtype) + albedo * ka * _float(ambient)
    if visibility is not None and len(visibility) != len(lights):
        raise ValueError(f"visibility needs one entry per light ({len(lights)}), "
                         f"got {len(visibility)}")
    for j, light in enumerate(lights):
        if isinstance(light, DirectionalLight):
            l_dir = jnp.broadcast_to(_normalize(_vec3(light.direction, "direction")), n.shape)
            radiance = _float(light.color) * _float(light.intensity)
            radiance = jnp.broadcast_to(radiance, n.shape[:-1] + (3,))
        elif isinstance(light, PointLight):
            to_light = _vec3(light.position, "position") - points
            dist2 = jnp.sum(to_light * to_light, axis=-1, keepdims=True)
            dist = jnp.sqrt(jnp.maximum(dist2, 1e-24))
            l_dir = to_light / dist
            c0, c1, c2 = (_float(light.attenuation)[i] for i in range(3))
            att = 1.0 / (c0 + c1 * dist + c2 * dist2)
            radiance = _float(light.color) * _float(light.intensity) * att
        else:
            raise TypeError(
                f"lights must be DirectionalLight or PointLight, got {type(light).__name__}"
            )
        if visibility is not None and visibility[j] is not None:
            radiance = radiance * _float(visibility[j])[..., None]
        ndotl = jnp.sum(n * l_dir, axis=-1, keepdims=True)
        lit = ndotl > 0
        out = out + albedo * kd * radiance * jnp.maximum(ndotl, 0.0)
        if blinn:
            h = _normalize(l_dir + v)
            base = jnp.sum(n * h, axis=-1, keepdims=True)
        else:
            r = 2.0 * ndotl * n - l_dir
            base = jnp.sum(r * v, axis=-1, keepdims=True)
        spec = jnp.where(lit, _safe_pow(base, shin), 0.0)
        out = out + ks * radiance * spec
    return out
