"""UV texture extraction from a photo, and rendering a textured face.

Pipeline (per texel of an ``S x S`` texture):

1. Host-side, once per model and size (:func:`uv_layout`): the model's UV layout is normalised into
   one ``[0, 1]^2`` atlas (by default only the UV tile(s) of the face; ICT-FaceKit has the face and
   eyeballs in tile ``u in [0, 1)`` and head, neck, mouth and eye sockets in ``[1, 2)``), and
   rasterised in UV space (``u * S``, ``(1 - v) * S`` used as screen ``x, y``), giving every texel
   its triangle and barycentrics. The mirror texel of each texel is found from the model's
   left/right symmetry: each vertex's mirror vertex is the nearest neighbour of its reflection
   ``x -> -x`` in the mean shape, and a texel's mirror UV is its barycentric combination of the
   mirror vertices' UVs.
2. Per image, pure JAX (:func:`extract_texture_from_vertices`, jit/vmap-able): the texel's 3D
   point on the fitted camera-frame surface is projected into the photo and sampled bilinearly. A
   texel is *visible* when it is inside the photo, its interpolated normal faces the camera (with a
   grazing-angle margin) and it is not behind the photo-space depth buffer of the whole mesh.
3. Occluded texels are filled from the mirror texel when that one is visible, otherwise from a
   fallback (a per-vertex albedo, one colour, or the mean visible colour).

UV convention (as :mod:`jaxface.render.texture`): ``v = 0`` is the bottom row of the image.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxface._pytree import pytree_dataclass, static_field
from jaxface.camera import PerspectiveCamera, to_screen
from jaxface.mesh.normals import vertex_normals
from jaxface.models.morphable import MorphableModel, vertices
from jaxface.render.interpolate import interpolate
from jaxface.render.rasterize import Fragments, rasterize
from jaxface.render.texture import texture as sample_texture

Array = jax.Array

__all__ = [
    "UVLayout",
    "Texture",
    "uv_layout",
    "mirror_vertices",
    "extract_texture",
    "extract_texture_from_vertices",
    "render_textured",
    "fit_vertices_camera",
]

SOURCE_NONE, SOURCE_OBSERVED, SOURCE_MIRROR, SOURCE_FALLBACK = 0, 1, 2, 3


@pytree_dataclass
class UVLayout:
    """A single-atlas UV layout of (part of) a model and its rasterisation at ``size``.

    Attributes:
      uv: (Vt, 2) float32 atlas coordinates in [0, 1] (v up).
      uv_triangles: (T, 3) int32 ids into ``uv`` per corner of the textured triangles.
      triangles: (T, 3) int32 model vertex ids of the textured triangles.
      triangle_ids: (T,) int32 index of each textured triangle in ``model.triangles``.
      texel_triangle: (S, S) int32 index into the textured triangles, -1 for empty texels.
      texel_barycentric: (S, S, 3) float32 barycentrics of each texel centre.
      mirror_texel: (S, S) int32 flat index (row * S + col) of each texel's mirror texel, -1 when
        it has none (empty texel, or its mirror falls on an empty texel).
      size: static texture size S.
      tiles: static tuple of the integer UV tiles kept.
    """

    uv: Any
    uv_triangles: Any
    triangles: Any
    triangle_ids: Any
    texel_triangle: Any
    texel_barycentric: Any
    mirror_texel: Any
    size: int = static_field(default=512)
    tiles: tuple = static_field(default=(0,))

    @property
    def texel_mask(self) -> Array:
        """(S, S) bool: texels covered by a textured triangle."""
        return self.texel_triangle >= 0


@pytree_dataclass
class Texture:
    """An extracted texture.

    Attributes:
      texture: (S, S, 3) float32 colours in [0, 1] (filled; zeros outside the layout).
      visibility: (S, S) bool, texels seen in the photo (colour sampled directly).
      source: (S, S) int32 per texel: 0 empty (outside the layout), 1 observed, 2 filled from
        the mirror texel, 3 filled from the fallback.
      layout: the UVLayout used.
    """

    texture: Any
    visibility: Any
    source: Any
    layout: Any


# --------------------------------------------------------------------------------- layout (host)


def mirror_vertices(points: Any, axis: int = 0) -> np.ndarray:
    """(V,) int: for each vertex, the nearest vertex to its reflection across ``axis = 0``.

    Args:
      points: (V, 3) vertices of a left/right symmetric shape in its model frame (the plane
        ``x = 0`` being the symmetry plane).
      axis: the coordinate that is negated (0 = x).
    """
    from scipy.spatial import cKDTree

    p = np.asarray(points, np.float64).reshape(-1, 3)
    q = p.copy()
    q[:, axis] = -q[:, axis]
    return cKDTree(p).query(q)[1].astype(np.int32)


def _face_tiles(model: MorphableModel, tile_of_tri: np.ndarray) -> tuple[int, ...]:
    tri = np.asarray(model.triangles)
    regions = model.regions or {}
    if "face" in regions:
        in_face = np.asarray(regions["face"], bool)[tri].all(axis=1)
        if in_face.any():
            vals, counts = np.unique(tile_of_tri[in_face], return_counts=True)
            return (int(vals[np.argmax(counts)]),)
    vals, counts = np.unique(tile_of_tri, return_counts=True)
    return (int(vals[np.argmax(counts)]),)


_LAYOUT_CACHE: dict[tuple, UVLayout] = {}


def uv_layout(model: MorphableModel, size: int = 512, tiles: Any = "face") -> UVLayout:
    """Normalise the model's UVs into one atlas and rasterise it (host-side, cached).

    Args:
      model: a MorphableModel with ``uv`` and ``uv_triangles`` (or per-vertex ``uv``).
      size: texture size S (texels per side), >= 8.
      tiles: ``"face"`` (the UV tile holding most of the ``"face"`` region, or the most used tile),
        ``"all"`` (every tile, placed side by side along u), or a sequence of integer tiles
        (the integer part of u). Several tiles share the atlas side by side: tile k of n gets
        ``u in [k/n, (k+1)/n)``.

    Returns:
      UVLayout (numpy arrays).

    Raises:
      ValueError: the model has no UVs, the size is too small or no triangle is in the tiles.
    """
    if model.uv is None:
        raise ValueError(f"model {model.name!r} has no UV coordinates (model.uv is None)")
    size = int(size)
    if size < 8:
        raise ValueError(f"texture size must be >= 8, got {size}")
    uv = np.asarray(model.uv, np.float64)
    tri = np.asarray(model.triangles, np.int64)
    uvt = tri if model.uv_triangles is None else np.asarray(model.uv_triangles, np.int64)
    if uvt.shape != tri.shape or uv.ndim != 2 or uv.shape[1] != 2 or uvt.max() >= len(uv):
        raise ValueError(f"model {model.name!r}: uv {uv.shape} / uv_triangles {uvt.shape} do not "
                         f"match triangles {tri.shape}")
    centre_u = uv[uvt, 0].mean(axis=1)
    tile_of_tri = np.floor(centre_u).astype(np.int64)
    if isinstance(tiles, str):
        if tiles == "face":
            sel_tiles = _face_tiles(model, tile_of_tri)
        elif tiles == "all":
            sel_tiles = tuple(int(t) for t in np.unique(tile_of_tri))
        else:
            raise ValueError(f"tiles must be 'face', 'all' or a sequence of ints, got {tiles!r}")
    else:
        sel_tiles = tuple(int(t) for t in tiles)
    key = (id(model.uv), id(model.triangles), size, sel_tiles)
    if key in _LAYOUT_CACHE:
        return _LAYOUT_CACHE[key]
    keep = np.isin(tile_of_tri, sel_tiles)
    if not keep.any():
        raise ValueError(f"no triangle of model {model.name!r} has UVs in tiles {sel_tiles}")
    tri_ids = np.nonzero(keep)[0]
    n = len(sel_tiles)
    rank = {t: k for k, t in enumerate(sel_tiles)}
    # one atlas coordinate per (triangle corner): remap the uv ids the kept triangles use
    used = np.unique(uvt[tri_ids])
    remap = -np.ones(len(uv), np.int64)
    remap[used] = np.arange(len(used))
    # the tile of a uv vertex: from the triangles using it (a seam vertex sits on a tile edge)
    uv_tile = np.zeros(len(uv), np.int64)
    uv_tile[uvt[tri_ids].reshape(-1)] = np.repeat(tile_of_tri[tri_ids], 3)
    u_loc = np.clip(uv[used, 0] - uv_tile[used], 0.0, 1.0)
    atlas = np.stack([(np.vectorize(rank.get)(uv_tile[used]) + u_loc) / n,
                      np.clip(uv[used, 1], 0.0, 1.0)], axis=1).astype(np.float32)
    a_tri = remap[uvt[tri_ids]].astype(np.int32)
    m_tri = tri[tri_ids].astype(np.int32)

    # rasterise the atlas: x = u * S, y = (1 - v) * S
    scr = np.stack([atlas[:, 0] * size, (1.0 - atlas[:, 1]) * size,
                    np.zeros(len(atlas))], axis=1).astype(np.float32)
    frags = rasterize(jnp.asarray(scr), jnp.asarray(a_tri), (size, size))
    t_id = np.asarray(frags.triangle_id)
    bary = np.asarray(frags.barycentric, np.float32)

    # mirror texels through the mirror vertices' atlas uv
    mean = np.asarray(model.mean, np.float64).reshape(-1, 3)
    mirror_v = mirror_vertices(mean)
    vert_uv = np.full((len(mean), 2), np.nan)
    vert_uv[m_tri.reshape(-1)] = atlas[a_tri.reshape(-1)]
    covered = t_id >= 0
    corner_mirror = mirror_v[m_tri[np.where(covered, t_id, 0)]]  # (S, S, 3)
    muv = np.einsum("hwk,hwkc->hwc", bary, vert_uv[corner_mirror])
    ok = covered & np.all(np.isfinite(muv), axis=-1)
    muv = np.where(ok[..., None], muv, 0.0)
    col = np.clip(np.floor(muv[..., 0] * size), 0, size - 1).astype(np.int64)
    row = np.clip(np.floor((1.0 - muv[..., 1]) * size), 0, size - 1).astype(np.int64)
    ok &= covered[row, col]
    mirror = np.where(ok, row * size + col, -1).astype(np.int32)
    out = UVLayout(uv=atlas, uv_triangles=a_tri, triangles=m_tri,
                   triangle_ids=tri_ids.astype(np.int32), texel_triangle=t_id.astype(np.int32),
                   texel_barycentric=np.where(covered[..., None], bary, 0.0).astype(np.float32),
                   mirror_texel=mirror, size=size, tiles=sel_tiles)
    _LAYOUT_CACHE[key] = out
    return out


# ---------------------------------------------------------------------------- extraction (JAX)


def _view_dirs(camera: Any, points: Array) -> Array:
    """(..., 3) direction from the camera to each camera-frame point."""
    if isinstance(camera, PerspectiveCamera):
        return points
    return jnp.broadcast_to(jnp.asarray([0.0, 0.0, 1.0], points.dtype), points.shape)


def _dilate(tex: Array, valid: Array, steps: Any) -> Array:
    """Grow colours into invalid texels (mean of valid 4-neighbours), ``steps`` times."""
    def body(_, carry):
        t, v = carry
        vf = v.astype(t.dtype)
        acc = jnp.zeros_like(t)
        cnt = jnp.zeros_like(vf)
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            acc = acc + jnp.roll(t * vf[..., None], (dr, dc), axis=(0, 1))
            cnt = cnt + jnp.roll(vf, (dr, dc), axis=(0, 1))
        grow = (~v) & (cnt > 0)
        t = jnp.where(grow[..., None], acc / jnp.maximum(cnt, 1.0)[..., None], t)
        return t, v | grow
    return jax.lax.fori_loop(0, steps, body, (tex, valid))[0]


def extract_texture_from_vertices(verts_cam: Any, triangles: Any, image: Any, camera: Any,
                                  layout: UVLayout, *, fallback: Any = None,
                                  symmetric_fill: bool = True, depth_tolerance: float = 3.0,
                                  min_cos: float = 0.1, dilate: int = 2) -> Texture:
    """Texture from camera-frame vertices (pure JAX: jit with ``layout`` as an argument, vmap).

    Args:
      verts_cam: (V, 3) camera-frame vertices (mm).
      triangles: (F, 3) all triangles of the mesh (occluders for the depth test).
      image: (H, W, 3) photo in [0, 1].
      camera: the photo's camera.
      layout: :func:`uv_layout` of the same model.
      fallback: colour for texels neither visible nor mirrored: None (mean visible colour),
        (3,) one colour, or (V, 3) per-vertex colours (e.g. a fitted albedo).
      symmetric_fill: fill occluded texels from their visible mirror texel (may be traced).
      depth_tolerance: slack (mm) of the depth-buffer occlusion test.
      min_cos: a texel is visible only if its normal's cosine with the view direction exceeds
        this (grazing surfaces smear the photo).
      dilate: texels of padding grown around the layout's charts (avoids dark seams when the
        texture is sampled bilinearly or mip-mapped); may be traced.

    Returns:
      Texture.
    """
    image = jnp.asarray(image, jnp.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3), got {tuple(image.shape)}")
    h, w = image.shape[:2]
    verts_cam = jnp.asarray(verts_cam, jnp.float32)
    tri = jnp.asarray(triangles, jnp.int32)
    s = layout.size
    t_id = jnp.asarray(layout.texel_triangle)
    bary = jnp.asarray(layout.texel_barycentric)
    covered = t_id >= 0
    lt = jnp.asarray(layout.triangles)
    texel_frags = Fragments(triangle_id=t_id, barycentric=bary,
                            depth=jnp.zeros(t_id.shape, jnp.float32))
    normals = vertex_normals(verts_cam, tri)
    attrs = interpolate(jnp.concatenate([verts_cam, normals], -1), texel_frags, lt)
    p, n = attrs[..., :3], attrs[..., 3:]
    n = n / jnp.sqrt(jnp.maximum(jnp.sum(n * n, -1, keepdims=True), 1e-12))
    d = _view_dirs(camera, p)
    d = d / jnp.sqrt(jnp.maximum(jnp.sum(d * d, -1, keepdims=True), 1e-12))
    facing = -jnp.sum(n * d, -1) > min_cos

    scr_t = to_screen(camera, p)
    x, y, z = scr_t.xyz[..., 0], scr_t.xyz[..., 1], scr_t.xyz[..., 2]
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h) & scr_t.valid
    scr = to_screen(camera, verts_cam)
    frags = rasterize(scr.xyz, tri, (h, w), w=scr.w)
    r = jnp.clip(jnp.floor(y).astype(jnp.int32), 0, h - 1)
    c = jnp.clip(jnp.floor(x).astype(jnp.int32), 0, w - 1)
    front = (frags.triangle_id[r, c] >= 0) & (z <= frags.depth[r, c] + depth_tolerance)
    visible = covered & facing & inside & front

    photo_uv = jnp.stack([x / w, 1.0 - y / h], -1)
    colour = sample_texture(image, photo_uv, "bilinear", "clamp")

    # fallback colours
    vis_f = visible.astype(jnp.float32)
    mean_vis = jnp.sum(colour * vis_f[..., None], (0, 1)) / jnp.maximum(jnp.sum(vis_f), 1.0)
    if fallback is None:
        fb = jnp.broadcast_to(mean_vis, colour.shape)
    else:
        fbv = jnp.asarray(fallback, jnp.float32)
        if fbv.ndim == 2:
            fb = interpolate(fbv, texel_frags, lt)
        else:
            fb = jnp.broadcast_to(fbv, colour.shape)

    mirror = jnp.asarray(layout.mirror_texel)
    flat_vis = visible.reshape(-1)
    flat_col = colour.reshape(-1, 3)
    has_m = mirror >= 0
    m_idx = jnp.where(has_m, mirror, 0)
    m_vis = has_m & flat_vis[m_idx.reshape(-1)].reshape(s, s)
    m_col = flat_col[m_idx.reshape(-1)].reshape(s, s, 3)
    use_m = covered & ~visible & m_vis & jnp.asarray(symmetric_fill, bool)
    tex = jnp.where(visible[..., None], colour, jnp.where(use_m[..., None], m_col, fb))
    tex = jnp.where(covered[..., None], tex, 0.0)
    tex = _dilate(tex, covered, dilate)
    tex = jnp.clip(tex, 0.0, 1.0)
    source = jnp.where(visible, SOURCE_OBSERVED,
                       jnp.where(use_m, SOURCE_MIRROR,
                                 jnp.where(covered, SOURCE_FALLBACK, SOURCE_NONE)))
    return Texture(texture=tex, visibility=visible, source=source.astype(jnp.int32),
                   layout=layout)


def fit_vertices_camera(model: MorphableModel, fit: Any, expression: Any = None) -> Array:
    """(V, 3) camera-frame vertices of a fit (anything with ``identity``, ``expression``,
    ``rotation``, ``translation``); ``expression`` overrides the fit's."""
    ex = fit.expression if expression is None else expression
    if not model.n_expression:
        ex = None
    v = vertices(model, jnp.asarray(fit.identity, jnp.float32),
                 None if ex is None else jnp.asarray(ex, jnp.float32))
    return v @ jnp.asarray(fit.rotation, jnp.float32).T + jnp.asarray(fit.translation,
                                                                     jnp.float32)


_extract_jit = jax.jit(extract_texture_from_vertices)


def extract_texture(model: MorphableModel, image: Any, fit_result: Any, texture_size: int = 512,
                    *, layout: UVLayout | None = None, tiles: Any = "face",
                    fallback: Any = None, symmetric_fill: bool = True,
                    depth_tolerance: float = 3.0, min_cos: float = 0.1,
                    dilate: int = 2) -> Texture:
    """Extract the fitted face's UV texture from a photo.

    Args:
      model: the fitted MorphableModel (with UVs).
      image: (H, W, 3) photo in [0, 1] the fit belongs to.
      fit_result: a FitResult (or any object with identity, expression, rotation, translation,
        camera).
      texture_size: S (texels per side).
      layout: a precomputed :func:`uv_layout` (else computed/cached for ``texture_size`` and
        ``tiles``).
      Other arguments: see :func:`extract_texture_from_vertices`.

    Returns:
      Texture with ``texture`` (S, S, 3), ``visibility`` (S, S) bool, ``source`` and ``layout``.
    """
    if layout is None:
        layout = uv_layout(model, texture_size, tiles)
    verts = fit_vertices_camera(model, fit_result)
    return _extract_jit(verts, jnp.asarray(model.triangles, jnp.int32), image, fit_result.camera,
                        layout, fallback=fallback, symmetric_fill=symmetric_fill,
                        depth_tolerance=depth_tolerance, min_cos=min_cos, dilate=dilate)


# --------------------------------------------------------------------------- textured rendering


def _duplicates_of(triangles: Array, reference: Array) -> Array:
    """(F,) bool: which ``triangles`` (F, 3) use the same three vertices (any order or winding)
    as a row of ``reference`` (T, 3). Pure JAX (traceable); O((F + T) log(F + T))."""
    n = triangles.shape[0]
    if n == 0 or reference.shape[0] == 0:
        return jnp.zeros((n,), bool)
    keys = jnp.sort(jnp.concatenate([triangles, reference], 0), axis=1)
    # tag -1 (reference) sorts before 0 (query) within a group of equal vertex triples
    tag = jnp.concatenate([jnp.zeros((n,), jnp.int32),
                           jnp.full((reference.shape[0],), -1, jnp.int32)])
    order = jnp.lexsort((tag, keys[:, 2], keys[:, 1], keys[:, 0]))
    k = keys[order]
    idx = jnp.arange(k.shape[0], dtype=jnp.int32)
    start = jnp.concatenate([jnp.ones((1,), bool), jnp.any(k[1:] != k[:-1], axis=1)])
    first = jax.lax.cummax(jnp.where(start, idx, 0))
    tag = tag[order]
    dup_sorted = (tag == 0) & (tag[first] < 0)
    return jnp.zeros(k.shape[0], bool).at[order].set(dup_sorted)[:n]


def render_textured(verts_cam: Any, layout: UVLayout, texture: Any, camera: Any,
                    image_size: tuple[int, int], *, occluders: Any = None,
                    background: Any = 0.0, interior: Any = None,
                    interior_colour: Any = None) -> tuple[Array, Array, Array]:
    """Render the layout's triangles with a UV texture (unlit; pure JAX).

    Args:
      verts_cam: (V, 3) camera-frame vertices (mm).
      layout: UVLayout; its ``triangles`` are drawn.
      texture: (S, S, 3) texture (or a Texture).
      camera: camera; image_size: (H, W) static.
      occluders: optional (F, 3) triangles of the full mesh: pixels where another triangle is in
        front of the textured surface are left as background. Occluders with the same vertices
        as a textured triangle (the textured part of the full mesh) are skipped, so the
        textured surface never z-fights with its own copy.
      background: scalar, (3,) or (H, W, 3).
      interior: optional (F,) bool over ``occluders``: those (untextured, e.g. the mouth socket)
        are drawn in ``interior_colour`` ((3,); default 0.3 x the texture's mean colour).

    Returns:
      (rgb (H, W, 3), mask (H, W) float, uv (H, W, 2)).
    """
    if isinstance(texture, Texture):
        texture = texture.texture
    h, w = (int(s) for s in image_size)
    verts_cam = jnp.asarray(verts_cam, jnp.float32)
    scr = to_screen(camera, verts_cam)
    lt = jnp.asarray(layout.triangles, jnp.int32)
    n_tex = lt.shape[0]
    if occluders is not None:
        occ_tri = jnp.asarray(occluders, jnp.int32)
        # The textured triangles are usually among the occluders (the full mesh). Such copies
        # lie exactly on the textured surface, and the z-buffer would have to break the depth
        # tie in favour of the textured copy: it does not reliably (the same triangle's depth,
        # evaluated in another chunk of the rasteriser's fragment loop, can differ in the last
        # bit), which left the occluder copy -- drawn as background -- on a speckle of pixels.
        # Copies are made degenerate (zero area: never drawn); their ids keep their place.
        dup = _duplicates_of(occ_tri, lt)
        all_tri = jnp.concatenate([lt, jnp.where(dup[:, None], 0, occ_tri)], 0)
    else:
        all_tri = lt
    frags = rasterize(scr.xyz, all_tri, (h, w), w=scr.w)
    hit = (frags.triangle_id >= 0) & (frags.triangle_id < n_tex)
    f2 = Fragments(triangle_id=jnp.where(hit, frags.triangle_id, -1),
                   barycentric=frags.barycentric, depth=frags.depth)
    uv = interpolate(jnp.asarray(layout.uv), f2, jnp.asarray(layout.uv_triangles, jnp.int32))
    col = sample_texture(jnp.asarray(texture, jnp.float32), uv, "bilinear", "clamp")
    bg = jnp.broadcast_to(jnp.asarray(background, jnp.float32), (h, w, 3))
    rgb = jnp.where(hit[..., None], col, bg)
    mask = hit
    if occluders is not None and interior is not None:
        occ = frags.triangle_id - n_tex
        inner = (occ >= 0) & jnp.asarray(interior, bool)[jnp.maximum(occ, 0)]
        if interior_colour is None:
            tex = jnp.asarray(texture, jnp.float32)
            valid = jnp.any(tex > 0, axis=-1, keepdims=True).astype(jnp.float32)
            interior_colour = 0.3 * jnp.sum(tex * valid, (0, 1)) / jnp.maximum(
                jnp.sum(valid), 1.0)
        rgb = jnp.where(inner[..., None], jnp.asarray(interior_colour, jnp.float32), rgb)
        mask = hit | inner
    return rgb, mask.astype(jnp.float32), uv
