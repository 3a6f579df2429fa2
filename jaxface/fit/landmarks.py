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
does, but inside the compiled loop.
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
    ``estimate_focal``, ``outer_iterations``, ``inner_iterations``, ``robust``, ``use_contour``,
    ``solver`` and ``optax_steps``.

    ``solver="lm"`` (default) is Levenberg-Marquardt with at most ``inner_iterations`` steps per
    outer round (fewer once the relative cost change falls below ``tolerance``), for at most
    ``outer_iterations`` rounds (fewer once LM converged and the contour matching stopped
    changing); ``"adam"`` and ``"lbfgs"`` minimise the same energy with optax for ``optax_steps``
    steps per round, on parameters preconditioned to comparable scales (0.1 rad, 10 mm, 0.1 in
    log focal, 1 per coefficient).
    The weights and thresholds are pytree leaves: changing them reuses the compiled fit, and
    they can be vmapped over.
    """

    landmark_set: str = static_field(default="ibug68")
    n_identity: int | None = static_field(default=None)
    estimate_focal: bool = static_field(default=False)
    outer_iterations: int = static_field(default=6)
    inner_iterations: int = static_field(default=8)
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
      iterations: total LM iterations taken.
      converged: whether the last round's relative cost decrease fell below tolerance.
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
    h, w = (int(s) for s in image_size)
    weights = jnp.ones((n_lm,), jnp.float32) if weights is None else jnp.asarray(
        weights, jnp.float32).reshape(n_lm)
    # landmarks the model does not define (LandmarkSet.valid) never enter the energy
    weights = weights * jnp.asarray(model.landmarks[cfg.landmark_set].valid_mask(), jnp.float32)
    f0 = float(max(h, w)) if focal is None else focal
    x0 = None if init is None else _init_vector(model, init, f0, (h, w), cfg)
    return _fit(model, landmarks, weights, jnp.asarray(f0, jnp.float32), (h, w), cfg, x0,
                _contour_subset(model, cfg))


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


def _contour_subset(model: MorphableModel, cfg: FitConfig
                    ) -> tuple[Array, Array, Array] | None:
    """The part of the mesh the contour search reads: ``(vertex ids (N,), incident triangles
    (T, 3) and candidates (n, C) in local numbering)``, or None (no contour search, or a model
    whose arrays are traced, which then uses the whole mesh)."""
    contour = model.contours.get(cfg.landmark_set) if cfg.use_contour else None
    if contour is None:
        return None
    try:
        cand = np.asarray(contour.candidates)
        tri = np.asarray(model.triangles)
    except jax.errors.TracerArrayConversionError:
        return None
    cand0 = np.where(cand >= 0, cand, 0)
    loc_tri = tri[np.isin(tri, cand0).any(axis=1)]
    loc_v = np.unique(np.concatenate([loc_tri.reshape(-1), cand0.reshape(-1)]))
    remap = np.zeros((int(loc_v.max()) + 1,), np.int32)
    remap[loc_v] = np.arange(loc_v.size, dtype=np.int32)
    return (jnp.asarray(loc_v, jnp.int32), jnp.asarray(remap[loc_tri]),
            jnp.asarray(remap[cand0]))


@functools.partial(jax.jit, static_argnames=("image_size",))
def _fit(model: MorphableModel, observed: Array, weights: Array, f0: Array,
         image_size: tuple[int, int], cfg: FitConfig, x_init: Array | None = None,
         local: tuple[Array, Array, Array] | None = None) -> FitResult:
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
    base_ids = jnp.asarray(lm.indices)  # (L, 3)
    base_w = jnp.asarray(lm.weights)

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

    def landmark_residual(pose: Array, pts_model: Array, rw: Array) -> Array:
        """(2L,) weighted reprojection residuals of the model-frame points ``pts_model`` under
        ``pose = (rotvec, translation, log focal)``."""
        p = _Params(pose[0:3], pose[3:6], pose[6], None, None)
        pts = pts_model @ _rotation(p).T + p.translation
        uv = project(camera_of(p), pts)
        return ((uv - observed) * (jnp.sqrt(weights * rw) / sigma)[:, None]).reshape(-1)

    def residual(x: Array, lin: tuple[Array, Array], rw: Array) -> Array:
        p0, b = lin
        r_lm = landmark_residual(x[:7], p0 + b @ x[7:], rw)
        return jnp.concatenate([r_lm, prior_diag * (x - x_ref)])

    def normal_equations(x: Array, lin: tuple[Array, Array], rw: Array
                         ) -> tuple[Array, Array]:
        """``(J^T J, J^T r)`` of the residual at ``x``: the landmark Jacobian is forward
        mode for the 7 camera/pose parameters and the chain rule (projection Jacobian @ R @
        landmark basis) for the K linear coefficients; the prior adds its diagonal."""
        p = _unflatten(x, n_id, n_ex)
        p0, b = lin
        pts_model = p0 + b @ x[7:]
        r_lm, j_pose = jax.linearize(lambda q: landmark_residual(q, pts_model, rw), x[:7])
        j_pose = jax.vmap(j_pose, out_axes=1)(jnp.eye(7, dtype=x.dtype))  # (2L, 7)
        rot = _rotation(p)
        cam_pts = pts_model @ rot.T + p.translation
        cam = camera_of(p)
        j_proj = jax.vmap(jax.jacfwd(lambda q: project(cam, q)))(cam_pts)  # (L, 2, 3)
        scale = jnp.sqrt(weights * rw) / sigma
        j_lm = jnp.einsum("lij,ljm->lim", (j_proj @ rot) * scale[:, None, None], b)
        jac = jnp.concatenate([j_pose, j_lm.reshape(2 * n_lm, -1)], axis=1)  # (2L, n)
        r_prior = prior_diag * (x - x_ref)
        jtj = jac.T @ jac + jnp.diag(prior_diag * prior_diag)
        g = jac.T @ r_lm + prior_diag * r_prior
        return jtj, g

    def project_box(x: Array) -> Array:
        p = _unflatten(x, n_id, n_ex)
        if blend:
            p = p._replace(beta=jnp.clip(p.beta, 0.0, 1.0))
        if not cfg.estimate_focal:
            p = p._replace(log_focal=jnp.log(f0))
        return _flatten(p)

    # Box-constrained coordinates of the flat parameter vector (blendshape weights in [0, 1]).
    boxed = np.zeros((7 + n_id + n_ex,), bool)
    if blend:
        boxed[7 + n_id:] = True

    def lm_solve(x: Array, ids: Array, wts: Array, rw: Array) -> tuple[Array, Array, Array]:
        n = x.shape[0]
        free = jnp.ones((n,), jnp.float32)
        if not cfg.estimate_focal:
            free = free.at[6].set(0.0)
        lin = _landmark_basis(model, n_id, ids, wts)

        def cost_of(x):
            r = residual(x, lin, rw)
            return 0.5 * jnp.sum(r * r)

        def body(state):
            x, mu, nu, it, cost, _, done = state
            jtj, g = normal_equations(x, lin, rw)
            jtj = jtj * free[:, None] * free[None, :]
            g = g * free
            d = jnp.sqrt(jnp.diag(jtj) + 1e-12)

            def solve_rest(fixed: Array, dx_fixed: Array) -> Array:
                """Minimise the damped Gauss-Newton model over the coordinates not ``fixed``,
                the fixed ones moving by ``dx_fixed``: Jacobi-scaled (the columns mix radians,
                millimetres and unit coefficients), Marquardt damping ``mu``, Cholesky."""
                fr = free * (1.0 - fixed.astype(jnp.float32))
                s = fr / d
                a = jtj * s[:, None] * s[None, :] + jnp.diag((1.0 - fr) + fr * mu)
                chol = jax.scipy.linalg.cho_factor(a, lower=True)
                return dx_fixed - s * jax.scipy.linalg.cho_solve(chol, s * (g + jtj @ dx_fixed))

            # Box constraints by an active set, not by clipping an unconstrained step (that
            # stalls LM: with ~30 of 53 weights at a bound, most clipped steps increased the
            # cost and the damping ran away). Weights at a bound whose gradient pushes them
            # outward stay there; weights the step would carry across a bound are put on it
            # and the rest re-solved with them fixed.
            act = boxed & (((x <= 0.0) & (g > 0.0)) | ((x >= 1.0) & (g < 0.0)))
            step = solve_rest(act, jnp.zeros_like(x))
            xt = x + step
            hit = boxed & ~act & ((xt < 0.0) | (xt > 1.0))
            step = solve_rest(act | hit, jnp.where(hit, jnp.clip(xt, 0.0, 1.0) - x, 0.0))
            x_new = project_box(x + step)
            dx = (x_new - x) * free
            new_cost = cost_of(x_new)
            pred = -(g @ dx + 0.5 * dx @ (jtj @ dx))  # decrease the model predicts
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
            done = conv | (mu >= 1e12)
            return x, mu, nu, it + 1, cost, conv, done

        def cond(state):
            return (state[3] < cfg.inner_iterations) & ~state[6]

        init = (x, jnp.float32(1e-3), jnp.float32(2.0), jnp.int32(0), cost_of(x),
                jnp.bool_(False), jnp.bool_(False))
        x, _, _, it, _, conv, _ = jax.lax.while_loop(cond, body, init)
        return x, it, conv | (it < cfg.inner_iterations)

    # Initialisation: frontal, centred on the landmarks, at the depth that matches their scale.
    mean_lm = _landmark_basis(model, n_id, base_ids, base_w)[0]  # coefficients 0: the mean
    model_extent = jnp.linalg.norm(jnp.max(mean_lm[:, :2], 0) - jnp.min(mean_lm[:, :2], 0))
    depth = f0 * model_extent / jnp.maximum(diag, 1.0)
    centre_px = jnp.sum(observed * weights[:, None], 0) / jnp.maximum(jnp.sum(weights), 1e-6)
    centre_model = jnp.mean(mean_lm, axis=0) @ MODEL_TO_CAMERA.T
    t0 = jnp.stack([(centre_px[0] - w / 2.0) * depth / f0, (centre_px[1] - h / 2.0) * depth / f0,
                    depth]) - centre_model
    x = _flatten(_Params(jnp.zeros(3), t0, jnp.log(f0), jnp.zeros(n_id), jnp.zeros(n_ex)))
    if x_init is not None:
        x = x_init

    if local is not None:
        # The contour search needs positions and normals of the candidate vertices only: the
        # model is evaluated on the candidates and the corners of their incident triangles
        # (a few hundred vertices instead of the whole mesh, which dominated a round's cost).
        loc_v, loc_tri, loc_cand = local
        loc_lin = _landmark_basis(model, n_id, jnp.repeat(loc_v[:, None], 3, axis=1),
                                  jnp.tile(jnp.array([1.0, 0.0, 0.0], jnp.float32),
                                           (loc_v.shape[0], 1)))

    def correspondences(x: Array) -> tuple[Array, Array]:
        if contour is None:
            return base_ids, base_w
        p = _unflatten(x, n_id, n_ex)
        rot = _rotation(p)
        cand = jnp.asarray(contour.candidates)  # (n, C)
        valid = cand >= 0
        cand0 = jnp.where(valid, cand, 0)
        if local is None:
            verts = _shape(model, p, n_id)
            normals = vertex_normals(verts, jnp.asarray(model.triangles))[cand0] @ rot.T
            pts = (verts @ rot.T + p.translation)[cand0]
        else:
            verts = loc_lin[0] + loc_lin[1] @ x[7:]  # (n_loc, 3), model frame
            normals = vertex_normals(verts, loc_tri)[loc_cand] @ rot.T
            pts = (verts @ rot.T + p.translation)[loc_cand]
        view = pts / jnp.linalg.norm(pts, axis=-1, keepdims=True)
        cos = jnp.abs(jnp.sum(normals * view, -1))
        on_contour = cos < jnp.cos(jnp.deg2rad(cfg.contour_min_angle_deg))
        uv = project(camera_of(p), pts.reshape(-1, 3)).reshape(cand.shape + (2,))
        li = jnp.asarray(contour.landmark_index)
        d = jnp.sum(jnp.square(uv - observed[li][:, None, :]), -1)
        # A candidate qualifies when it is on the current silhouette or is the landmark's own
        # vertex (so landmarks near the chin, whose candidates are all frontal, stay put).
        own = cand0 == base_ids[li, :1]
        ok = valid & (on_contour | own)
        big = jnp.float32(1e12)
        d_ok = jnp.where(ok, d, big)
        d_any = jnp.where(valid, d, big)
        best = jnp.where(jnp.any(ok, axis=1), jnp.argmin(d_ok, 1), jnp.argmin(d_any, 1))
        chosen = jnp.take_along_axis(cand0, best[:, None], 1)[:, 0]
        ids = base_ids.at[li].set(jnp.repeat(chosen[:, None], 3, axis=1))
        wts = base_w.at[li].set(jnp.array([1.0, 0.0, 0.0], jnp.float32))
        return ids, wts

    def robust_weights(x: Array, ids: Array, wts: Array) -> Array:
        if cfg.robust == "none":
            return jnp.ones((n_lm,), jnp.float32)
        lin = _landmark_basis(model, n_id, ids, wts)
        r = residual(x, lin, jnp.ones((n_lm,)))[:2 * n_lm].reshape(n_lm, 2)
        mag = jnp.linalg.norm(r, axis=-1) / jnp.sqrt(jnp.maximum(weights, 1e-12))
        return jnp.where(mag > cfg.huber_delta, cfg.huber_delta / jnp.maximum(mag, 1e-12), 1.0)

    def optax_solve(x: Array, ids: Array, wts: Array, rw: Array) -> tuple[Array, Array, Array]:
        lin = _landmark_basis(model, n_id, ids, wts)
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
        return x, jnp.int32(cfg.optax_steps), jnp.abs(rel) < 1e-4

    solve = lm_solve if cfg.solver == "lm" else optax_solve

    def outer(carry):
        x, total, _, ids, wts, rnd, _ = carry
        rw = robust_weights(x, ids, wts)
        x, it, conv = solve(x, ids, wts, rw)
        new_ids, new_wts = correspondences(x)
        # Nothing is left to do once LM has converged and the contour matching no longer
        # changes (with IRLS, also the weights: the round must not have moved x).
        stable = conv & jnp.all(new_ids == ids) & jnp.all(new_wts == wts)
        if cfg.robust != "none":
            stable = stable & (it <= 1)
        if cfg.solver != "lm":  # the optax solvers still make progress in a further round
            stable = jnp.bool_(False)
        return x, total + it, conv, new_ids, new_wts, rnd + 1, stable

    def outer_cond(carry):
        return (carry[5] < cfg.outer_iterations) & ~carry[6]

    # The first round starts from the frontal guess (and frontal contour correspondences);
    # later rounds re-match the contour to the current fit, until it stops changing.
    ids, wts = correspondences(x)
    x, iters, conv, ids, wts, _, _ = jax.lax.while_loop(
        outer_cond, outer, (x, jnp.int32(0), jnp.bool_(False), ids, wts, jnp.int32(0),
                            jnp.bool_(False)))
    p = _unflatten(x, n_id, n_ex)
    rot = _rotation(p)
    cam = camera_of(p)
    uv = project(cam, _landmark_points(model, p, n_id, ids, wts) @ rot.T + p.translation)
    res = jnp.where(present, jnp.linalg.norm(uv - observed, axis=-1), jnp.nan)
    final_cost = 0.5 * jnp.sum(jnp.square(residual(x, _landmark_basis(model, n_id, ids, wts),
                                                   jnp.ones((n_lm,)))))
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
