"""Landmark fitting: synthetic recovery, contour behaviour, batching, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.camera import PerspectiveCamera, project
from jaxface.fit import MODEL_TO_CAMERA, fit_landmarks, model_vertices_camera
from jaxface.geometry import axis_angle_to_matrix
from jaxface.models import landmarks, load_default, vertices
from tests.jaxpr_tools import HIGHEST, dot_precisions

H, W = 480, 640
CAM = PerspectiveCamera(fx=640.0, fy=640.0, cx=W / 2, cy=H / 2)


@pytest.fixture(scope="module")
def model():
    return load_default()


def _synthetic(model, seed, rotvec, noise_px=0.0):
    rng = np.random.default_rng(seed)
    ident = rng.normal(0, 1, model.n_identity).astype(np.float32) * np.asarray(model.identity_std)
    expr = np.zeros(model.n_expression, np.float32)
    expr[list(model.expression_names).index("jawOpen")] = 0.3
    verts = vertices(model, ident, expr)
    rot = axis_angle_to_matrix(jnp.asarray(rotvec, jnp.float32)) @ MODEL_TO_CAMERA
    t = jnp.array([15.0, -10.0, 650.0])
    lm = project(CAM, landmarks(model, verts) @ rot.T + t)
    lm = lm + rng.normal(0, noise_px, lm.shape).astype(np.float32)
    return dict(lm=np.asarray(lm), rot=np.asarray(rot), t=np.asarray(t), verts=verts)


def _angle_deg(r1, r2):
    c = (np.trace(np.asarray(r1).T @ np.asarray(r2)) - 1) / 2
    return np.degrees(np.arccos(np.clip(c, -1, 1)))


def test_recovers_pose_from_exact_landmarks(model):
    s = _synthetic(model, 0, [0.1, 0.35, 0.05])
    # a weak prior: exact data should then be explained almost exactly
    r = fit_landmarks(model, s["lm"], (H, W), focal=640.0, use_contour=False,
                      lambda_identity=0.01, lambda_expression=0.01, inner_iterations=20)
    assert float(r.rmse_px) < 0.5
    assert _angle_deg(r.rotation, s["rot"]) < 2.0
    # depth is the weakly observed direction (scale/identity ambiguity): within 3 %
    assert abs(float(r.translation[2]) - 650.0) < 0.03 * 650.0
    assert np.all(np.asarray(r.expression) >= 0) and np.all(np.asarray(r.expression) <= 1)


def test_noise_level_residual_and_prior(model):
    s = _synthetic(model, 1, [-0.05, -0.25, 0.0], noise_px=1.0)
    r = fit_landmarks(model, s["lm"], (H, W), focal=640.0, use_contour=False)
    # 2D noise of 1 px per axis: per-landmark error ~ 1.4 px; a good fit lands close to it
    # and never far below it (that would be overfitting the noise) nor far above.
    assert 0.6 < float(r.rmse_px) < 2.0
    assert _angle_deg(r.rotation, s["rot"]) < 3.0


def test_lm_converges_early_with_active_bounds(model):
    # Many blendshape weights end on a bound; LM must still meet its tolerance in a few steps
    # (projecting unconstrained steps onto the box ran all 60 here without converging) and
    # stop at the cost of a run that never stops early.
    s = _synthetic(model, 9, [-0.1, -0.4, 0.0], noise_px=0.5)
    kw = dict(focal=640.0, use_contour=False, outer_iterations=1, inner_iterations=60)
    r = fit_landmarks(model, s["lm"], (H, W), **kw)
    full = fit_landmarks(model, s["lm"], (H, W), tolerance=0.0, **kw)
    ex = np.asarray(r.expression)
    assert np.sum((ex == 0) | (ex == 1)) >= 10  # the bounds are active
    assert bool(r.converged) and int(r.iterations) <= 15, int(r.iterations)
    assert float(r.cost) <= float(full.cost) * (1 + 1e-4)


def test_more_regularisation_means_smaller_coefficients(model):
    s = _synthetic(model, 2, [0.0, 0.2, 0.0], noise_px=0.5)
    weak = fit_landmarks(model, s["lm"], (H, W), lambda_identity=0.1, use_contour=False)
    strong = fit_landmarks(model, s["lm"], (H, W), lambda_identity=100.0, use_contour=False)
    assert np.linalg.norm(strong.identity) < 0.5 * np.linalg.norm(weak.identity)
    assert float(strong.rmse_px) > float(weak.rmse_px)


def test_contour_landmarks_slide_to_silhouette(model):
    # A detector puts jaw landmarks on the visible outline. Emulate it: at the true pose, move
    # each jaw landmark to the silhouette candidate nearest (in 3D) to its fixed vertex. The
    # contour fit must explain those points better than the fixed-vertex fit.
    from jaxface.mesh.normals import vertex_normals

    s = _synthetic(model, 3, [0.0, 0.6, 0.0])
    verts = np.asarray(s["verts"])
    cam_v = verts @ s["rot"].T + s["t"]
    normals = np.asarray(vertex_normals(jnp.asarray(cam_v), jnp.asarray(model.triangles)))
    contour = model.contours["ibug68"]
    base = np.asarray(model.landmarks["ibug68"].indices)[:, 0]
    target = base.copy()
    moved = 0
    for li, cand in zip(np.asarray(contour.landmark_index), np.asarray(contour.candidates),
                        strict=True):
        cand = cand[cand >= 0]
        view = cam_v[cand] / np.linalg.norm(cam_v[cand], axis=1, keepdims=True)
        sil = cand[np.abs(np.sum(normals[cand] * view, 1)) < np.cos(np.radians(60))]
        if sil.size:
            target[li] = sil[np.argmin(np.linalg.norm(verts[sil] - verts[base[li]], axis=1))]
            moved += int(target[li] != base[li])
    assert moved >= 3  # the test is only meaningful if some jaw points move
    lm = np.asarray(project(CAM, jnp.asarray(cam_v[target])))
    kw = dict(focal=640.0)
    fixed = fit_landmarks(model, lm, (H, W), use_contour=False, **kw)
    cont = fit_landmarks(model, lm, (H, W), use_contour=True, **kw)
    jaw = np.asarray(contour.landmark_index)
    err_fixed = np.sqrt(np.mean(np.asarray(fixed.residuals)[jaw] ** 2))
    err_cont = np.sqrt(np.mean(np.asarray(cont.residuals)[jaw] ** 2))
    assert err_cont < 0.7 * err_fixed, (err_cont, err_fixed)
    ids = np.asarray(cont.landmark_vertex_ids)
    assert np.all(ids[17:] == base[17:])  # inner landmarks never move
    # the fixed-vertex fit explains the outline by a wrong head turn; the contour fit does not
    assert _angle_deg(cont.rotation, s["rot"]) < 0.5 * _angle_deg(fixed.rotation, s["rot"])


def test_vmap_over_images_matches_single(model):
    a = _synthetic(model, 4, [0.0, 0.3, 0.0], noise_px=0.5)["lm"]
    b = _synthetic(model, 5, [0.1, -0.3, 0.1], noise_px=0.5)["lm"]
    batched = jax.vmap(lambda lm: fit_landmarks(model, lm, (H, W), use_contour=False))(
        jnp.stack([a, b]))
    single = fit_landmarks(model, b, (H, W), use_contour=False)
    np.testing.assert_allclose(batched.rotation[1], single.rotation, atol=2e-3)
    np.testing.assert_allclose(batched.landmarks2d[1], single.landmarks2d, atol=0.05)


def test_vmap_in_chunks_matches_single(model, monkeypatch):
    # a batch larger than VMAP_CHUNK runs as lax.map over vmapped chunks (and a remainder):
    # every member must still be its own single fit
    import jaxface.fit.landmarks as lmk

    monkeypatch.setattr(lmk, "VMAP_CHUNK", 2)
    lms = [_synthetic(model, 20 + i, [0.05 * i, 0.3 - 0.15 * i, 0.0], noise_px=0.5)["lm"]
           for i in range(5)]
    batched = jax.vmap(lambda lm: fit_landmarks(model, lm, (H, W)))(jnp.stack(lms))
    for i in (0, 3, 4):  # first chunk, second chunk, remainder
        single = fit_landmarks(model, lms[i], (H, W))
        np.testing.assert_allclose(batched.landmarks2d[i], single.landmarks2d, atol=0.05)
        np.testing.assert_array_equal(batched.landmark_vertex_ids[i],
                                      single.landmark_vertex_ids)


@pytest.mark.parametrize("bordered", [True, False])
def test_bordered_cholesky_solves(bordered, monkeypatch):
    # the LM step's factorisation: one Cholesky of [[a, b], [b^T, c]] gives L and L^{-1} b
    # (CPU), or a full symmetric factorisation and a solve (other backends); both read only
    # the upper triangle of ``a``
    import jaxface.fit.landmarks as lmk
    from jaxface.fit.landmarks import _cholesky_backward, _cholesky_forward

    monkeypatch.setattr(lmk, "_bordered_factorisation", lambda: bordered)
    rng = np.random.default_rng(0)
    j = rng.normal(size=(12, 9))
    a = j.T @ j + 0.1 * np.eye(9)
    b = rng.normal(size=9)
    with jax.enable_x64(True):
        lb, z = _cholesky_forward(jnp.triu(jnp.asarray(a)), jnp.asarray(b))  # upper read
        np.testing.assert_allclose(lb[:9, :9], np.linalg.cholesky(a), rtol=1e-10)
        np.testing.assert_allclose(z, np.linalg.solve(np.linalg.cholesky(a), b), rtol=1e-9)
        np.testing.assert_allclose(_cholesky_backward(lb, z), np.linalg.solve(a, b),
                                   rtol=1e-9)


def test_unbordered_factorisation_gives_the_same_fits(model, monkeypatch):
    # the factorisation used off CPU (full symmetric matrix, separate solve), run here on CPU:
    # the same fits as the bordered one, single and vmapped
    import jaxface.fit.landmarks as lmk

    lms = jnp.stack([_synthetic(model, 30 + i, [0.1 * i, 0.35 - 0.3 * i, 0.0], noise_px=0.5)["lm"]
                     for i in range(3)])
    ref = jax.vmap(lambda lm: fit_landmarks(model, lm, (H, W)))(lms)
    monkeypatch.setattr(lmk, "_bordered_factorisation", lambda: False)
    jax.clear_caches()
    try:
        got = jax.vmap(lambda lm: fit_landmarks(model, lm, (H, W)))(lms)
        one = fit_landmarks(model, lms[2], (H, W))
    finally:
        jax.clear_caches()
    np.testing.assert_allclose(got.landmarks2d, ref.landmarks2d, atol=0.05)
    np.testing.assert_allclose(one.landmarks2d, ref.landmarks2d[2], atol=0.05)
    np.testing.assert_array_equal(got.landmark_vertex_ids, ref.landmark_vertex_ids)


@pytest.mark.parametrize("inner", [1, 3])
def test_flat_loop_matches_nested_loop(model, inner):
    # A concrete model runs the rounds in one while loop, re-matching the contour on the mesh
    # around the candidates; a traced one (an outer jit's argument) in nested round / step
    # loops, on the whole mesh. Same rounds, same result.
    s = _synthetic(model, 3, [0.05, 0.6, 0.0], noise_px=0.5)
    kw = dict(focal=640.0, inner_iterations=inner, outer_iterations=4)
    flat = fit_landmarks(model, s["lm"], (H, W), **kw)
    nested = jax.jit(lambda m, y: fit_landmarks(m, y, (H, W), **kw))(model, s["lm"])
    assert int(flat.iterations) == int(nested.iterations) >= 3
    assert bool(flat.converged) == bool(nested.converged)
    np.testing.assert_array_equal(flat.landmark_vertex_ids, nested.landmark_vertex_ids)
    np.testing.assert_allclose(flat.landmarks2d, nested.landmarks2d, atol=0.02)
    np.testing.assert_allclose(flat.cost, nested.cost, rtol=1e-4)


def test_pose_steps_lower_the_energy(model):
    # from the frontal guess, a few pose-only steps before the full LM keep the shape from
    # absorbing the pose error: the fit ends at a lower energy with them
    s = _synthetic(model, 10, [0.1, 0.7, 0.05], noise_px=1.0)
    with_pose = fit_landmarks(model, s["lm"], (H, W), focal=640.0)
    without = fit_landmarks(model, s["lm"], (H, W), focal=640.0, pose_iterations=0)
    assert float(with_pose.cost) < float(without.cost) * 1.001
    assert _angle_deg(with_pose.rotation, s["rot"]) < 5.0


def test_missing_landmarks_are_ignored(model):
    s = _synthetic(model, 6, [0.0, 0.1, 0.0])
    lm = s["lm"].copy()
    lm[48:60] = np.nan  # mouth occluded
    r = fit_landmarks(model, lm, (H, W), focal=640.0, use_contour=False, lambda_identity=0.01,
                      lambda_expression=0.01)
    res = np.asarray(r.residuals)
    assert np.all(np.isnan(res[48:60])) and np.all(np.isfinite(res[:48]))
    assert np.nanmean(res) < 0.6


def test_focal_estimation_moves_towards_truth(model):
    s = _synthetic(model, 7, [0.2, 0.5, 0.0])
    r = fit_landmarks(model, s["lm"], (H, W), focal=900.0, estimate_focal=True, use_contour=False,
                      lambda_focal=0.01)
    assert abs(float(r.camera.fx) - 640.0) < abs(900.0 - 640.0)


def test_fitted_mesh_in_front_of_camera(model):
    s = _synthetic(model, 8, [0.0, 0.0, 0.0])
    r = fit_landmarks(model, s["lm"], (H, W))
    v = np.asarray(model_vertices_camera(model, r))
    assert v[:, 2].min() > 0


def test_bad_input(model):
    with pytest.raises(ValueError, match=r"\(68, 2\)"):
        fit_landmarks(model, np.zeros((5, 2)), (H, W))
    with pytest.raises(ValueError, match="landmark set"):
        fit_landmarks(model, np.zeros((68, 2)), (H, W), landmark_set="nope")
    with pytest.raises(ValueError, match="robust"):
        fit_landmarks(model, np.zeros((68, 2)) + 100, (H, W), robust="cauchy")
    with pytest.raises(ValueError, match="inner_iterations"):
        fit_landmarks(model, np.zeros((68, 2)) + 100, (H, W), inner_iterations=0)
    with pytest.raises(ValueError, match="pose_iterations"):
        fit_landmarks(model, np.zeros((68, 2)) + 100, (H, W), pose_iterations=-1)


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_optax_solvers_reach_the_lm_optimum(model, solver):
    s = _synthetic(model, 1, [-0.05, -0.25, 0.0], noise_px=1.0)
    lm = fit_landmarks(model, s["lm"], (H, W), focal=640.0, use_contour=False)
    opt = fit_landmarks(model, s["lm"], (H, W), focal=640.0, use_contour=False, solver=solver)
    assert float(opt.cost) < 1.05 * float(lm.cost)
    assert _angle_deg(opt.rotation, s["rot"]) < 3.0
    with pytest.raises(ValueError, match="solver"):
        fit_landmarks(model, s["lm"], (H, W), solver="sgd")


def test_fits_use_full_float32_products(model):
    # NVIDIA GPUs default float32 products to TF32 (~3 significant digits): the normal
    # equations then go wrong (vmapped fits on an H100 landed up to 13 px off the per-image
    # ones). Every product in the fits must ask for full precision, whatever the caller's
    # default.
    from jaxface.fit.linear import fit_linear
    from jaxface.fit.photometric import fit_photometric
    from jaxface.fit.sequence import fit_landmarks_sequence

    lm = jnp.asarray(_synthetic(model, 7, [0.0, 0.2, 0.0])["lm"])
    init = fit_landmarks(model, lm, (H, W))
    image = jnp.full((H, W, 3), 0.5, jnp.float32)
    with jax.default_matmul_precision("bfloat16"):
        for name, fn, arg in (
                ("landmarks", lambda y: fit_landmarks(model, y, (H, W)), lm),
                ("vmapped", lambda y: jax.vmap(lambda z: fit_landmarks(model, z, (H, W)))(y[None]),
                 lm),
                ("linear", lambda y: fit_linear(model, y, (H, W)), lm),
                ("sequence", lambda y: fit_landmarks_sequence(model, jnp.stack([y, y]), (H, W),
                                                              steps=2), lm),
                ("photometric", lambda im: fit_photometric(model, im, init, lm, steps=2, size=32),
                 image)):
            precisions = dot_precisions(fn, arg)
            assert len(precisions) > 2, name
            assert all(p == HIGHEST for p in precisions), (name, set(map(str, precisions)))
