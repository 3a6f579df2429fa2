"""Frontalisation, relighting and expression transfer on synthetic photos."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.edit import (
    expression_from_names,
    extract_texture,
    fit_vertices_camera,
    frontalize,
    relight,
    transfer_expression,
)
from jaxface.render.shading import sh_ambient, sh_directional
from tests.edit import synth

TEX = 64


@pytest.fixture(scope="module")
def model():
    return synth.default_model()


@pytest.fixture(scope="module")
def turned(model):
    mean = np.asarray(model.mean, np.float64).reshape(-1, 3)
    colours = synth.pattern(mean)
    fit = synth.make_fit(model, yaw=0.5)
    image = synth.photo(model, fit, colours)
    return fit, image, colours


def test_frontalize_centres_the_face(model, turned):
    fit, image, colours = turned
    tex = extract_texture(model, image, fit, TEX)
    out = frontalize(model, fit, tex, (64, 64), fit_image_size=synth.SIZE)
    img, mask = np.asarray(out.image), np.asarray(out.mask)
    assert img.shape == (64, 64, 3) and mask.shape == (64, 64)
    assert 0.1 < mask.mean() < 0.9
    rows, cols = np.nonzero(mask > 0.5)
    assert abs(cols.mean() - 31.5) < 3.0 and abs(rows.mean() - 31.5) < 5.0
    # frontal: the mask is left/right symmetric (within a few %)
    assert np.abs(mask - mask[:, ::-1]).mean() < 0.05 * mask.mean() + 0.01
    # the textured render shows the photo's colours: compare with an unlit render of the
    # known colours at the same frontal pose, where the texel was observed (centre of the face)
    assert np.all(img[mask == 0] == 0.0)
    centre = img[24:40, 26:38]
    ref = frontal_reference(model, fit, colours)[24:40, 26:38]
    assert np.median(np.abs(centre - ref)) < 0.05


@pytest.mark.parametrize("size", [64, 48])
def test_frontalize_small_output_has_no_holes(model, turned, size):
    """Regression: at small output sizes the occluder copy of each textured triangle (the full
    mesh passed as ``occluders``) sometimes won the z-buffer tie and left black speckles.

    (The tie is lost when XLA's backend optimisations make the rasteriser's depth of the same
    triangle differ in the last bit between fragment chunks; tests/conftest.py turns those off,
    so this test shows the bug only with JAXFACE_TEST_FULL_XLA=1. The next test emulates it.)"""
    from scipy import ndimage

    fit, image, _ = turned
    tex = extract_texture(model, image, fit, TEX)
    out = frontalize(model, fit, tex, (size, size), fit_image_size=synth.SIZE)
    img, mask = np.asarray(out.image), np.asarray(out.mask) > 0.5
    face = ndimage.binary_fill_holes(mask)
    assert mask.sum() > 0.1 * size * size
    assert (face & ~mask).sum() == 0
    assert np.mean(img[face].max(-1) < 0.02) < 0.002


def test_render_textured_ignores_depth_noise_between_copies(model, turned, monkeypatch):
    """render_textured must not rely on the z-buffer breaking exact depth ties: emulate a
    rasteriser whose depth carries per-triangle last-bits noise (as chunked XLA code can)."""
    import jaxface.edit.texture as texture_mod
    from jaxface.edit import frontal_pose, render_textured
    from jaxface.models import vertices
    from jaxface.render.rasterize import rasterize

    def noisy_rasterize(sv, tri, image_size, w=None, **kw):
        tri = jnp.asarray(tri, jnp.int32)
        ids = jnp.arange(tri.shape[0], dtype=jnp.uint32)
        jitter = ((ids * jnp.uint32(2654435761)) >> 20).astype(jnp.float32) / 4096.0 - 0.5
        p = jnp.asarray(sv)[tri]  # unshared corners: each triangle gets its own depth scale
        p = p.at[..., 2].multiply(1.0 + 2e-6 * jitter[:, None])
        ww = None if w is None else jnp.asarray(w)[tri].reshape(-1)
        return rasterize(p.reshape(-1, 3), jnp.arange(3 * tri.shape[0], dtype=jnp.int32).reshape(
            -1, 3), image_size, w=ww, **kw)

    monkeypatch.setattr(texture_mod, "rasterize", noisy_rasterize)
    fit, image, _ = turned
    tex = extract_texture(model, image, fit, TEX)
    v = vertices(model, fit.identity, fit.expression)
    used = np.unique(np.asarray(tex.layout.triangles))
    rot, trans, cam = frontal_pose(v[used], fit, (48, 48), synth.SIZE)
    tri = jnp.asarray(model.triangles, jnp.int32)
    _, mask, _ = render_textured(v @ rot.T + trans, tex.layout, tex.texture, cam, (48, 48))
    _, mask_occ, _ = render_textured(v @ rot.T + trans, tex.layout, tex.texture, cam, (48, 48),
                                     occluders=tri)
    mask, mask_occ = np.asarray(mask) > 0.5, np.asarray(mask_occ) > 0.5
    assert mask.sum() > 200
    # nothing of the full mesh is in front of the frontal face: the occluders hide nothing
    assert (mask & ~mask_occ).sum() <= 2


def test_render_textured_skips_occluder_copies_of_textured_triangles():
    from jaxface.edit.texture import _duplicates_of

    tri = jnp.array([[0, 1, 2], [2, 3, 0], [4, 5, 6], [1, 2, 3], [6, 4, 5]], jnp.int32)
    ref = jnp.array([[5, 4, 6], [0, 1, 2], [7, 8, 9]], jnp.int32)
    want = [True, False, True, False, True]
    assert np.asarray(_duplicates_of(tri, ref)).tolist() == want
    assert np.asarray(jax.jit(_duplicates_of)(tri, ref)).tolist() == want
    assert np.asarray(_duplicates_of(tri, ref[:0])).tolist() == [False] * 5


def frontal_reference(model, fit, colours):
    from jaxface.edit import frontal_pose, uv_layout
    from jaxface.models import vertices
    from jaxface.render.pipeline import render_mesh

    layout = uv_layout(model, TEX)
    v = vertices(model, fit.identity, fit.expression)
    used = np.unique(np.asarray(layout.triangles))
    rot, trans, cam = frontal_pose(v[used], fit, (64, 64), synth.SIZE)
    out = render_mesh(v @ rot.T + trans, model.triangles, cam, (64, 64), albedo=colours,
                      sh=sh_ambient(1.0))
    return np.asarray(out.rgb)


def test_relight_same_light_is_identity_and_ratio_is_applied(model, turned):
    fit, image, _ = turned
    sh = sh_ambient(1.0)
    same = relight(model, fit, image, sh, sh_old=sh)
    np.testing.assert_allclose(np.asarray(same.image), image, atol=1e-6)
    # halving the light halves the face pixels where the composite weight is 1, and leaves
    # the rest of the photo alone
    half = relight(model, fit, image, 0.5 * sh, sh_old=sh)
    alpha = np.asarray(half.mask)
    out = np.asarray(half.image)
    inner = alpha > 0.999
    assert inner.sum() > 200
    np.testing.assert_allclose(out[inner], 0.5 * image[inner], atol=1e-5)
    np.testing.assert_allclose(out[alpha == 0], image[alpha == 0], atol=1e-6)
    # a side light brightens one cheek relative to the other
    side = relight(model, fit, image, sh_ambient(0.5) + sh_directional(
        jnp.array([1.0, 0.0, -0.3]), 0.8), sh_old=sh)
    ratio = np.asarray(side.image).mean(-1) / np.maximum(image.mean(-1), 1e-3)
    cols = np.nonzero(inner)[1]
    mid = np.median(cols)
    left = inner & (np.arange(image.shape[1])[None, :] < mid - 5)
    right = inner & (np.arange(image.shape[1])[None, :] > mid + 5)
    assert ratio[right].mean() > ratio[left].mean() + 0.2


def test_relight_estimated_light_round_trip(model, turned):
    fit, image, colours = turned
    from jaxface.edit import relight_vertices
    from jaxface.edit.relight import face_triangle_mask

    verts = fit_vertices_camera(model, fit)
    ft = jnp.asarray(face_triangle_mask(model))
    tri = jnp.asarray(model.triangles, jnp.int32)
    # the photo's light is estimated (least squares, true albedo): it is the unit ambient light
    # the photo was rendered with, so relighting with that light changes nothing...
    same = relight_vertices(verts, tri, ft, image, fit.camera, sh_ambient(1.0), None,
                            albedo=colours)
    assert np.abs(np.asarray(same.image) - image).max() < 0.02
    # ...and doubling it doubles the (dark enough) face pixels
    dbl = relight_vertices(verts, tri, ft, image, fit.camera, 2.0 * sh_ambient(1.0), None,
                           albedo=colours)
    inner = (np.asarray(dbl.mask) > 0.999) & (image.max(-1) < 0.45)
    assert inner.sum() > 50
    np.testing.assert_allclose(np.asarray(dbl.image)[inner], 2 * image[inner], atol=0.03)


def test_expression_transfer_changes_only_the_moving_region(model):
    mean = np.asarray(model.mean, np.float64).reshape(-1, 3)
    colours = synth.pattern(mean)
    fit = synth.make_fit(model, yaw=0.2)
    image = synth.photo(model, fit, colours)
    tex = extract_texture(model, image, fit, TEX)
    # the same expression: the photo comes back
    same = transfer_expression(model, fit, np.asarray(fit.expression), image, tex)
    assert np.abs(np.asarray(same.image) - image).max() < 0.02
    target = expression_from_names(model, {"jawOpen": 0.7})
    out = transfer_expression(model, fit, target, image, tex)
    diff = np.abs(np.asarray(out.image) - image).max(-1)
    changed = diff > 0.05
    assert changed.sum() > 30
    # changed pixels lie where the surface moved: near vertices displaced by > 0.5 mm
    v0 = np.asarray(fit_vertices_camera(model, fit))
    v1 = np.asarray(fit_vertices_camera(model, fit, expression=target))
    moved = np.linalg.norm(v1 - v0, axis=1) > 0.5
    cam = fit.camera
    pts = np.concatenate([v0[moved], v1[moved]])
    u = float(cam.fx) * pts[:, 0] / pts[:, 2] + float(cam.cx)
    v = float(cam.fy) * pts[:, 1] / pts[:, 2] + float(cam.cy)
    region = np.zeros(diff.shape, bool)
    for x, y in zip(u, v, strict=True):
        region[max(int(y) - 2, 0):int(y) + 3, max(int(x) - 2, 0):int(x) + 3] = True
    assert np.mean(changed[~region]) < 0.002
    # the lower face (mouth, jaw) changed, not the forehead
    rows = np.nonzero(changed)[0]
    lm = np.asarray(fit_vertices_camera(model, fit))[np.asarray(
        model.landmarks["ibug68"].indices)[:, 0]]
    nose_row = float(cam.fy) * lm[30, 1] / lm[30, 2] + float(cam.cy)
    assert np.median(rows) > nose_row
    with pytest.raises(ValueError, match="no expression"):
        expression_from_names(model, {"notAShape": 1.0})
    with pytest.raises(ValueError, match="shape"):
        transfer_expression(model, fit, np.zeros(3), image, tex)
