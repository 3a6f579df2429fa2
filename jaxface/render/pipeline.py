"""``render()``: the whole image-formation pipeline composed from the primitives.

    params -> vertices (model) -> camera frame (pose) -> screen (camera) -> rasterise
           -> interpolate albedo and normals -> SH shading -> [antialias | soft blend] -> image

Everything is a pure function of pytrees (jit, vmap, grad). Shading happens in the camera frame:
``sh`` coefficients describe light arriving in camera coordinates (+x right, +y down, +z
forward), so a light "from the viewer" is direction ``(0, 0, -1)``.

``phong=PhongLighting(...)`` replaces the SH shading by Phong / Blinn-Phong with directional
and point lights (per pixel, at the interpolated camera-frame surface points; per vertex on
the soft path), optionally shadowed: ``shadows=True`` renders one shadow map per light from
the light (:mod:`jaxface.render.shadow`) and multiplies that light's diffuse and specular
terms by the point's visibility. Shadows carry no gradient (they are piecewise constant); the
shading around them does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxface._pytree import pytree_dataclass
from jaxface.camera import Camera, project, to_screen
from jaxface.mesh.normals import vertex_normals
from jaxface.models.morphable import MorphableModel, landmarks, vertices
from jaxface.render.antialias import antialias, edge_neighbors
from jaxface.render.interpolate import interpolate
from jaxface.render.rasterize import rasterize
from jaxface.render.shading import (
    PhongLighting,
    sh_ambient,
    sh_directional,
    sh_shading,
    shade_phong,
)
from jaxface.render.shadow import shadow_map, shadow_visibility
from jaxface.render.soft import soft_blend, soft_interpolate, soft_rasterize

Array = jax.Array

SKIN_TONE = (0.72, 0.55, 0.46)
"""Albedo used when neither the model nor the caller provides one (linear RGB)."""


@pytree_dataclass
class FaceParams:
    """Parameters of one face in one image.

    Attributes:
      identity: (Ks,) identity coefficients (raw, see ``MorphableModel``).
      expression: (Ke,) expression coefficients, or None.
      rotation: (3, 3) model -> camera rotation.
      translation: (3,) model -> camera translation in mm.
      albedo: (Ka,) albedo coefficients of the model's albedo basis, or None.
    """

    identity: Any
    expression: Any
    rotation: Any
    translation: Any
    albedo: Any = None


@pytree_dataclass
class RenderOutput:
    """Everything ``render`` computes (H x W images; V model vertices; L landmarks).

    Attributes:
      rgb: (H, W, 3) shaded image composited over the background.
      mask: (H, W) float coverage in [0, 1] (exactly 0/1 for the hard path).
      depth: (H, W) camera depth of the visible surface (mm; 0 on background).
      normals: (H, W, 3) unit camera-frame normals of the visible surface (0 on background).
      albedo: (H, W, 3) interpolated albedo (0 on background).
      triangle_id: (H, W) int32, -1 on background (hard rasterisation).
      barycentric: (H, W, 3) perspective-correct barycentrics.
      landmarks2d: (L, 2) projected landmarks (pixels).
      visibility: (V,) bool, vertices seen by the camera (front-facing and not occluded).
      vertices: (V, 3) camera-frame vertices (mm).
      screen: (V, 3) screen-space vertices (pixels, depth).
    """

    rgb: Any
    mask: Any
    depth: Any
    normals: Any
    albedo: Any
    triangle_id: Any
    barycentric: Any
    landmarks2d: Any
    visibility: Any
    vertices: Any
    screen: Any


def default_light() -> Array:
    """(9, 3) SH light: ambient 0.45 plus a key light from the viewer's upper left."""
    return 0.45 * sh_ambient(1.0) + 0.7 * sh_directional(jnp.array([-0.4, -0.5, -1.0]))


def vertex_albedo(model: MorphableModel, coeffs: Any = None) -> Array:
    """(V, 3) per-vertex albedo: the model's albedo mean (+ basis @ coeffs), else SKIN_TONE."""
    if model.albedo_mean is None:
        return jnp.broadcast_to(jnp.asarray(SKIN_TONE, jnp.float32), (model.n_vertices, 3))
    a = jnp.asarray(model.albedo_mean, jnp.float32)
    if coeffs is not None and model.albedo_basis is not None:
        a = a + jnp.einsum("k,kvc->vc", jnp.asarray(coeffs, jnp.float32),
                           jnp.asarray(model.albedo_basis[: jnp.shape(coeffs)[0]]))
    return a


def render(model: MorphableModel, params: FaceParams, camera: Camera,
           image_size: tuple[int, int], *, sh: Any = None, albedo: Any = None,
           background: Any = 0.0, mode: str = "hard", landmark_set: str | None = "ibug68",
           neighbors: Any = None, soft_sigma: float = 0.02, soft_gamma: float = 0.01,
           faces_per_pixel: int = 8, soft_depth_range: tuple[float, float] = (100.0, 3000.0),
           visibility_tolerance: float = 2.0, phong: PhongLighting | None = None
           ) -> RenderOutput:
    """Render a face.

    Args:
      model: the morphable model.
      params: FaceParams (coefficients and pose).
      camera: PerspectiveCamera / WeakPerspectiveCamera / AffineCamera.
      image_size: (H, W), static.
      sh: (9, 3) SH light in the camera frame (default :func:`default_light`).
      albedo: (V, 3) per-vertex albedo overriding the model's (e.g. a fitted free albedo).
      background: scalar, (3,) colour or (H, W, 3) image behind the face.
      mode: ``"hard"`` (exact visibility, no silhouette gradients), ``"antialias"`` (hard plus
        analytic edge antialiasing: silhouette gradients, no blur) or ``"soft"`` (SoftRas
        probabilistic coverage: gradients from pixels outside the silhouette, blurred edges).
      landmark_set: landmarks to project, or None.
      neighbors: (T, 3) edge neighbours for ``"antialias"``
        (:func:`jaxface.render.edge_neighbors`); computed from the model when None, which needs
        concrete (not traced) triangles.
      soft_sigma, soft_gamma, faces_per_pixel: soft-rasteriser sharpness (px^2), depth
        temperature and K. Coverage is ``1 - prod_k (1 - sigmoid(-d_k / sigma))``, so on a
        dense mesh a sigma much above 0.02 px^2 lets pixels near interior edges lose coverage
        (SoftRas's faint wireframe); raise it for longer-range silhouette gradients.
      soft_depth_range: (znear, zfar) in mm (static) over which the soft path normalises depth
        for its softmax; ``soft_gamma`` is relative to this range.
      visibility_tolerance: depth slack (mm) of the per-vertex visibility test.
      phong: :class:`~jaxface.render.shading.PhongLighting`: Phong / Blinn-Phong lights
        (optionally shadow-mapped) instead of the SH light ``sh``.

    Returns:
      RenderOutput.
    """
    if mode not in ("hard", "antialias", "soft"):
        raise ValueError(f"mode must be 'hard', 'antialias' or 'soft', got {mode!r}")
    tri = jnp.asarray(model.triangles, jnp.int32)
    verts = vertices(model, params.identity, params.expression)
    verts_cam = verts @ jnp.asarray(params.rotation).T + jnp.asarray(params.translation)
    alb = vertex_albedo(model, params.albedo) if albedo is None else jnp.asarray(albedo)
    if mode == "antialias" and neighbors is None:
        neighbors = edge_neighbors(np.asarray(model.triangles))
    out = render_mesh(verts_cam, tri, camera, image_size, albedo=alb, sh=sh,
                      background=background, mode=mode, neighbors=neighbors,
                      soft_sigma=soft_sigma, soft_gamma=soft_gamma,
                      faces_per_pixel=faces_per_pixel, soft_depth_range=soft_depth_range,
                      visibility_tolerance=visibility_tolerance, phong=phong)
    if landmark_set is not None:
        out = dataclasses.replace(
            out, landmarks2d=project(camera, landmarks(model, verts_cam, landmark_set)))
    return out


def render_mesh(verts_cam: Any, triangles: Any, camera: Camera, image_size: tuple[int, int],
                *, albedo: Any = SKIN_TONE, sh: Any = None, background: Any = 0.0,
                mode: str = "hard", neighbors: Any = None, soft_sigma: float = 0.02,
                soft_gamma: float = 0.01, faces_per_pixel: int = 8,
                soft_depth_range: tuple[float, float] = (100.0, 3000.0),
                visibility_tolerance: float = 2.0, phong: PhongLighting | None = None
                ) -> RenderOutput:
    """Render a camera-frame triangle mesh (the part of :func:`render` after the model).

    Args:
      verts_cam: (V, 3) camera-frame vertices (mm); triangles: (T, 3) int.
      albedo: (V, 3) per-vertex albedo or one (3,) colour.
      Other arguments as :func:`render`. ``landmarks2d`` of the output is empty (0, 2).
    """
    if mode not in ("hard", "antialias", "soft"):
        raise ValueError(f"mode must be 'hard', 'antialias' or 'soft', got {mode!r}")
    h, w = (int(s) for s in image_size)
    tri = jnp.asarray(triangles, jnp.int32)
    verts_cam = jnp.asarray(verts_cam, jnp.float32)
    scr = to_screen(camera, verts_cam)
    normals = vertex_normals(verts_cam, tri)
    alb = jnp.broadcast_to(jnp.asarray(albedo, jnp.float32), verts_cam.shape)
    light = default_light() if sh is None else jnp.asarray(sh)
    bg = jnp.broadcast_to(jnp.asarray(background, jnp.float32), (h, w, 3))

    frags = rasterize(scr.xyz, tri, (h, w), w=scr.w)
    covered = frags.triangle_id >= 0
    per_vertex = [alb, normals] + ([verts_cam] if phong is not None else [])
    attrs = interpolate(jnp.concatenate(per_vertex, axis=-1), frags, tri)
    alb_px = attrs[..., :3]
    n_px = attrs[..., 3:6]
    n_px = n_px / jnp.sqrt(jnp.maximum(jnp.sum(n_px * n_px, -1, keepdims=True), 1e-12))
    n_px = jnp.where(covered[..., None], n_px, 0.0)
    if phong is None:
        shaded = alb_px * sh_shading(n_px, light)
    else:
        shaded = _shade_phong(phong, verts_cam, tri, alb_px, attrs[..., 6:9], n_px)
    mask = covered.astype(jnp.float32)
    rgb = jnp.where(covered[..., None], shaded, bg)

    if mode == "antialias":
        nbr = neighbors
        if nbr is None:
            nbr = edge_neighbors(np.asarray(triangles))
        # colour and coverage in one pass (one search for the silhouette crossings)
        rgbm = antialias(jnp.concatenate([rgb, mask[..., None]], axis=-1), frags, scr.xyz, tri,
                         neighbors=nbr)
        rgb, mask = rgbm[..., :3], rgbm[..., 3]
    elif mode == "soft":
        sfr = soft_rasterize(scr.xyz, tri, (h, w), sigma=soft_sigma,
                             faces_per_pixel=faces_per_pixel, w=scr.w)
        v_col = (alb * sh_shading(normals, light) if phong is None
                 else _shade_phong(phong, verts_cam, tri, alb, verts_cam, normals))
        cols = soft_interpolate(v_col, sfr, tri)
        znear, zfar = (float(d) for d in soft_depth_range)
        rgba = soft_blend(cols, sfr, sigma=soft_sigma, gamma=soft_gamma, background=0.0,
                          znear=znear, zfar=zfar)
        mask = rgba[..., 3]
        # soft_blend's colour is the depth-softmax mix of the candidate faces (the background
        # weight is negligible next to any face); composite over the background by coverage.
        rgb = mask[..., None] * rgba[..., :3] + (1.0 - mask)[..., None] * bg

    visible = vertex_visibility(scr.xyz, normals, verts_cam, frags.depth, covered,
                                visibility_tolerance)
    lm2d = jnp.zeros((0, 2), jnp.float32)
    return RenderOutput(rgb=rgb, mask=mask, depth=jnp.where(covered, frags.depth, 0.0),
                        normals=n_px, albedo=jnp.where(covered[..., None], alb_px, 0.0),
                        triangle_id=frags.triangle_id, barycentric=frags.barycentric,
                        landmarks2d=lm2d, visibility=visible, vertices=verts_cam,
                        screen=scr.xyz)




def _shade_phong(phong: PhongLighting, verts_cam: Array, tri: Array, albedo: Array,
                 points: Array, normals: Array) -> Array:
    """Phong shading of camera-frame ``points`` (..., 3), shadowed when ``phong.shadows``."""
    lights = tuple(phong.lights)
    vis = None
    if phong.shadows:
        vis = [shadow_visibility(shadow_map(verts_cam, tri, light, phong.shadow_map_size),
                                 points, normals, pcf=phong.shadow_pcf) for light in lights]
    return shade_phong(albedo, points, normals, jnp.zeros((3,), jnp.float32), lights,
                       phong.material, phong.ambient, phong.blinn, visibility=vis)


def vertex_visibility(screen: Array, normals: Array, verts_cam: Array, depth: Array,
                      covered: Array, tolerance: float = 2.0) -> Array:
    """(V,) bool: vertex in the image, facing the camera and not behind the depth buffer.

    Args:
      screen: (V, 3) pixels + depth; normals: (V, 3) camera-frame normals; verts_cam: (V, 3);
      depth: (H, W) depth buffer; covered: (H, W) bool; tolerance: depth slack in mm.
    """
    h, w = depth.shape
    col = jnp.floor(screen[:, 0]).astype(jnp.int32)
    row = jnp.floor(screen[:, 1]).astype(jnp.int32)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    r, c = jnp.clip(row, 0, h - 1), jnp.clip(col, 0, w - 1)
    facing = jnp.sum(normals * verts_cam, axis=-1) < 0.0
    unoccluded = covered[r, c] & (screen[:, 2] <= depth[r, c] + tolerance)
    return inside & facing & unoccluded
