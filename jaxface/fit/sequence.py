"""Many images of one person: shared identity, per-image pose and expression (photo
collections), with optional temporal smoothness of pose and expression (video).

Two stages, both compiled:

1. every image is fitted independently (``jax.vmap`` of :func:`fit_landmarks`), which also
   settles the contour correspondences of each image;
2. one joint energy over a single identity and per-image pose/expression,

       E = sum_n E_lmk2D(n) + lambda_id ||alpha||^2 + lambda_exp sum_n ||beta_n||^2
           + smoothness * sum_n ( ||r_{n+1} - 2 r_n + r_{n-1}||^2 / s_r^2
                                  + ||t_{n+1} - 2 t_n + t_{n-1}||^2 / s_t^2
                                  + ||beta_n - beta_{n-1}||^2 / s_b^2 ),

   is minimised from the stage-1 solution (identity initialised at the mean of the per-image
   identities) with an optax optimiser (Adam by default) inside ``lax.scan``; blendshape weights
   are projected onto [0, 1] after every step. With ``smoothness=0`` this is multi-image fitting
   of a photo collection; with ``smoothness > 0`` and frames in temporal order it is video
   fitting, which removes the frame-to-frame jitter of independent fits.

Pose is penalised by its second difference (acceleration), so steady head motion is not
biased; expression by its first difference. The scales are s_r = 0.02 rad, s_t = 2 mm,
s_b = 0.1 (a change of that size costs as much as one landmark off by ``sigma``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxface.camera import PerspectiveCamera, project
from jaxface.fit._precision import full_precision
from jaxface.fit.landmarks import (
    MODEL_TO_CAMERA,
    FitConfig,
    FitResult,
    _landmark_basis,
    _landmark_noise,
    fit_landmarks,
)
from jaxface.geometry import axis_angle_to_matrix, matrix_to_axis_angle
from jaxface.models.morphable import MorphableModel

Array = jax.Array

SMOOTH_ROTATION = 0.02  # rad
SMOOTH_TRANSLATION = 2.0  # mm
SMOOTH_EXPRESSION = 0.1


@full_precision
def fit_landmarks_sequence(model: MorphableModel, landmarks: Any, image_size: tuple[int, int],
                           *, weights: Any = None, focal: float | None = None,
                           smoothness: float = 0.0, steps: int = 300,
                           learning_rate: float = 0.01, config: FitConfig | None = None,
                           **overrides: Any) -> FitResult:
    """Fit N images of one face with a shared identity.

    Args:
      model: the morphable model.
      landmarks: (N, L, 2) landmarks per image (pixels; NaN rows missing). For video, in frame
        order.
      image_size: (H, W), shared by all images.
      weights: (N, L) confidences, or None.
      focal: focal length in pixels shared by all images (default ``max(H, W)``).
      smoothness: weight of the temporal smoothness term (0 for an unordered photo collection;
        about 1 for video).
      steps: optimiser steps of the joint stage.
      learning_rate: Adam learning rate of the joint stage (parameters are all of order 1).
      config: FitConfig of the per-image stage (its lambdas are also used by the joint stage).

    Returns:
      A FitResult with a leading axis N on every field; ``identity`` is the same for every
      image.
    """
    cfg = config or FitConfig()
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    landmarks = jnp.asarray(landmarks, jnp.float32)
    n_lm = len(model.landmarks[cfg.landmark_set])
    if landmarks.ndim != 3 or landmarks.shape[1:] != (n_lm, 2):
        raise ValueError(f"landmarks must have shape (N, {n_lm}, 2), got {landmarks.shape}")
    n = landmarks.shape[0]
    h, w = (int(s) for s in image_size)
    weights = (jnp.ones((n, n_lm), jnp.float32) if weights is None
               else jnp.asarray(weights, jnp.float32).reshape(n, n_lm))
    f0 = float(max(h, w)) if focal is None else float(focal)
    single = jax.vmap(lambda lm, wt: fit_landmarks(model, lm, (h, w), weights=wt, focal=f0,
                                                   config=cfg))(landmarks, weights)
    if steps <= 0:
        return single
    return _joint(model, landmarks, weights, single, jnp.float32(f0), jnp.float32(smoothness),
                  jnp.float32(learning_rate), (h, w), cfg, int(steps))


@functools.partial(jax.jit, static_argnames=("image_size", "steps"))
def _joint(model: MorphableModel, observed: Array, weights: Array, init: FitResult, f0: Array,
           smoothness: Array, learning_rate: Array, image_size: tuple[int, int], cfg: FitConfig,
           steps: int) -> FitResult:
    h, w = image_size
    n_id = model.n_identity if cfg.n_identity is None else min(cfg.n_identity, model.n_identity)
    blend = model.expression_kind == "blendshape"
    lm = model.landmarks[cfg.landmark_set]
    weights = weights * jnp.asarray(lm.valid_mask(), jnp.float32)
    present = jnp.all(jnp.isfinite(observed), axis=-1)
    weights = jnp.where(present, weights, 0.0)
    observed = jnp.where(present[..., None], observed, 0.0)
    sigma = jax.vmap(_landmark_noise)(observed, present)  # (N,)
    cam = PerspectiveCamera(fx=f0, fy=f0, cx=jnp.float32(w / 2.0), cy=jnp.float32(h / 2.0))

    # Correspondences fixed from stage 1 (contour landmarks keep the vertex they slid to).
    base = jnp.asarray(lm.indices)
    base_w = jnp.asarray(lm.weights)
    vid = init.landmark_vertex_ids  # (N, L)
    ids = jnp.where((vid >= 0)[..., None], vid[..., None], base[None])  # (N, L, 3)
    wts = jnp.where((vid >= 0)[..., None], jnp.array([1.0, 0.0, 0.0]), base_w[None])
    lin = jax.vmap(lambda i, ww: _landmark_basis(model, n_id, i, ww))(ids, wts)

    std_id = jnp.asarray(model.identity_std[:n_id])
    if model.expression_basis is None:
        exp_scale = jnp.ones((0,))
    elif blend:
        exp_scale = jnp.ones((model.n_expression,))
    else:
        exp_scale = jnp.asarray(model.expression_std)
    params = dict(
        alpha=jnp.mean(init.identity[:, :n_id] / std_id, axis=0),
        rotvec=jax.vmap(matrix_to_axis_angle)(init.rotation @ MODEL_TO_CAMERA.T),
        translation=init.translation,
        beta=init.expression / jnp.where(exp_scale > 0, exp_scale, 1.0),
    )

    def energy(p: dict[str, Array]) -> Array:
        rot = jax.vmap(axis_angle_to_matrix)(p["rotvec"]) @ MODEL_TO_CAMERA  # (N, 3, 3)
        coeffs = jnp.concatenate([jnp.broadcast_to(p["alpha"], (p["beta"].shape[0], n_id)),
                                  p["beta"]], axis=1)
        p0, b = lin
        pts = p0 + jnp.einsum("nlck,nk->nlc", b, coeffs)
        cam_pts = jnp.einsum("nlc,ndc->nld", pts, rot) + p["translation"][:, None, :]
        uv = project(cam, cam_pts)
        r = (uv - observed) / sigma[:, None, None]
        e = jnp.sum(weights[..., None] * r * r)
        e += cfg.lambda_identity * jnp.sum(p["alpha"] ** 2)
        e += cfg.lambda_expression * jnp.sum(p["beta"] ** 2)
        d_r = jnp.diff(p["rotvec"], n=2, axis=0) / SMOOTH_ROTATION
        d_t = jnp.diff(p["translation"], n=2, axis=0) / SMOOTH_TRANSLATION
        d_b = jnp.diff(p["beta"] * exp_scale, axis=0) / SMOOTH_EXPRESSION
        e += smoothness * (jnp.sum(d_r ** 2) + jnp.sum(d_t ** 2) + jnp.sum(d_b ** 2))
        return 0.5 * e

    # Adam on parameters of very different scales: precondition translation (mm) by 10.
    scales = dict(alpha=1.0, rotvec=0.05, translation=10.0, beta=1.0)
    opt = optax.adam(learning_rate)
    z = {k: v / scales[k] for k, v in params.items()}

    def energy_z(z):
        return energy({k: v * scales[k] for k, v in z.items()})

    def step(carry, _):
        z, state = carry
        g = jax.grad(energy_z)(z)
        updates, state = opt.update(g, state, z)
        z = optax.apply_updates(z, updates)
        if blend:
            z = dict(z, beta=jnp.clip(z["beta"], 0.0, 1.0))
        return (z, state), None

    (z, _), _ = jax.lax.scan(step, (z, opt.init(z)), None, length=steps)
    p = {k: v * scales[k] for k, v in z.items()}
    n = observed.shape[0]
    rot = jax.vmap(axis_angle_to_matrix)(p["rotvec"]) @ MODEL_TO_CAMERA
    coeffs = jnp.concatenate([jnp.broadcast_to(p["alpha"], (n, n_id)), p["beta"]], axis=1)
    p0, b = lin
    pts = p0 + jnp.einsum("nlck,nk->nlc", b, coeffs)
    uv = project(cam, jnp.einsum("nlc,ndc->nld", pts, rot) + p["translation"][:, None, :])
    res = jnp.where(present, jnp.linalg.norm(uv - observed, axis=-1), jnp.nan)
    ident = jnp.zeros((model.n_identity,), jnp.float32).at[:n_id].set(p["alpha"] * std_id)
    batch = functools.partial(jnp.broadcast_to, shape=(n,))
    return FitResult(
        identity=jnp.broadcast_to(ident, (n, model.n_identity)),
        expression=p["beta"] * exp_scale, rotation=rot, translation=p["translation"],
        camera=jax.tree_util.tree_map(batch, cam), landmarks2d=uv, residuals=res,
        landmark_vertex_ids=init.landmark_vertex_ids,
        cost=jnp.broadcast_to(energy(p), (n,)),
        iterations=init.iterations + steps, converged=init.converged)
