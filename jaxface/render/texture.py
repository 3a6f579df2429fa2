"""Texture sampling.

UV convention (OBJ style): ``u`` runs right and ``v`` up, both in ``[0, 1]`` across the texture
image; ``v = 0`` is the bottom edge of the image (its last row) and ``v = 1`` the top edge (row
0). Texel ``(r, c)`` of an ``(Ht, Wt)`` image has its centre at
``u = (c + 0.5) / Wt``, ``v = 1 - (r + 0.5) / Ht``; sampling exactly at a texel centre returns that
texel. Outside the centres, ``boundary="clamp"`` repeats the edge texels and ``"wrap"`` tiles the
texture (periodic in ``u`` and ``v`` with period 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["texture"]

_FILTERS = ("bilinear", "nearest")
_BOUNDARIES = ("clamp", "wrap")


def _index(i: jax.Array, n: int, boundary: str) -> jax.Array:
    if boundary == "wrap":
        return jnp.mod(i, n)
    return jnp.clip(i, 0, n - 1)


def _sample_single(image: jax.Array, uv: jax.Array, filter: str, boundary: str) -> jax.Array:
    ht, wt = image.shape[0], image.shape[1]
    u = uv[..., 0]
    v = uv[..., 1]
    finite = jnp.isfinite(u) & jnp.isfinite(v)
    u = jnp.where(finite, u, 0.0)
    v = jnp.where(finite, v, 0.0)
    big = 1e6  # keep integer conversion defined for absurd inputs
    x = jnp.clip(u * wt - 0.5, -big, big)  # continuous column, texel centres at integers
    y = jnp.clip((1.0 - v) * ht - 0.5, -big, big)  # continuous row
    if filter == "nearest":
        c = _index(jnp.floor(x + 0.5).astype(jnp.int32), wt, boundary)
        r = _index(jnp.floor(y + 0.5).astype(jnp.int32), ht, boundary)
        out = image[r, c]
    else:
        x0 = jnp.floor(x)
        y0 = jnp.floor(y)
        fx = (x - x0)[..., None]
        fy = (y - y0)[..., None]
        c0 = x0.astype(jnp.int32)
        r0 = y0.astype(jnp.int32)
        c0b, c1b = _index(c0, wt, boundary), _index(c0 + 1, wt, boundary)
        r0b, r1b = _index(r0, ht, boundary), _index(r0 + 1, ht, boundary)
        top = image[r0b, c0b] * (1 - fx) + image[r0b, c1b] * fx
        bot = image[r1b, c0b] * (1 - fx) + image[r1b, c1b] * fx
        out = top * (1 - fy) + bot * fy
    return jnp.where(finite[..., None], out, jnp.zeros((), out.dtype))


def texture(
    image: jax.Array,
    uv: jax.Array,
    filter: str = "bilinear",
    boundary: str = "clamp",
) -> jax.Array:
    """Sample a texture at UV coordinates (see the module docstring for the convention).

    Args:
      image: ``(Ht, Wt, C)`` texture, or ``(B, Ht, Wt, C)`` with ``uv`` batched as ``(B, ..., 2)``.
      uv: ``(..., 2)`` coordinates (e.g. ``(H, W, 2)`` from :func:`jaxface.render.interpolate`).
      filter: ``"bilinear"`` (differentiable in ``uv`` and ``image``) or ``"nearest"``
        (differentiable in ``image`` only).
      boundary: ``"clamp"`` or ``"wrap"``.

    Returns:
      ``(..., C)`` samples (zeros where ``uv`` is not finite).
    """
    if filter not in _FILTERS:
        raise ValueError(f"filter must be one of {_FILTERS}, got {filter!r}")
    if boundary not in _BOUNDARIES:
        raise ValueError(f"boundary must be one of {_BOUNDARIES}, got {boundary!r}")
    image = jnp.asarray(image)
    uv = jnp.asarray(uv)
    if uv.shape[-1:] != (2,):
        raise ValueError(f"uv must have a trailing axis of size 2, got {tuple(uv.shape)}")
    if image.ndim == 3:
        return _sample_single(image, uv, filter, boundary)
    if image.ndim == 4:
        if uv.ndim < 2 or uv.shape[0] != image.shape[0]:
            raise ValueError(
                f"batched image {tuple(image.shape)} needs uv of shape (B, ..., 2) with the "
                f"same B, got {tuple(uv.shape)}"
            )
        return jax.vmap(lambda im, t: _sample_single(im, t, filter, boundary))(image, uv)
    raise ValueError(f"image must be (Ht, Wt, C) or (B, Ht, Wt, C), got {tuple(image.shape)}")
