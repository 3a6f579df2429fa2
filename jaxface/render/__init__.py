"""Differentiable image formation primitives (pure JAX).

Four orthogonal primitives in the nvdiffrast spirit — :func:`rasterize` (exact z-buffer, returns
:class:`Fragments`), :func:`interpolate`, :func:`texture`, :func:`antialias` — plus the
SoftRas-style probabilistic path (:func:`soft_rasterize`, :func:`soft_interpolate`,
:func:`soft_blend`). Inputs are screen-space vertices: x, y in pixels (OpenCV, pixel centres at
``i + 0.5``) and a depth z (smaller is nearer).
"""

from jaxface.render import shading
from jaxface.render.antialias import antialias, edge_neighbors
from jaxface.render.interpolate import interpolate
from jaxface.render.rasterize import Fragments, barycentric_from_ids, rasterize
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
    "SoftFragments",
    "antialias",
    "barycentric_from_ids",
    "edge_neighbors",
    "interpolate",
    "rasterize",
    "shading",
    "soft_blend",
    "soft_interpolate",
    "soft_radius",
    "soft_rasterize",
    "texture",
]
