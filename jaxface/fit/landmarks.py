"""Non-linear landmark fitting (survey §3.1-3.2, eq 6) under a perspective camera.

Energy, with landmark residuals in units of the landmark noise ``sigma`` (pixels; 2 % of the
detected landmarks' bounding-box diagonal, at least 1 px):

    E = sum_i w_i ||pi(K, R S_i(alpha, beta) + t) - y_i||^2 / sigma^2   (E_lmk2D, survey eq 6)
      + lambda_id  ||alpha / sigma_id||^2                               (E_reg, identity)
      + lambda_exp ||beta / sigma_exp||^2                               (E_reg, expression)
      + lambda_f   (log f - log f0)^2 / 0.25^2                          (only if f is estimated)

solved by Levenberg-Marquardt (``jax.jacfwd`` + a damped normal-equation solve), entirely inside
``lax`` control flow so that one call compiles once and ``jax.vmap`` batches it over images.
Blendshape expressions are box-constrained to [0, 1] by an active set (weights held at a bound
leave the step's system), with Nielsen's gain-ratio update of the damping.

Robust loss: with ``robust="huber"`` each landmark's weight is re-estimated every outer round
(iteratively reweighted least squares) so that residuals beyond ``huber_delta * sigma`` count
linearly.

Contour landmarks (the jawline): at the start of each outer round every contour landmark is
re-assigned to the candidate vertex whose projection lies nearest to its detected position, among
the candidates that are on the occluding contour of the current fit (surface normal turned away
from the viewing ray by at least ``contour_min_angle``) or are the landmark's own vertex, as eos
does, but inside the compiled loop. By default a round is one LM step (the contour is re-matched
after every step, the damping carried over), after 6 LM steps on the pose alone: on the
AFLW2000-3D photos that ends at a lower energy after at most 6 steps on all parameters (about 6
on average) than rounds of up to 8 steps did after about 24 (at most 48); a batched fit runs
until its slowest member is done.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxface._pytree import pytree_dataclass, static_field
from jaxface.camera import PerspectiveCamera, project
from jaxface.fit._precision import full_precision
from jaxface.geometry import axis_angle_to_matrix, matrix_to_axis_angle
from jaxface.mesh.normals import vertex_normals
from jaxface.models.morphable import MorphableModel, vertices
from jaxface.models.morphable import landmarks as model_landmarks

Array = jax.Array

# Model frame (+y up, +z out of the face) -> camera frame (+y down, +z into the scene): a face
# looking at the camera is the model rotated by pi about x.
MODEL_TO_CAMERA = np.diag([1.0, -1.0, -1.0]).astype(np.float32)


@pytree_dataclass
class FitConfig:
    """Settings of ``fit_landmarks``.

    Static fields (changing one recompiles): ``landmark_set``, ``n_identity``,
    ``estimate_focal``, ``outer_iterations``, ``inner_iterations``, ``pose_iterations``,
    ``robust``, ``use_contour``, ``solver`` and ``optax_steps``.

    Every solver starts with ``pose_iterations`` LM steps on the camera / pose alone (the
    shape held at the start, the contour re-matched after each step): cheap 7 x 7 systems
    that bring the pose close before the shape moves (from the frontal guess, the shape
    otherwise absorbs part of the pose error: on the AFLW2000-3D photos the fit ends at a
    lower energy with them, in fewer steps).

    ``solver="lm"`` (default) is Levenberg-Marquardt with at most ``inner_iterations`` steps per
    outer round (fewer once the relative cost change falls below ``tolerance``), for at most
    ``outer_iterations`` rounds: the contour (and robust weights) are re-matched after each
    round, and the fit stops once a round's LM converged and the matching stopped changing, or
    the matching went back to the one before (a contour landmark flipping between two
    candidates). The damping carries over from round to round. ``"adam"`` and ``"lbfgs"``
    minimise the same energy with optax for ``optax_steps`` steps per round, on parameters
    preconditioned to comparable scales (0.1 rad, 10 mm, 0.1 in log focal, 1 per coefficient).
    The weights and thresholds are pytree leaves: changing them reuses the compiled fit, and
    they can be vmapped over.
    """

    landmark_set: str = static_field(default="ibug68")
    n_identity: int | None = static_field(default=None)
    estimate_focal: bool = static_field(default=False)
    outer_iterations: int = static_field(default=6)
    inner_iterations: int = static_field(default=1)
    pose_iterations: int = static_field(default=6)
    robust: str = static_field(default="none")  # "none" | "huber"
    use_contour: bool = static_field(default=True)
    solver: str = static_field(default="lm")  # "lm" | "adam" | "lbfgs"
    optax_steps: int = static_field(default=60)  # per outer round, for the optax solvers
    learning_rate: Any = 0.05  # Adam, on the preconditioned parameters
    lambda_identity: Any = 1.0
    lambda_expression: Any = 1.0
    lambda_focal: Any = 1.0
    huber_delta: Any = 2.0
    contour_min_angle_deg: Any = 60.0
    tolerance: Any = 1e-6


@pytree_dataclass
class FitResult:
    """Result of a landmark fit (a pytree; batched results have a leading batch axis).

    Attributes:
      identity: (Ks,) raw identity coefficients (model units, prior N(0, identity_std^2)).
      expression: (Ke,) expression coefficients (blendshape weights in [0, 1] or raw PCA).
      rotation: (3, 3) model -> camera rotation.
      translation: (3,) model -> camera translation (mm).
      camera: the PerspectiveCamera (pixels, OpenCV convention).
      landmarks2d: (L, 2) the fitted model's landmarks projected into the image (pixels).
      residuals: (L,) per-landmark reprojection error (pixels).
      landmark_vertex_ids: (L,) the vertex each landmark was matched to in the final round
        (contour landmarks move along the jawline; others keep their own vertex), -1 where a
        landmark is a barycentric combination.
      cost: final energy.
      iterations: LM iterations taken on all parameters (the ``pose_iterations`` pose-only
        steps before them not counted; for the optax solvers, optimiser steps).
      converged: whether the last round's relative cost decrease fell below tolerance (False
        when the fit stopped at ``outer_iterations`` or on a flipping contour landmark).
    """

    identity: Any
    expression: Any
    rotation: Any
    translation: Any
    camera: Any
    landmarks2d: Any
    residuals: Any
    landmark_vertex_ids: Any
    cost: Any
    iterations: Any
    converged: Any

    @property
    def rmse_px(self) -> Array:
        return jnp.sqrt(jnp.mean(jnp.square(self.residuals), axis=-1))


class _Params(NamedTuple):
    rotvec: Array  # (3,) on top of MODEL_TO_CAMERA
    translation: Array  # (3,)
    log_focal: Array  # ()
    alpha: Array  # (Ks,) standardized identity
    beta: Array  # (Ke,) expression (standardized for PCA, raw weights for blendshapes)


def _flatten(p: _Params) -> Array:
    return jnp.concatenate([p.rotvec, p.translation, p.log_focal[None], p.alpha, p.beta])


def _unflatten(x: Array, n_id: int, n_ex: int) -> _Params:
    return _Params(x[0:3], x[3:6], x[6], x[7:7 + n_id], x[7 + n_id:7 + n_id + n_ex])


def _shape(model: MorphableModel, p: _Params, n_id: int) -> Array:
    ident = p.alpha * jnp.asarray(model.identity_std[:n_id])
    expr = None
    if model.expression_basis is not None:
        expr = p.beta if model.expression_kind == "blendshape" else (
            p.beta * jnp.asarray(model.expression_std))
    return vertices(model, ident, expr)


def _landmark_basis(model: MorphableModel, n_id: int, ids: Array, wts: Array
                    ) -> tuple[Array, Array]:
    """The landmarks as a linear function of the fit's coefficients ``c = (alpha, beta)``.

    Evaluates the model only at the (L, 3) vertices ``ids``. Returns ``(p0 (L, 3), b (L, 3, K))``
    with ``landmarks = p0 + b @ c``; the standard deviations are folded into ``b``.
    """
    hi = jax.lax.Precision.HIGHEST

    def gather(basis, scale):  # (K, V, 3) -> (L, 3, K)
        sub = jnp.asarray(basis)[:, ids] * jnp.asarray(scale)[:, None, None, None]
        return jnp.einsum("lm,klmc->lck", wts, sub, precision=hi)

    p0 = jnp.einsum("lm,lmc->lc", wts, jnp.asarray(model.mean)[ids], precision=hi)
    parts = [gather(model.identity_basis[:n_id], model.identity_std[:n_id])]
    if model.expression_basis is not None:
        scale = (jnp.ones((model.n_expression,)) if model.expression_kind == "blendshape"
                 else model.expression_std)
        parts.append(gather(model.expression_basis, scale))
    return p0, jnp.concatenate(parts, axis=-1)


def _landmark_points(model: MorphableModel, p: _Params, n_id: int, ids: Array, wts: Array
                     ) -> Array:
    """(L, 3) landmark positions, evaluating the model only at the (L, 3) vertices ``ids``."""
    p0, b = _landmark_basis(model, n_id, ids, wts)
    return p0 + b @ jnp.concatenate([p.alpha, p.beta])


def _landmark_diagonal(observed: Array, present: Array) -> Array:
    """Diagonal (pixels) of the bounding box of the present landmarks."""
    lo = jnp.min(jnp.where(present[:, None], observed, jnp.inf), axis=0)
    hi = jnp.max(jnp.where(present[:, None], observed, -jnp.inf), axis=0)
    return jnp.linalg.norm(hi - lo)


def _landmark_noise(observed: Array, present: Array) -> Array:
    """Landmark noise scale sigma: 2 % of the landmark bounding-box diagonal, at least 1 px."""
    return jnp.maximum(1.0, 0.02 * _landmark_diagonal(observed, present))


def _rotation(p: _Params) -> Array:
    return axis_angle_to_matrix(p.rotvec) @ MODEL_TO_CAMERA


@full_precision
def fit_landmarks(model: MorphableModel, landmarks: Any, image_size: tuple[int, int], *,
                  weights: Any = None, focal: float | None = None,
                  config: FitConfig | None = None, init: Any = None,
                  **overrides: Any) -> FitResult:
    """Fit identity, expression, pose (and optionally focal length) to 2D landmarks.

    Args:
      model: a morphable model with the landmark set ``config.landmark_set``.
      landmarks: (L, 2) detected landmarks in pixels (OpenCV convention), in the order of the
        model's landmark set. NaN rows are treated as missing. Batch with ``jax.vmap``.
      image_size: (H, W) of the image (static).
      weights: (L,) per-landmark confidences in [0, 1] (default 1). Landmarks the model marks
        undefined (``LandmarkSet.valid``) get weight 0.
      focal: focal length in pixels (default ``max(H, W)``, about a 53 degree field of view);
        the starting point and prior centre when ``estimate_focal``.
      config: a FitConfig; keyword ``overrides`` replace its fields.
      init: a starting point instead of the frontal guess: anything with ``identity``,
        ``expression``, ``rotation``, ``translation`` and a PerspectiveCamera ``camera`` (a
        FitResult, or a network's prediction, :func:`jaxface.nets.predict.predict_image`).
        Its pose is carried over to the fit's camera so that the face projects to the same
        place at the same size (exact when the two cameras agree).

    Returns:
      FitResult.

    Speed: the contour search reads only the mesh around the contour candidates when the
    model's arrays are concrete, i.e. when the model is closed over rather than passed as an
    argument of an outer ``jax.jit`` (``jax.jit(jax.vmap(lambda y: fit_landmarks(model, y,
    size)))``); with a traced model it evaluates the whole mesh, between rounds. Under
    ``jax.vmap`` a batch runs in chunks of ``VMAP_CHUNK`` fits on CPU (see there).
    """
    cfg = config or FitConfig()
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    if cfg.landmark_set not in model.landmarks:
        raise ValueError(f"model {model.name!r} has no landmark set {cfg.landmark_set!r}")
    n_lm = len(model.landmarks[cfg.landmark_set])
    landmarks = jnp.asarray(landmarks, jnp.float32)
    if landmarks.shape != (n_lm, 2):
        raise ValueError(f"landmarks must have shape ({n_lm}, 2) for landmark set "
                         f"{cfg.landmark_set!r}, got {landmarks.shape}")
    if cfg.robust not in ("none", "huber"):
        raise ValueError(f"robust must be 'none' or 'huber', got {cfg.robust!r}")
    if cfg.solver not in ("lm", "adam", "lbfgs"):
        raise ValueError(f"solver must be 'lm', 'adam' or 'lbfgs', got {cfg.solver!r}")
    if cfg.solver != "lm" and cfg.optax_steps < 2:
        raise ValueError("optax_steps must be at least 2")
    if cfg.solver == "lm" and cfg.inner_iterations < 1:
        raise ValueError(f"inner_iterations must be at least 1, got {cfg.inner_iterations}")
    if cfg.pose_iterations < 0:
        raise ValueError(f"pose_iterations must be at least 0, got {cfg.pose_iterations}")
    h, w = (int(s) for s in image_size)
    weights = jnp.ones((n_lm,), jnp.float32) if weights is None else jnp.asarray(
        weights, jnp.float32).reshape(n_lm)
    # landmarks the model does not define (LandmarkSet.valid) never enter the energy
    weights = weights * jnp.asarray(model.landmarks[cfg.landmark_set].valid_mask(), jnp.float32)
    f0 = float(max(h, w)) if focal is None else focal
    x0 = None if init is None else _init_vector(model, init, f0, (h, w), cfg)
    def fit(model: MorphableModel, landmarks: Array, weights: Array, f0: Array, cfg: FitConfig,
            x0: Array | None, local: _Local | None) -> FitResult:
        return _fit(model, landmarks, weights, f0, (h, w), cfg, x0, local)

    return _in_chunks(fit)(model, landmarks, weights, jnp.asarray(f0, jnp.float32), cfg, x0,
                           _contour_subset(model, cfg))


# Under ``jax.vmap``, a fit runs in vmapped chunks of this many images, one chunk after the
# other (``lax.map``): each chunk's arrays (its Jacobians and normal matrices, ~100 kB per
# image) stay in the caches through a step, where a whole batch's (26 MB each for 256
# images) went to memory and back between every two operations. On the 2-core CPU, 256
# AFLW2000-3D fits took 0.78x the time of one vmapped batch in chunks of 16 (0.81x in 32,
# 0.86x in 64). A chunk runs until its own slowest member is done. On other backends (GPU,
# TPU) the whole batch is one vmapped program: there the parallel width is what pays.
VMAP_CHUNK = 16


def _in_chunks(fn: Any, chunk: int | None = None) -> Any:
    """``fn`` (positional pytree arguments), whose batching rule runs a batch of more than
    ``chunk`` members (default: ``VMAP_CHUNK`` on CPU, no chunking elsewhere) as a ``lax.map``
    over vmapped chunks (the same results as ``jax.vmap(fn)``, computed chunk by chunk)."""
    wrapped = jax.custom_batching.custom_vmap(fn)

    @wrapped.def_vmap
    def rule(axis_size: int, in_batched: Any, *args: Any) -> tuple[Any, Any]:
        leaves, treedef = jax.tree_util.tree_flatten(args)
        batched = jax.tree_util.tree_leaves(list(in_batched))
        idx = [i for i, b in enumerate(batched) if b]

        def one(*members: Array) -> Any:
            full = list(leaves)
            for i, m in zip(idx, members, strict=True):
                full[i] = m
            return fn(*jax.tree_util.tree_unflatten(treedef, full))

        members = tuple(leaves[i] for i in idx)
        size = chunk if chunk is not None else (
            VMAP_CHUNK if jax.default_backend() == "cpu" else None)
        if size is None or axis_size <= size:
            out = jax.vmap(one)(*members)
        else:
            out = jax.lax.map(lambda m: one(*m), members, batch_size=size)
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return wrapped


def _init_vector(model: MorphableModel, init: Any, f0: float, image_size: tuple[int, int],
                 cfg: FitConfig) -> Array:
    """A starting point's flattened parameters in a camera of focal ``f0`` centred on the
    image: the rotation is kept, and the model origin keeps its pixel position and apparent
    size (depth scaled by ``f0 / fx_init``)."""
    h, w = image_size
    n_id = model.n_identity if cfg.n_identity is None else min(cfg.n_identity, model.n_identity)
    rot = jnp.asarray(init.rotation, jnp.float32)
    if rot.shape != (3, 3):
        raise ValueError(f"init.rotation must be (3, 3) (one face; vmap for batches), got "
                         f"{rot.shape}")
    t = jnp.asarray(init.translation, jnp.float32)
    cam = init.camera
    z = t[2] * f0 / cam.fx
    u = cam.fx * t[0] / t[2] + cam.cx
    v = cam.fy * t[1] / t[2] + cam.cy
    t0 = jnp.stack([(u - w / 2.0) * z / f0, (v - h / 2.0) * z / f0, z])
    alpha = jnp.asarray(init.identity, jnp.float32)[:n_id] / jnp.asarray(
        model.identity_std[:n_id])
    if model.expression_basis is None:
        beta = jnp.zeros((0,), jnp.float32)
    elif model.expression_kind == "blendshape":
        beta = jnp.clip(jnp.asarray(init.expression, jnp.float32), 0.0, 1.0)
    else:
        beta = jnp.asarray(init.expression, jnp.float32) / jnp.asarray(model.expression_std)
    rotvec = matrix_to_axis_angle(rot @ jnp.asarray(MODEL_TO_CAMERA).T)
    return _flatten(_Params(rotvec, t0, jnp.log(jnp.float32(f0)), alpha, beta))


class _Local(NamedTuple):
    """Index arrays of the contour search's part of the mesh (see ``_contour_subset``).

    ``vertex_ids`` (N,): global ids of the local vertices; ``triangles`` (T, 3): the triangles
    around the candidates, in local numbering; ``candidates`` (n, C): the candidates in local
    numbering (padding -> 0); ``incident`` (n, C, D): the triangles around each candidate,
    padded with T (a zero normal); ``order`` (L,): the landmarks in the fit's internal order,
    the n contour landmarks last (in ``candidates`` row order).
    """

    vertex_ids: Array
    triangles: Array
    candidates: Array
    incident: Array
    order: Array


def _contour_subset(model: MorphableModel, cfg: FitConfig) -> _Local | None:
    """The part of the mesh the contour search reads (a :class:`_Local`), or None (no contour
    search, or a model whose arrays are traced, e.g. an argument of an outer ``jax.jit``: the
    fit then evaluates the whole mesh for every contour search, once per LM round)."""
    contour = model.contours.get(cfg.landmark_set) if cfg.use_contour else None
    if contour is None:
        return None
    try:
        cand = np.asarray(contour.candidates)
        tri = np.asarray(model.triangles)
        li = np.asarray(contour.landmark_index)
    except jax.errors.TracerArrayConversionError:
        return None
    cand0 = np.where(cand >= 0, cand, 0)
    loc_tri = tri[np.isin(tri, cand0).any(axis=1)]
    loc_v = np.unique(np.concatenate([loc_tri.reshape(-1), cand0.reshape(-1)]))
    remap = np.zeros((int(loc_v.max()) + 1,), np.int32)
    remap[loc_v] = np.arange(loc_v.size, dtype=np.int32)
    loc_tri = remap[loc_tri]
    loc_cand = remap[cand0]
    # every triangle around each candidate (all of them are in loc_tri), padded with T
    touch = np.any(loc_tri[None, :, :] == loc_cand.reshape(-1)[:, None, None], axis=2)
    deg = max(1, int(touch.sum(axis=1).max()))
    first = np.argsort(~touch, axis=1, kind="stable")[:, :deg]
    incident = np.where(np.take_along_axis(touch, first, 1), first, loc_tri.shape[0])
    sliding = np.zeros((len(model.landmarks[cfg.landmark_set]),), bool)
    sliding[li] = True
    order = np.concatenate([np.flatnonzero(~sliding), li]).astype(np.int32)
    return _Local(jnp.asarray(loc_v, jnp.int32), jnp.asarray(loc_tri, jnp.int32),
                  jnp.asarray(loc_cand, jnp.int32),
                  jnp.asarray(incident.reshape(loc_cand.shape + (deg,)), jnp.int32),
                  jnp.asarray(order))


def _dot3(a: Array, b: Array) -> Array:
    """(...,) dot products of (..., 3) vectors, summed term by term."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def _rotate(v: Array, rot: Array) -> Array:
    """(..., 3) ``v @ rot.T`` for a (3, 3) ``rot``, its sums written out (a dot with 3-long
    contractions is slow on XLA:CPU, particularly batched)."""
    return jnp.stack([_dot3(v, rot[i]) for i in range(3)], axis=-1)


def _bordered_factorisation() -> bool:
    """Whether :func:`_cholesky_forward` factorises the bordered one-triangle matrix (XLA:CPU:
    LAPACK reads exactly one triangle, and the border saves a triangular solve) rather than
    the full symmetric matrix followed by a separate solve (other backends, whose batched
    factorisations are not LAPACK's; this path was checked on an NVIDIA H100: 256 vmapped fits
    within 0.006 px of the per-image ones, as on CPU)."""
    return jax.default_backend() == "cpu"


def _cholesky_forward(a: Array, b: Array) -> tuple[Array, Array]:
    """Cholesky factor ``L`` of ``a`` (n, n; symmetric positive definite, only its UPPER
    triangle read) together with the forward substitution ``L^{-1} b`` for ``b`` (n,), from
    ONE factorisation of the bordered matrix ``[[a, b], [b^T, c]]`` (``c`` huge, so that it
    stays positive definite): its factor is ``[[L, 0], [(L^{-1} b)^T, *]]``.

    Returns ``(lb (n + 1, n + 1), z (n,))``: ``lb`` the bordered factor (for
    :func:`_cholesky_backward`; ``lb[:n, :n] = L``) and ``z = L^{-1} b``.

    (The bordered matrix is written as its transpose, row-major, upper triangle: the very
    bytes of the column-major lower triangle LAPACK reads, so XLA:CPU writes it in one
    contiguous pass; pads rather than concatenations, which it fuses into that pass.)
    """
    n = a.shape[0]
    if not _bordered_factorisation():
        # a full symmetric matrix, one factorisation and one triangular solve; the factor is
        # bordered by a zero row (unit corner) so that _cholesky_backward takes it unchanged
        chol = jax.lax.linalg.cholesky(jnp.triu(a) + jnp.triu(a, 1).T, symmetrize_input=False)
        z = jax.lax.linalg.triangular_solve(chol, b[:, None], left_side=True, lower=True)[:, 0]
        lb = jnp.pad(chol, ((0, 1), (0, 1))) + jnp.pad(jnp.ones((1, 1), a.dtype), ((n, 0), (n, 0)))
        return lb, z
    aug_t = (jnp.pad(a, ((0, 1), (0, 1))) + jnp.pad(b[:, None], ((0, 1), (n, 0)))
             + jnp.pad(jnp.full((1, 1), 1e30, a.dtype), ((n, 0), (n, 0))))
    lb = jax.lax.linalg.cholesky(aug_t.T, symmetrize_input=False)
    return lb, lb[n, :n]


def _cholesky_backward(lb: Array, z: Array) -> Array:
    """``L^{-T} z`` (n,) for the bordered factor ``lb`` (n + 1, n + 1) of
    :func:`_cholesky_forward` (the solve runs on ``lb`` itself, with a zero appended to ``z``:
    no copy of ``L``)."""
    rhs = jnp.concatenate([z, jnp.zeros((1,), z.dtype)])[:, None]
    return jax.lax.linalg.triangular_solve(lb, rhs, left_side=True, lower=True,
                                           transpose_a=True)[:-1, 0]


def _cholesky_solve(a: Array, b: Array) -> Array:
    """``a^{-1} b`` for a symmetric positive definite ``a`` (n, n) and ``b`` (n,), reading only
    the lower triangle of ``a`` (symmetric by construction: no symmetrising pass)."""
    chol = jax.lax.linalg.cholesky(a, symmetrize_input=False)
    z = jax.lax.linalg.triangular_solve(chol, b[:, None], left_side=True, lower=True)
    return jax.lax.linalg.triangular_solve(chol, z, left_side=True, lower=True,
                                           transpose_a=True)[:, 0]


@functools.partial(jax.jit, static_argnames=("image_size",))
def _fit(model: MorphableModel, observed: Array, weights: Array, f0: Array,
         image_size: tuple[int, int], cfg: FitConfig, x_init: Array | None = None,
         local: _Local | None = None) -> FitResult:
    h, w = image_size
    n_id = model.n_identity if cfg.n_identity is None else min(cfg.n_identity, model.n_identity)
    n_ex = model.n_expression
    blend = model.expression_kind == "blendshape"
    lm = model.landmarks[cfg.landmark_set]
    n_lm = lm.indices.shape[0]

    present = jnp.all(jnp.isfinite(observed), axis=-1)
    weights = jnp.where(present, weights, 0.0)
    observed = jnp.where(present[:, None], observed, 0.0)

    diag = _landmark_diagonal(observed, present)
    sigma = _landmark_noise(observed, present)

    # Contour set-up: which landmarks slide, and over which candidates.
    contour = model.contours.get(cfg.landmark_set) if cfg.use_contour else None
    if contour is None:
        local = None
    base_ids = jnp.asarray(lm.indices)  # (L, 3)
    base_w = jnp.asarray(lm.weights)
    base_lin = _landmark_basis(model, n_id, base_ids, base_w)

    # With a local subset the landmarks are fitted in ``local.order`` (the contour landmarks
    # last), so that the basis of the fixed landmarks stays one unbatched block under vmap.
    if local is None:
        def to_fit(a: Array) -> Array:
            return a

        def to_caller(a: Array) -> Array:
            return a
    else:
        n_fixed = n_lm - local.candidates.shape[0]
        back = jnp.argsort(local.order)

        def to_fit(a: Array) -> Array:
            return a[local.order]

        def to_caller(a: Array) -> Array:
            return a[back]
    obs_fit = to_fit(observed)
    weights_fit = to_fit(weights)

    def camera_of(p: _Params) -> PerspectiveCamera:
        f = jnp.exp(p.log_focal)
        return PerspectiveCamera(fx=f, fy=f, cx=jnp.float32(w / 2.0), cy=jnp.float32(h / 2.0))

    # The prior terms are a diagonal linear residual ``prior_diag * (x - x_ref)`` (zero on the
    # pose, the focal term only when it is estimated); the Gauss-Newton system adds them as a
    # diagonal instead of stacking K dense rows under the landmark Jacobian.
    n_par = 7 + n_id + n_ex
    prior_diag = jnp.concatenate([
        jnp.zeros((6,)),
        (jnp.sqrt(cfg.lambda_focal) / 0.25 if cfg.estimate_focal else jnp.zeros(())) * jnp.ones(1),
        jnp.full((n_id,), jnp.sqrt(cfg.lambda_identity)),
        jnp.full((n_ex,), jnp.sqrt(cfg.lambda_expression))]).astype(jnp.float32)
    x_ref = jnp.zeros((n_par,), jnp.float32).at[6].set(jnp.log(f0))

    # A landmark basis ``lin = (p0 (L, 3), blocks)``: landmarks ``p0 + concat(blocks) @ c``
    # in fit order, ``blocks`` a tuple of (rows, 3, K) bases stacked along the landmarks.
    def lin_points(lin: tuple[Array, tuple[Array, ...]], c: Array) -> Array:
        p0, blocks = lin
        return p0 + jnp.concatenate([b @ c for b in blocks])

    def landmark_residual(pose: Array, pts_model: Array, rw: Array) -> Array:
        """(2L,) weighted reprojection residuals of the model-frame points ``pts_model`` under
        ``pose = (rotvec, translation, log focal)``."""
        p = _Params(pose[0:3], pose[3:6], pose[6], None, None)
        pts = _rotate(pts_model, _rotation(p)) + p.translation
        uv = project(camera_of(p), pts)
        return ((uv - obs_fit) * (jnp.sqrt(weights_fit * rw) / sigma)[:, None]).reshape(-1)

    def residual(x: Array, lin: tuple[Array, tuple[Array, ...]], rw: Array) -> Array:
        r_lm = landmark_residual(x[:7], lin_points(lin, x[7:]), rw)
        return jnp.concatenate([r_lm, prior_diag * (x - x_ref)])

    def cost_of(x: Array, lin: tuple[Array, tuple[Array, ...]], rw: Array) -> Array:
        r = residual(x, lin, rw)
        return 0.5 * jnp.sum(r * r)

    def cost_at(x: Array, pts_model: Array, rw: Array) -> Array:
        """``cost_of`` with the model-frame landmarks ``pts_model`` (L, 3) given (the pose
        steps hold the shape)."""
        r = jnp.concatenate([landmark_residual(x[:7], pts_model, rw), prior_diag * (x - x_ref)])
        return 0.5 * jnp.sum(r * r)

    # Box-constrained coordinates of the flat parameter vector (blendshape weights in [0, 1]),
    # and the coordinates LM moves (all but the focal unless it is estimated).
    boxed = np.zeros((n_par,), bool)
    if blend:
        boxed[7 + n_id:] = True
    free = np.ones((n_par,), np.float32)
    if not cfg.estimate_focal:
        free[6] = 0.0

    def jacobian(x: Array, lin: tuple[Array, tuple[Array, ...]], rw: Array,
                 splits: tuple[int, ...] = ()) -> tuple[list[Array], Array]:
        """``([J[:, c0:c1], ...], r (2L,))``: the landmark residual and its Jacobian at ``x``
        (zero in the columns LM does not move), in column blocks split at ``splits``: forward
        mode for the 7 camera/pose parameters and the chain rule (projection Jacobian @ R @
        landmark basis) for the K linear coefficients."""
        p = _unflatten(x, n_id, n_ex)
        pts_model = lin_points(lin, x[7:])
        r_lm, j_pose = jax.linearize(lambda q: landmark_residual(q, pts_model, rw), x[:7])
        j_pose = jax.vmap(j_pose, out_axes=1)(jnp.eye(7, dtype=x.dtype))  # (2L, 7)
        rot = _rotation(p)
        cam_pts = _rotate(pts_model, rot) + p.translation
        cam = camera_of(p)
        j_proj = jax.vmap(jax.jacfwd(lambda q: project(cam, q)))(cam_pts)  # (L, 2, 3)
        scale = jnp.sqrt(weights_fit * rw) / sigma
        # (L, 2, 3) projection Jacobian @ R, weighted (rows of R^T: a @ R = _rotate(a, R^T))
        a = _rotate(j_proj, rot.T) * scale[:, None, None]
        # (rows, 2, K) = a (rows, 2, 3) @ b (rows, 3, K) per landmark, the 3-term sums written
        # out: one elementwise pass in the layout J^T J reads (a batched dot_general with
        # 3-long contractions, then transposed and concatenated, took ~3x as long)
        j_pose = (j_pose * free[:7]).reshape(n_lm, 2, 7)

        def columns(lo: int, hi: int) -> Array:
            # (pads summed, not concatenations: XLA:CPU then writes each block in one pass)
            jac = jnp.zeros((n_lm, 2, hi - lo), x.dtype)
            if lo < 7:
                jac = jac + jnp.pad(j_pose[..., lo:min(hi, 7)],
                                    ((0, 0), (0, 0), (0, hi - min(hi, 7))))
            c_lo, c_hi, start = max(lo, 7) - 7, hi - 7, 0
            for b in lin[1]:
                end = start + b.shape[0]
                if c_hi > c_lo:
                    ab, bb = a[start:end], b[..., c_lo:c_hi]
                    jac = jac + jnp.pad(
                        sum(ab[:, :, k, None] * bb[:, None, k, :] for k in range(3)),
                        ((start, n_lm - end), (0, 0), (max(lo, 7) - lo, 0)))
                start = end
            return jac.reshape(2 * n_lm, hi - lo)

        edges = (0, *splits, x.shape[0])
        return [columns(lo, hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True)], r_lm

    def project_box(x: Array) -> Array:
        p = _unflatten(x, n_id, n_ex)
        if blend:
            p = p._replace(beta=jnp.clip(p.beta, 0.0, 1.0))
        if not cfg.estimate_focal:
            p = p._replace(log_focal=jnp.log(f0))
        return _flatten(p)

    prior_free = prior_diag * free
    eye = np.eye(n_par, dtype=np.float32)

    def accept(x: Array, x_new: Array, cost: Array, new_cost: Array, pred: Array, mu: Array,
               nu: Array) -> tuple[Array, Array, Array, Array, Array, Array]:
        """LM's verdict on the step ``x -> x_new`` whose model predicts a decrease ``pred``:
        ``(x, mu, nu, cost, converged, damping_ran_away)`` (``x`` and ``cost`` unchanged when
        the step was rejected)."""
        better = (new_cost < cost) & jnp.isfinite(new_cost)
        x = jnp.where(better, x_new, x)
        rel = (cost - new_cost) / jnp.maximum(cost, 1e-12)
        # converged when the step changes the cost by less than the tolerance, taken or
        # not (in float32 a converged LM step is as often rejected by rounding as
        # accepted), or when the model itself predicts less than that
        conv = (jnp.abs(rel) < cfg.tolerance) | ((pred >= 0) & (pred < cfg.tolerance * cost))
        # Nielsen's damping update from the gain ratio (actual / predicted decrease)
        gain = jnp.where(pred > 0, (cost - new_cost) / jnp.maximum(pred, 1e-30), -1.0)
        good = better & (gain > 0)
        mu = jnp.where(good, mu * jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * gain - 1.0) ** 3),
                       mu * nu)
        mu = jnp.clip(mu, 1e-9, 1e12)
        nu = jnp.where(good, 2.0, nu * 2.0)
        cost = jnp.where(better, new_cost, cost)
        return x, mu, nu, cost, conv, mu >= 1e12

    def lm_step(x: Array, lin: tuple[Array, tuple[Array, ...]], rw: Array, mu: Array,
                nu: Array, cost: Array) -> tuple[Array, Array, Array, Array, Array, Array]:
        """One Levenberg-Marquardt step on all parameters from ``x`` (cost ``cost``) with
        damping ``mu``, ``nu``; returns ``accept``'s verdict.

        The damped Gauss-Newton model is minimised over the free coordinates (all but the
        focal unless it is estimated, and but the box-constrained weights held at a bound),
        Jacobi-scaled (the columns mix radians, millimetres and unit coefficients), with
        Marquardt damping ``mu``: ``(S H S + diag(mu + s^2 P^2)) y = S g``, ``s = 1 / d``
        on the free coordinates and 0 on the fixed ones, ``dx = -s y`` (``H = J^T J + P^2``,
        P the prior's diagonal, ``d^2`` the diagonal of H), by Cholesky.

        Box constraints by an active set, not by clipping an unconstrained step (that stalls
        LM: with ~30 of 53 weights at a bound, most clipped steps increased the cost and the
        damping ran away). Weights at a bound whose gradient pushes them outward stay there;
        weights the step would carry across a bound are put on it and the rest re-solved with
        them fixed. The re-solve reuses the first factorisation: with the parameters ordered
        (pose, identity | box-constrained weights), fixing more weights only masks rows and
        columns of the weights' block, so the factor's pose/identity block ``L11`` and its
        coupling ``L21`` stay, and only the weights' Schur complement ``L22 L22^T`` (masked)
        is factorised again (nb x nb instead of n x n), its right-hand side updated through
        ``L21`` (``L11^{-1} A12 = L21^T``).
        """
        n = x.shape[0]
        # Gauss-Newton system J^T J + P^2 (P the prior's diagonal), gradient g. J^T J as the
        # upper three of its 2 x 2 blocks (the factorisation reads only one triangle): on
        # XLA:CPU about half the time of the full product.
        h = n // 2
        (j1, j2), r_lm = jacobian(x, lin, rw, (h,))
        h11, h12, h22 = j1.T @ j1, j1.T @ j2, j2.T @ j2
        jtj_upper = (jnp.pad(h11, ((0, n - h), (0, n - h))) + jnp.pad(h12, ((0, n - h), (h, 0)))
                     + jnp.pad(h22, ((h, 0), (h, 0))))
        g = jnp.concatenate([j1.T @ r_lm, j2.T @ r_lm]) + prior_free * prior_diag * (x - x_ref)
        d = jnp.sqrt(jnp.concatenate([jnp.diag(h11), jnp.diag(h22)])
                     + prior_free * prior_free + 1e-12)
        act = boxed & (((x <= 0.0) & (g > 0.0)) | ((x >= 1.0) & (g < 0.0)))
        fr = free * (1.0 - act.astype(jnp.float32))
        s = fr / d
        a = jtj_upper * s[:, None] * s[None, :] + eye * (
            (1.0 - fr) + fr * mu + s * s * prior_free * prior_free)
        lb, z = _cholesky_forward(a, s * g)
        step = -s * _cholesky_backward(lb, z)
        if boxed.any():
            n_p = int(np.argmax(boxed))  # the weights' block [n_p:] (the parameters' tail)
            assert boxed[n_p:].all()
            xt = x + step
            hit = (boxed & ~act & ((xt < 0.0) | (xt > 1.0)))[n_p:]
            dx_b = jnp.where(hit, jnp.clip(xt[n_p:], 0.0, 1.0) - x[n_p:], 0.0)
            # the second system: ``a`` with the ``hit`` weights' rows and columns replaced by
            # the identity, right-hand side s2 (g + H dx_fixed), s2 = s masked by ``hit``
            s_b = s[n_p:]
            m2 = jnp.where(hit, 0.0, fr[n_p:])  # free weights of the second system
            # (LAPACK's factor is column-major: its transpose's rows are contiguous)
            lt = lb.T
            l21 = lt[:n_p, n_p:-1].T  # (nb, n_p)
            l22t = lt[n_p:-1, n_p:-1]  # (nb, nb) L22^T
            u = jnp.where(hit, dx_b / jnp.where(hit, s_b, 1.0), 0.0)  # scaled dx_fixed
            l21t_u = l21.T @ u
            # forward substitution: L11^{-1} of the pose/identity right-hand side (which
            # gains s H_{PB} dx_fixed = L11 L21^T u), then the weights' block against the
            # masked Schur complement m2 (L22 L22^T) m2 + (1 - m2), bordered by its
            # right-hand side m2 (s g + A_BB u - L21 z1) (A_BB u = L21 L21^T u + L22 L22^T u;
            # its damping diagonal only touches ``hit`` rows, which m2 zeroes)
            z1 = z[:n_p] + l21t_u
            rhs_b = m2 * (s_b * g[n_p:] + l21 @ l21t_u + l22t.T @ (l22t @ u) - l21 @ z1)
            schur = (l22t.T @ l22t) * m2[:, None] * m2[None, :] + jnp.diag(1.0 - m2)
            ls, z2 = _cholesky_forward(schur, rhs_b)
            y_b = _cholesky_backward(ls, z2)
            y_p = _cholesky_backward(
                lb, jnp.concatenate([z1 - l21.T @ (m2 * y_b), jnp.zeros_like(y_b)]))[:n_p]
            s2 = jnp.concatenate([s[:n_p], s_b * m2])
            step = jnp.concatenate([jnp.zeros((n_p,), x.dtype), dx_b]) - s2 * jnp.concatenate(
                [y_p, y_b])
        x_new = project_box(x + step)
        dx = (x_new - x) * free
        j_dx = j1 @ dx[:h] + j2 @ dx[h:]
        pred = -(g @ dx + 0.5 * (j_dx @ j_dx + dx @ (prior_free * prior_free * dx)))  # the
        # decrease the model predicts
        return accept(x, x_new, cost, cost_of(x_new, lin, rw), pred, mu, nu)

    def pose_step(x: Array, pts_model: Array, rw: Array, mu: Array, nu: Array, cost: Array
                  ) -> tuple[Array, Array, Array, Array, Array, Array]:
        """``lm_step`` on the camera / pose parameters only (a 7 x 7 system), the shape
        coefficients held: ``pts_model`` (L, 3) are the model-frame landmarks."""
        r_lm, j_pose = jax.linearize(lambda q: landmark_residual(q, pts_model, rw), x[:7])
        jac = jax.vmap(j_pose, out_axes=1)(jnp.eye(7, dtype=x.dtype)) * free[:7]  # (2L, 7)
        pr = prior_free[:7]
        jtj = jac.T @ jac
        g = jac.T @ r_lm + pr * prior_diag[:7] * (x[:7] - x_ref[:7])
        s = free[:7] / jnp.sqrt(jnp.diag(jtj) + pr * pr + 1e-12)
        a = jtj * s[:, None] * s[None, :] + eye[:7, :7] * (
            (1.0 - free[:7]) + free[:7] * mu + s * s * pr * pr)
        x_new = project_box(x.at[:7].add(-s * _cholesky_solve(a, s * g)))
        dx = (x_new - x)[:7] * free[:7]
        pred = -(g @ dx + 0.5 * dx @ (jtj @ dx + pr * pr * dx))
        return accept(x, x_new, cost, cost_at(x_new, pts_model, rw), pred, mu, nu)

    # Initialisation: frontal, centred on the landmarks, at the depth that matches their scale.
    mean_lm = base_lin[0]  # coefficients 0: the mean
    model_extent = jnp.linalg.norm(jnp.max(mean_lm[:, :2], 0) - jnp.min(mean_lm[:, :2], 0))
    depth = f0 * model_extent / jnp.maximum(diag, 1.0)
    centre_px = jnp.sum(observed * weights[:, None], 0) / jnp.maximum(jnp.sum(weights), 1e-6)
    centre_model = jnp.mean(mean_lm, axis=0) @ MODEL_TO_CAMERA.T
    t0 = jnp.stack([(centre_px[0] - w / 2.0) * depth / f0, (centre_px[1] - h / 2.0) * depth / f0,
                    depth]) - centre_model
    x = _flatten(_Params(jnp.zeros(3), t0, jnp.log(f0), jnp.zeros(n_id), jnp.zeros(n_ex)))
    if x_init is not None:
        x = x_init

    # Contour correspondences ``corr``: with a local subset, (n,) the chosen candidate of each
    # contour landmark in local numbering, and the model is evaluated on the candidates and
    # the corners of their triangles only (a few hundred vertices instead of the whole mesh);
    # without, ``(ids (L, 3), wts (L, 3))`` of every landmark.
    if local is not None:
        loc_lin = _landmark_basis(model, n_id, local.vertex_ids[:, None],
                                  jnp.ones((local.vertex_ids.shape[0], 1), jnp.float32))
        fixed_p0 = base_lin[0][local.order[:n_fixed]]
        fixed_b = base_lin[1][local.order[:n_fixed]]

    def lin_of(corr: Any) -> tuple[Array, tuple[Array, ...]]:
        if contour is None:
            return base_lin[0], (base_lin[1],)
        if local is None:
            p0, b = _landmark_basis(model, n_id, *corr)
            return p0, (b,)
        return (jnp.concatenate([fixed_p0, loc_lin[0][corr]]), (fixed_b, loc_lin[1][corr]))

    def ids_of(corr: Any) -> tuple[Array, Array]:
        """(L, 3) vertex ids and (L, 3) barycentric weights of every landmark."""
        if contour is None:
            return base_ids, base_w
        if local is None:
            return corr
        n_c = corr.shape[0]
        ids = jnp.concatenate([base_ids[local.order[:n_fixed]],
                               jnp.repeat(local.vertex_ids[corr][:, None], 3, axis=1)])
        wts = jnp.concatenate([base_w[local.order[:n_fixed]],
                               jnp.tile(jnp.array([[1.0, 0.0, 0.0]], jnp.float32), (n_c, 1))])
        return to_caller(ids), to_caller(wts)

    def contour_geometry(c: Array) -> Any:
        """The contour candidates' shape-dependent part at coefficients ``c``: ``(pts (n, C,
        3), normals (n, C, 3), verts)``, model frame, normals of unit length (0 where
        degenerate); ``verts`` (N, 3) the local vertices (None without a local subset)."""
        if contour is None:
            return ()
        cand = jnp.asarray(contour.candidates)  # (n, C)
        cand0 = jnp.where(cand >= 0, cand, 0)
        if local is None:
            verts = _shape(model, _unflatten(jnp.concatenate([jnp.zeros((7,), c.dtype), c]),
                                             n_id, n_ex), n_id)
            return verts[cand0], vertex_normals(verts, jnp.asarray(model.triangles))[cand0], None
        # area-weighted vertex normals of the candidates: the normals of the triangles
        # around each, summed term by term (gathers, not vertex_normals' scatter)
        verts = loc_lin[0] + loc_lin[1] @ c  # (n_loc, 3), model frame
        q = verts[local.triangles]  # (T, 3, 3)
        fn = jnp.cross(q[:, 1] - q[:, 0], q[:, 2] - q[:, 0])
        fn = jnp.concatenate([fn, jnp.zeros((1, 3), fn.dtype)])
        inc = local.incident
        acc = functools.reduce(jnp.add, [fn[inc[..., k]] for k in range(inc.shape[-1])])
        sq = _dot3(acc, acc)
        normals = acc * jnp.where(sq > 0, jax.lax.rsqrt(jnp.where(sq > 0, sq, 1.0)),
                                  0.0)[..., None]
        return verts[local.candidates], normals, verts

    def match(x: Array, geom: Any) -> Any:
        """Contour correspondences at pose ``x[:7]`` for the candidates' ``geom``
        (``contour_geometry``)."""
        if contour is None:
            return ()
        p = _unflatten(x, n_id, n_ex)
        rot = _rotation(p)
        cand = jnp.asarray(contour.candidates)  # (n, C)
        valid = cand >= 0
        cand0 = jnp.where(valid, cand, 0)
        pts_m, normals, _ = geom
        # The angle between normal and viewing ray, in the model frame (R^T (R v + t) =
        # v + R^T t: no rotated normals). Sums over the 2 or 3 coordinates written out, as
        # fit_linear does for XLA:CPU.
        ray = pts_m + _rotate(p.translation, rot.T)
        cos = jnp.abs(_dot3(normals, ray)) * jax.lax.rsqrt(_dot3(ray, ray))
        on_contour = cos < jnp.cos(jnp.deg2rad(cfg.contour_min_angle_deg))
        uv = project(camera_of(p), _rotate(pts_m, rot) + p.translation)
        li = jnp.asarray(contour.landmark_index)
        diff = uv - observed[li][:, None, :]
        d = diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1]
        # A candidate qualifies when it is on the current silhouette or is the landmark's own
        # vertex (so landmarks near the chin, whose candidates are all frontal, stay put).
        own = cand0 == base_ids[li, :1]
        ok = valid & (on_contour | own)
        big = jnp.float32(1e12)
        d_ok = jnp.where(ok, d, big)
        d_any = jnp.where(valid, d, big)
        best = jnp.where(jnp.any(ok, axis=1), jnp.argmin(d_ok, 1), jnp.argmin(d_any, 1))
        if local is not None:
            return jnp.take_along_axis(local.candidates, best[:, None], 1)[:, 0]
        chosen = jnp.take_along_axis(cand0, best[:, None], 1)[:, 0]
        ids = base_ids.at[li].set(jnp.repeat(chosen[:, None], 3, axis=1))
        wts = base_w.at[li].set(jnp.array([1.0, 0.0, 0.0], jnp.float32))
        return ids, wts

    def correspondences(x: Array) -> Any:
        return match(x, contour_geometry(x[7:]))

    def same_corr(a: Any, b: Any) -> Array:
        return functools.reduce(jnp.logical_and, [jnp.all(u == v) for u, v in zip(
            jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)],
            jnp.bool_(True))

    def robust_weights(x: Array, lin: tuple[Array, tuple[Array, ...]]) -> Array:
        if cfg.robust == "none":
            return jnp.ones((n_lm,), jnp.float32)
        r = residual(x, lin, jnp.ones((n_lm,)))[:2 * n_lm].reshape(n_lm, 2)
        mag = jnp.linalg.norm(r, axis=-1) / jnp.sqrt(jnp.maximum(weights_fit, 1e-12))
        return jnp.where(mag > cfg.huber_delta, cfg.huber_delta / jnp.maximum(mag, 1e-12), 1.0)

    one, two = jnp.float32(1e-3), jnp.float32(2.0)  # initial damping mu, nu

    def next_round(x: Array, corr: Any, prev: Any, it: Array, round_conv: Array, rnd: Array
                   ) -> tuple[Any, Array, Array, Array]:
        """After a round of LM steps: the re-matched correspondences, their robust weights and
        cost, and whether the fit is finished: LM converged and the contour matching no longer
        changes (with IRLS, also the weights: the round must not have moved x), the matching
        went back to the one before ``corr`` (a contour landmark flipping between two
        candidates, each pulling the fit towards the other), or ``outer_iterations`` rounds
        are done."""
        new_corr = correspondences(x)
        same = same_corr(new_corr, corr)
        stable = round_conv & same
        if cfg.robust != "none":
            stable = stable & (it <= 1)
        cycle = ~same & same_corr(new_corr, prev)
        lin = lin_of(new_corr)
        rw = robust_weights(x, lin)
        done = stable | cycle | (rnd + 1 >= cfg.outer_iterations)
        return new_corr, rw, cost_of(x, lin, rw), done

    def lm_rounds_flat(x: Array, corr: Any) -> tuple[Array, Any, Array, Array]:
        """Rounds of at most ``inner_iterations`` LM steps with fixed contour correspondences
        (and robust weights), re-matched after each round (see ``FitConfig``), in ONE while
        loop: a round ends when its LM step converged or after ``inner_iterations`` steps.
        Under ``jax.vmap`` the loop runs for the largest total step count of the batch (nested
        round / step loops would run the sum over rounds of the largest step count in each
        round). The re-matching is evaluated every step and kept where a round ended (vmap
        turns a ``lax.cond`` into both branches anyway, and would broadcast the local basis
        that its branches close over)."""
        rw = robust_weights(x, lin_of(corr))
        state = (x, one, two, jnp.int32(0), jnp.int32(0), cost_of(x, lin_of(corr), rw),
                 jnp.bool_(False), jnp.int32(0), jnp.bool_(cfg.outer_iterations < 1), corr,
                 corr, rw)

        def body(state):
            x, mu, nu, it, total, cost, conv, rnd, _, corr, prev, rw = state
            x, mu, nu, cost, step_conv, blown = lm_step(x, lin_of(corr), rw, mu, nu, cost)
            it = it + 1
            round_conv = step_conv | blown
            end = round_conv | (it >= cfg.inner_iterations)
            new_corr, new_rw, new_cost, done = next_round(x, corr, prev, it, round_conv, rnd)
            # the damping carries over to the next round (a restart if it ran away)
            new = (jnp.where(blown, one, mu), jnp.where(blown, two, nu), jnp.int32(0),
                   new_cost, round_conv, rnd + 1, done, new_corr, corr, new_rw)
            old = (mu, nu, it, cost, conv, rnd, jnp.bool_(False), corr, prev, rw)
            mu, nu, it, cost, conv, rnd, done, corr, prev, rw = jax.tree_util.tree_map(
                lambda a, b: jnp.where(end, a, b), new, old)
            return x, mu, nu, it, total + 1, cost, conv, rnd, done, corr, prev, rw

        x, _, _, _, total, _, conv, _, _, corr, _, _ = jax.lax.while_loop(
            lambda s: ~s[8], body, state)
        return x, corr, total, conv

    def lm_rounds_nested(x: Array, corr: Any) -> tuple[Array, Any, Array, Array]:
        """The rounds of ``lm_rounds_flat`` in nested loops, re-matching only between rounds:
        for a traced model (no local subset), whose contour search evaluates the whole mesh."""

        def inner(carry):
            x, mu, nu, corr, prev, total, _, rnd, _ = carry
            lin = lin_of(corr)
            rw = robust_weights(x, lin)

            def body(s):
                x, mu, nu, it, cost, _, _ = s
                x, mu, nu, cost, conv, blown = lm_step(x, lin, rw, mu, nu, cost)
                return x, mu, nu, it + 1, cost, conv | blown, blown

            x, mu, nu, it, _, conv, blown = jax.lax.while_loop(
                lambda s: (s[3] < cfg.inner_iterations) & ~s[5], body,
                (x, mu, nu, jnp.int32(0), cost_of(x, lin, rw), jnp.bool_(False),
                 jnp.bool_(False)))
            new_corr, _, _, done = next_round(x, corr, prev, it, conv, rnd)
            return (x, jnp.where(blown, one, mu), jnp.where(blown, two, nu), new_corr, corr,
                    total + it, conv, rnd + 1, done)

        x, _, _, corr, _, total, conv, _, _ = jax.lax.while_loop(
            lambda c: ~c[8], inner, (x, one, two, corr, corr, jnp.int32(0), jnp.bool_(False),
                                     jnp.int32(0), jnp.bool_(cfg.outer_iterations < 1)))
        return x, corr, total, conv

    def pose_rounds(x: Array, corr: Any) -> tuple[Array, Any]:
        """``pose_iterations`` LM steps on the pose alone (the shape held), the contour (and
        robust weights) re-matched after each: a start for the full fit, cheap, and one that
        keeps the shape from absorbing the frontal guess's pose error."""

        # the shape is held: its contour geometry and landmark points are computed once
        c = x[7:]
        geom = contour_geometry(c)
        if contour is not None and local is not None:
            fixed_pts = fixed_p0 + fixed_b @ c

            def points(corr: Any) -> Array:
                return jnp.concatenate([fixed_pts, geom[2][corr]])
        else:
            def points(corr: Any) -> Array:
                return lin_points(lin_of(corr), c)

        def body(_, s):
            x, mu, nu, corr = s
            pts = points(corr)
            rw = robust_weights(x, lin_of(corr))
            x, mu, nu, _, _, blown = pose_step(x, pts, rw, mu, nu, cost_at(x, pts, rw))
            return x, jnp.where(blown, one, mu), jnp.where(blown, two, nu), match(x, geom)

        x, _, _, corr = jax.lax.fori_loop(0, cfg.pose_iterations, body, (x, one, two, corr))
        return x, corr

    def optax_solve(x: Array, lin: tuple[Array, tuple[Array, ...]], rw: Array
                    ) -> tuple[Array, Array]:
        n = x.shape[0]
        scale = jnp.concatenate([jnp.full((3,), 0.1), jnp.full((3,), 10.0), jnp.full((1,), 0.1),
                                 jnp.ones((n - 7,))])
        if not cfg.estimate_focal:
            scale = scale.at[6].set(0.0)  # the focal stays where project_box puts it
        x_fixed = x

        def f(z):
            r = residual(x_fixed * (scale == 0) + z * scale, lin, rw)
            return 0.5 * jnp.sum(r * r)

        if cfg.solver == "adam":
            opt = optax.adam(cfg.learning_rate)
        else:
            opt = optax.lbfgs()
        # Fresh value and gradient each step (the box projection below moves z after the
        # update, so values cached in the L-BFGS state would be stale).
        value_and_grad = jax.value_and_grad(f)

        def step(carry, _):
            z, state = carry
            value, grad = value_and_grad(z)
            updates, state = opt.update(grad, state, z, value=value, grad=grad, value_fn=f)
            z = optax.apply_updates(z, updates)
            z_box = project_box(x_fixed * (scale == 0) + z * scale) / jnp.where(scale == 0, 1.0,
                                                                                scale)
            return (jnp.where(scale == 0, z, z_box), state), value

        z0 = x / jnp.where(scale == 0, 1.0, scale)
        (z, _), values = jax.lax.scan(step, (z0, opt.init(z0)), None, length=cfg.optax_steps)
        rel = (values[-2] - values[-1]) / jnp.maximum(values[-2], 1e-12)
        x = x_fixed * (scale == 0) + z * scale
        return x, jnp.abs(rel) < 1e-4

    def optax_rounds(x: Array, corr: Any) -> tuple[Array, Any, Array, Array]:
        """``outer_iterations`` rounds of ``optax_steps`` optimiser steps, the contour (and
        robust weights) re-matched after each (they still make progress in a further round)."""

        def outer(_, carry):
            x, _, corr = carry
            lin = lin_of(corr)
            x, conv = optax_solve(x, lin, robust_weights(x, lin))
            return x, conv, correspondences(x)

        x, conv, corr = jax.lax.fori_loop(0, cfg.outer_iterations, outer,
                                          (x, jnp.bool_(False), corr))
        return x, corr, jnp.int32(cfg.optax_steps * cfg.outer_iterations), conv

    # The first round starts from the frontal guess (and frontal contour correspondences);
    # later rounds re-match the contour to the current fit, until it stops changing.
    if cfg.solver != "lm":
        rounds = optax_rounds
    else:
        rounds = lm_rounds_nested if contour is not None and local is None else lm_rounds_flat
    corr = correspondences(x)
    if cfg.pose_iterations > 0:
        x, corr = pose_rounds(x, corr)
    x, corr, iters, conv = rounds(x, corr)
    ids, wts = ids_of(corr)
    lin = lin_of(corr)
    p = _unflatten(x, n_id, n_ex)
    rot = _rotation(p)
    cam = camera_of(p)
    uv = to_caller(project(cam, lin_points(lin, x[7:]) @ rot.T + p.translation))
    res = jnp.where(present, jnp.linalg.norm(uv - observed, axis=-1), jnp.nan)
    final_cost = cost_of(x, lin, jnp.ones((n_lm,)))
    ident = jnp.zeros((model.n_identity,), jnp.float32).at[:n_id].set(
        p.alpha * jnp.asarray(model.identity_std[:n_id]))
    if model.expression_basis is None:
        expr = jnp.zeros((0,), jnp.float32)
    elif blend:
        expr = p.beta
    else:
        expr = p.beta * jnp.asarray(model.expression_std)
    vid = jnp.where(jnp.all(ids == ids[:, :1], axis=1) | (wts[:, 0] == 1.0), ids[:, 0], -1)
    return FitResult(identity=ident, expression=expr, rotation=rot, translation=p.translation,
                     camera=cam, landmarks2d=uv, residuals=res, landmark_vertex_ids=vid,
                     cost=final_cost, iterations=iters, converged=conv)


def model_vertices_camera(model: MorphableModel, result: FitResult) -> Array:
    """(V, 3) vertices of the fitted face in the camera frame (mm)."""
    verts = vertices(model, result.identity, result.expression if model.n_expression else None)
    return verts @ result.rotation.T + result.translation


def fitted_landmarks3d(model: MorphableModel, result: FitResult, name: str = "ibug68") -> Array:
    """(L, 3) the fitted model's landmarks in the camera frame (mm)."""
    return model_landmarks(model, model_vertices_camera(model, result), name)
