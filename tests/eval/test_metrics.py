"""Metrics against brute-force NumPy references and hand cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.eval.metrics import (
    aligned_vertex_error,
    chamfer_scan_mesh,
    euler_error_degrees,
    landmark_rmse,
    nearest_point_distance,
    nme,
    point_triangle_distance,
    rotation_error_degrees,
    scan_to_mesh,
)
from jaxface.geometry import euler_to_matrix


def _face68(rng):
    return rng.uniform(100, 300, (68, 2)).astype(np.float32)


def test_nme_hand_cases(rng):
    gt = _face68(rng)
    gt[36] = [100.0, 150.0]
    gt[45] = [180.0, 150.0]
    pred = gt + np.array([3.0, 4.0], np.float32)  # every point off by 5 px
    lo, hi = gt.min(0), gt.max(0)
    np.testing.assert_allclose(nme(pred, gt, "bbox"), 5.0 / np.sqrt(np.prod(hi - lo)), rtol=1e-5)
    np.testing.assert_allclose(nme(pred, gt, "diag"), 5.0 / np.linalg.norm(hi - lo), rtol=1e-5)
    np.testing.assert_allclose(nme(pred, gt, "interocular"), 5.0 / 80.0, rtol=1e-5)
    pupils = np.linalg.norm(gt[36:42].mean(0) - gt[42:48].mean(0))
    np.testing.assert_allclose(nme(pred, gt, "interpupil"), 5.0 / pupils, rtol=1e-5)
    np.testing.assert_allclose(landmark_rmse(pred, gt), 5.0, rtol=1e-5)
    assert float(nme(gt, gt)) == 0.0


def test_nme_matches_3ddfa_reference_batched(rng):
    gt = rng.uniform(0, 400, (5, 68, 2))
    pred = gt + rng.normal(0, 4, gt.shape)
    ref = []
    for p, g in zip(pred, gt, strict=True):  # 3DDFA benchmark_aflw2000.py `ana` loop
        minx, maxx, miny, maxy = g[:, 0].min(), g[:, 0].max(), g[:, 1].min(), g[:, 1].max()
        llength = np.sqrt((maxx - minx) * (maxy - miny))
        ref.append(np.mean(np.sqrt(np.sum((p - g) ** 2, 1))) / llength)
    np.testing.assert_allclose(jax.jit(nme)(pred.astype(np.float32), gt.astype(np.float32)), ref,
                               rtol=1e-5)


def test_nme_valid_mask_and_errors(rng):
    gt = _face68(rng)
    pred = gt.copy()
    pred[0] += 1000.0
    valid = np.ones(68, bool)
    valid[0] = False
    assert float(nme(pred, gt, valid=valid)) < 1e-7
    with pytest.raises(ValueError, match="normalisation"):
        nme(pred, gt, "eyes")
    with pytest.raises(ValueError, match="68"):
        nme(pred[:10], gt[:10], "interocular")
    with pytest.raises(ValueError, match="equal shapes"):
        nme(pred, gt[:60])


def _umeyama_errors(src, dst):
    """NumPy reference: Umeyama similarity src -> dst in float64, then per-point distances."""
    src, dst = src.astype(np.float64), dst.astype(np.float64)
    ms, md = src.mean(0), dst.mean(0)
    cov = (dst - md).T @ (src - ms) / len(src)
    u, sv, vt = np.linalg.svd(cov)
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    r = u @ d @ vt
    s = np.trace(np.diag(sv) @ d) / ((src - ms) ** 2).sum(1).mean()
    return np.linalg.norm(s * (src - ms) @ r.T + md - dst, axis=1)


def test_aligned_vertex_error(rng):
    gt = rng.normal(0, 50, (200, 3)).astype(np.float32)
    rot = np.asarray(euler_to_matrix(jnp.array([0.3, -0.2, 0.8])))
    noise = rng.normal(0, 0.5, gt.shape).astype(np.float32)
    pred = (1.7 * (gt + noise) @ rot.T + np.array([5.0, -3.0, 20.0])).astype(np.float32)
    err = aligned_vertex_error(pred, gt)
    np.testing.assert_allclose(err.per_vertex, _umeyama_errors(pred, gt), atol=2e-3)
    assert abs(float(err.mean) - np.linalg.norm(noise, axis=1).mean()) < 0.05
    np.testing.assert_allclose(err.mean, np.nanmean(err.per_vertex), rtol=1e-5)
    np.testing.assert_allclose(err.median, np.median(np.asarray(err.per_vertex)), rtol=1e-5)
    # without scale the 1.7x size difference remains as error
    assert float(aligned_vertex_error(pred, gt, with_scale=False).mean) > 10.0
    # a mask: outliers outside it neither move the alignment nor count
    pred2 = pred.copy()
    pred2[:20] += 500.0
    mask = np.arange(200) >= 20
    err2 = aligned_vertex_error(pred2, gt, mask=mask)
    assert np.isnan(np.asarray(err2.per_vertex)[:20]).all()
    np.testing.assert_allclose(err2.per_vertex[20:], _umeyama_errors(pred[20:], gt[20:]),
                               atol=2e-3)


def test_pose_errors():
    a = euler_to_matrix(jnp.array([0.1, 0.2, 0.3]))
    b = euler_to_matrix(jnp.array([0.1, 0.2 + np.radians(10.0), 0.3]))
    np.testing.assert_allclose(euler_error_degrees(a, b), [0.0, 10.0, 0.0], atol=1e-3)
    z = euler_to_matrix(jnp.array([0.0, 0.0, np.radians(25.0)]))
    np.testing.assert_allclose(rotation_error_degrees(z, jnp.eye(3)), 25.0, atol=1e-3)


def _closest_point_reference(p, a, b, c):
    """Ericson, Real-Time Collision Detection, 5.1.5 (branchy NumPy reference)."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = ab @ ap, ac @ ap
    if d1 <= 0 and d2 <= 0:
        return a
    bp = p - b
    d3, d4 = ab @ bp, ac @ bp
    if d3 >= 0 and d4 <= d3:
        return b
    vc = d1 * d4 - d3 * d2
    if vc <= 0 and d1 >= 0 and d3 <= 0:
        return a + d1 / (d1 - d3) * ab
    cp = p - c
    d5, d6 = ab @ cp, ac @ cp
    if d6 >= 0 and d5 <= d6:
        return c
    vb = d5 * d2 - d1 * d6
    if vb <= 0 and d2 >= 0 and d6 <= 0:
        return a + d2 / (d2 - d6) * ac
    va = d3 * d6 - d5 * d4
    if va <= 0 and (d4 - d3) >= 0 and (d5 - d6) >= 0:
        return b + (d4 - d3) / ((d4 - d3) + (d5 - d6)) * (c - b)
    denom = 1.0 / (va + vb + vc)
    return a + ab * vb * denom + ac * vc * denom


def test_point_triangle_hand_cases():
    a, b, c = (np.array(x, np.float32) for x in ([0, 0, 0], [1, 0, 0], [0, 1, 0]))
    cases = {(0.2, 0.2, 3.0): 3.0,  # above the interior
             (-1.0, -1.0, 0.0): np.sqrt(2.0),  # vertex region of a
             (0.5, -2.0, 0.0): 2.0,  # edge ab
             (1.0, 1.0, 0.0): np.sqrt(0.5)}  # edge bc
    for p, d in cases.items():
        np.testing.assert_allclose(point_triangle_distance(np.array(p), a, b, c), d, rtol=1e-5)
    # a degenerate (collinear) triangle is a segment
    np.testing.assert_allclose(point_triangle_distance(np.array([0.5, 1.0, 0.0]), a, b,
                                                       np.array([2.0, 0, 0])), 1.0, rtol=1e-5)


def test_scan_to_mesh_against_bruteforce(rng):
    verts = rng.normal(0, 1, (30, 3)).astype(np.float32)
    tris = np.array([rng.choice(30, 3, replace=False) for _ in range(25)])
    points = rng.normal(0, 1.5, (37, 3)).astype(np.float32)
    ref = np.array([[np.linalg.norm(p - _closest_point_reference(p, *verts[t].astype(np.float64)))
                     for t in tris] for p in points.astype(np.float64)])
    d, idx = jax.jit(scan_to_mesh, static_argnums=(3, 4))(points, verts, tris, 8, 6)
    np.testing.assert_allclose(d, ref.min(1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ref[np.arange(37), np.asarray(idx)], ref.min(1), atol=1e-4)
    d_one, _ = scan_to_mesh(points, verts, tris)  # one chunk
    np.testing.assert_allclose(d_one, d, atol=1e-6)


def test_chamfer_and_nearest(rng):
    a = rng.normal(size=(50, 3)).astype(np.float32)
    b = rng.normal(size=(40, 3)).astype(np.float32)
    ref = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(nearest_point_distance(a, b, chunk=7), ref, atol=1e-4)
    # points sampled on the mesh: scan->mesh distance 0
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], np.float32)
    tris = np.array([[0, 1, 2], [1, 3, 2]])
    pts = np.concatenate([rng.uniform(0, 1, (20, 2)), np.zeros((20, 1))], 1).astype(np.float32)
    res = chamfer_scan_mesh(pts, verts, tris)
    np.testing.assert_allclose(res.scan_to_mesh, 0.0, atol=1e-5)
    ref_m2s = np.sqrt(((verts[:, None] - pts[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(res.mesh_to_scan, ref_m2s, atol=1e-5)
    np.testing.assert_allclose(res.symmetric, 0.5 * ref_m2s.mean(), atol=1e-5)
