"""UV layout and texture extraction on synthetic renders with a known colour pattern."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.camera import project
from jaxface.edit import (
    extract_texture,
    extract_texture_from_vertices,
    fit_vertices_camera,
    mirror_vertices,
    uv_layout,
)
from jaxface.render.pipeline import render_mesh
from tests.edit import synth


@pytest.fixture(scope="module")
def model():
    return synth.default_model()


@pytest.fixture(scope="module")
def layout(model):
    return uv_layout(model, synth.TEX)


def texel_truth(model, layout, colours):
    """(S, S, 3) barycentric interpolation of per-vertex colours at each texel."""
    tid = np.asarray(layout.texel_triangle)
    bary = np.asarray(layout.texel_barycentric)
    corners = np.asarray(layout.triangles)[np.maximum(tid, 0)]  # (S, S, 3)
    return np.einsum("hwk,hwkc->hwc", bary, colours[corners])


def texel_points(model, layout, points):
    return texel_truth(model, layout, points)


def test_layout_is_single_atlas(model, layout):
    uv = np.asarray(layout.uv)
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    assert layout.tiles == (0,)  # ICT: the face is in the first UV tile
    cov = np.asarray(layout.texel_mask)
    assert 0.5 < cov.mean() < 0.99
    # texels map to the face's triangles (every kept triangle is in tile 0)
    raw = np.asarray(model.uv)[np.asarray(model.uv_triangles)[np.asarray(layout.triangle_ids)]]
    assert np.all(raw[..., 0] <= 1.0 + 1e-6)
    with pytest.raises(ValueError, match="size"):
        uv_layout(model, 4)
    with pytest.raises(ValueError, match="tiles"):
        uv_layout(model, 16, tiles=(7,))
    assert uv_layout(model, 16, tiles="all").tiles == (0, 1)


def test_mirror_vertices_and_texels(model, layout):
    rng = np.random.default_rng(0)
    half = rng.normal(size=(50, 3)) + np.array([3.0, 0.0, 0.0])
    pts = np.concatenate([half, half * np.array([-1.0, 1.0, 1.0])])
    np.testing.assert_array_equal(mirror_vertices(pts), np.r_[np.arange(50, 100),
                                                              np.arange(50)])
    mean = np.asarray(model.mean, np.float64).reshape(-1, 3)
    mv = mirror_vertices(mean)
    reflected = mean[mv] * np.array([-1.0, 1.0, 1.0])
    assert np.median(np.linalg.norm(reflected - mean, axis=1)) < 1.0  # ICT is symmetric
    # a texel's mirror texel holds the reflected surface point (within a few mm)
    mt = np.asarray(layout.mirror_texel)
    ok = mt >= 0
    assert ok.sum() > 0.9 * np.asarray(layout.texel_mask).sum()
    p = texel_points(model, layout, mean.astype(np.float32))
    q = p.reshape(-1, 3)[mt[ok]]
    err = np.linalg.norm(q * np.array([-1.0, 1.0, 1.0]) - p[ok], axis=1)
    assert np.median(err) < 3.0


def test_extract_matches_known_colours(model, layout):
    mean = np.asarray(model.mean, np.float64).reshape(-1, 3)
    colours = synth.pattern(mean)
    fit = synth.make_fit(model)
    image = synth.photo(model, fit, colours)
    tex = extract_texture(model, image, fit, synth.TEX)
    assert tex.texture.shape == (synth.TEX, synth.TEX, 3)
    assert tex.visibility.shape == (synth.TEX, synth.TEX)
    vis = np.asarray(tex.visibility)
    assert vis.sum() > 0.3 * np.asarray(layout.texel_mask).sum()
    truth = texel_truth(model, layout, colours)
    err = np.abs(np.asarray(tex.texture) - truth).max(-1)[vis]
    assert np.median(err) < 0.02
    assert np.percentile(err, 90) < 0.06
    # visible texels are observed; empty texels are marked 0
    src = np.asarray(tex.source)
    assert np.all(src[vis] == 1)
    assert np.all(src[~np.asarray(layout.texel_mask)] == 0)


def test_turned_head_occlusion_and_symmetric_fill(model, layout):
    mean = np.asarray(model.mean, np.float64).reshape(-1, 3)
    colours = synth.pattern(mean, symmetric=True)
    fit = synth.make_fit(model, yaw=0.9)  # about 52 degrees
    image = synth.photo(model, fit, colours)
    tex = extract_texture(model, image, fit, synth.TEX)
    vis = np.asarray(tex.visibility)
    src = np.asarray(tex.source)
    cov = np.asarray(layout.texel_mask)
    pts = texel_points(model, layout, mean.astype(np.float32))
    # which side faces away: the camera-frame normal of the cheeks
    vc = np.asarray(fit_vertices_camera(model, fit))
    x_cam_of_pos = (np.array([40.0, 0.0, 60.0]) @ np.asarray(fit.rotation).T)[2]
    x_cam_of_neg = (np.array([-40.0, 0.0, 60.0]) @ np.asarray(fit.rotation).T)[2]
    far = (pts[..., 0] > 25) if x_cam_of_pos > x_cam_of_neg else (pts[..., 0] < -25)
    near = (pts[..., 0] < -25) if x_cam_of_pos > x_cam_of_neg else (pts[..., 0] > 25)
    far &= cov
    near &= cov
    assert vis[near].mean() > 0.5
    assert vis[far].mean() < 0.1  # occluded texels are marked
    # the far side is filled from the mirror texels, with the (symmetric) true colours
    filled = far & (src == 2)
    assert filled.sum() > 0.5 * far.sum()
    truth = texel_truth(model, layout, colours)
    err = np.abs(np.asarray(tex.texture) - truth).max(-1)
    assert np.median(err[filled]) < 0.05
    # occlusion by the depth buffer, not only back-facing: front-facing texels lying well behind
    # the photo's depth buffer (e.g. behind the nose) are hidden
    tid = np.asarray(layout.texel_triangle)
    bary = np.asarray(layout.texel_barycentric)
    v = vc[np.asarray(layout.triangles)[np.maximum(tid, 0)]]  # (S, S, 3, 3)
    n = np.cross(v[..., 1, :] - v[..., 0, :], v[..., 2, :] - v[..., 0, :])
    p = np.einsum("hwk,hwkc->hwc", bary, v)
    facing = (np.sum(n * p, -1) < 0) & cov
    depth = np.asarray(render_mesh(vc, model.triangles, fit.camera, synth.SIZE).depth)
    uvp = np.asarray(project(fit.camera, p))
    col = np.clip(uvp[..., 0].astype(int), 0, synth.SIZE[1] - 1)
    row = np.clip(uvp[..., 1].astype(int), 0, synth.SIZE[0] - 1)
    behind = facing & (depth[row, col] > 0) & (p[..., 2] > depth[row, col] + 10.0)
    assert behind.sum() > 50
    assert not np.any(vis & behind)
    # without symmetric fill, the fallback (a per-vertex albedo, here the true colours) fills
    # them, interpolated per texel
    tex3 = extract_texture(model, image, fit, synth.TEX, symmetric_fill=False,
                           fallback=colours, dilate=0)
    src3 = np.asarray(tex3.source)
    assert not np.any(src3 == 2)
    m3 = src3 == 3
    assert m3.sum() > 0.5 * far.sum()
    np.testing.assert_allclose(np.asarray(tex3.texture)[m3], np.clip(truth[m3], 0, 1),
                               atol=1e-4)
    # the default fallback is the mean visible colour
    src = np.asarray(tex.source)
    fb = np.asarray(tex.texture)[src == 3]
    mean_vis = np.asarray(tex.texture)[vis].mean(0)
    np.testing.assert_allclose(fb, np.broadcast_to(mean_vis, fb.shape), atol=2e-3)


def test_extract_vmaps_over_images(model, layout):
    mean = np.asarray(model.mean, np.float64).reshape(-1, 3)
    fits = [synth.make_fit(model, yaw=y) for y in (-0.3, 0.4)]
    images = np.stack([synth.photo(model, f, synth.pattern(mean)) for f in fits])
    verts = jnp.stack([fit_vertices_camera(model, f) for f in fits])
    tri = jnp.asarray(model.triangles, jnp.int32)
    small = uv_layout(model, 32)
    batched = jax.jit(jax.vmap(lambda v, im: extract_texture_from_vertices(
        v, tri, im, fits[0].camera, small).texture))(verts, images)
    for k in range(2):
        single = extract_texture(model, images[k], fits[k], 32).texture
        np.testing.assert_allclose(np.asarray(batched[k]), np.asarray(single), atol=1e-5)
