"""Differentiable image formation primitives (pure JAX).

Four orthogonal primitives in the nvdiffrast spirit — :func:`rasterize` (exact z-buffer, returns
:class:`Fragments`), :func:`interpolate`, :func:`texture`, :func:`antialias` — plus the
SoftRas-style probabilistic path (:func:`soft_rasterize`, :func:`soft_interpolate`,
:func:`soft_blend`) and shadow maps (:func:`shadow_map`, :func:`shadow_visibility`). Inputs are
screen-space vertices: x, y in pixels (OpenCV, pixel centres at ``i + 0.5``) and a depth z
(smaller is nearer).
"""

from jaxface.render import shading
from jaxface.render.antialias import antialias, edge_neighbors
from jaxface.render.interpolate import interpolate
from jaxface.render.rasterize import Fragments, barycentric_from_ids, rasterize
from jaxface.render.shadow import (
    ShadowMap,
    directional_shadow_map,
    light_visibility,
    point_shadow_map,
    shadow_map,
    shadow_visibility,
)
from jaxface.render.soft import (
    SoftFragments,
    soft_blend,
    soft_interpolate,
    soft_radius,
    soft_rasterize,
)
from jaxface.render.texture import texture

__all__ = [
    "Fragments",
    "ShadowMap",
    "SoftFragments",
    "antialias",
    "barycentric_from_ids",
    "directional_shadow_map",
    "edge_neighbors",
    "interpolate",
    "light_visibility",
    "point_shadow_map",
    "rasterize",
    "shading",
    "shadow_map",
    "shadow_visibility",
    "soft_blend",
    "soft_interpolate",
    "soft_radius",
    "soft_rasterize",
    "texture",
]
