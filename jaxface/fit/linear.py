"""Linear (closed-form) landmark fitting under an affine camera (survey §3.2, eos style).

Each iteration alternates three linear problems (Aldrian & Smith; eos ``fit_shape_and_pose``):

1. **Camera.** The affine camera ``P`` (2 x 4) that best maps the current model landmarks to the
   observed ones, by the Gold Standard algorithm (Hartley & Zisserman, alg. 7.2: isotropic
   normalisation of both point sets, linear least squares, denormalisation), i.e.
   :func:`jaxface.camera.estimate_affine_camera`.
2. **Identity.** With ``P`` and the expression fixed, the identity coefficients (standardised,
   ``a = alpha / identity_std``) minimise

       sum_i w_i ||P (m_i + B_i a + E_i beta) - y_i||^2 / sigma^2 + lambda_id ||a||^2

   a ridge regression solved in closed form (Cholesky of the ``Ks x Ks`` normal matrix).
3. **Expression.** The same energy in the expression coefficients with ``lambda_exp ||beta||^2``
   (standardised for PCA expressions). PCA expressions are solved in closed form; blendshape
   weights are box-constrained to ``[0, 1]`` and the box-constrained quadratic program is solved by
   ADMM (one Cholesky factorisation, then a fixed number of cheap iterations), warm-started from
   the previous weights.

Contour landmarks (optional, ``use_contour``): before the shape solves of every iteration, each
landmark of the model's ``ContourSet`` is re-assigned to the candidate vertex whose projection
under the current camera lies nearest its observed position (eos' contour correspondence for an
affine camera, with the model's per-landmark candidate lists).

Everything runs in ``lax`` control flow with static shapes: ``fit_linear`` compiles once per model
and configuration and batches over images with ``jax.vmap``.

After the loop the 2 x 3 linear part of ``P`` is decomposed into the nearest scaled orthographic
projection (SVD: ``A = U S V^T``, ``R[:2] = U V^T``, ``R[2] = R[0] x R[1]``, ``scale = mean(S)``),
which gives a rotation for pose reporting and for :func:`linear_to_perspective_init`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxface._pytree import pytree_dataclass
from jaxface.camera import AffineCamera, PerspectiveCamera, Pose, estimate_affine_camera
from jaxface.fit._precision import full_precision
from jaxface.models.morphable import MorphableModel

Array = jax.Array

__all__ = [
    "LinearFitResult",
    "affine_to_scaled_orthographic",
    "fit_linear",
    "linear_to_perspective_init",
    "solve_box_qp",
]

_HI = jax.lax.Precision.HIGHEST


@pytree_dataclass
class LinearFitResult:
    """Result of :func:`fit_linear` (a pytree; batched results carry a leading batch axis).

    Attributes:
      identity: (Ks,) raw identity coefficients (prior ``N(0, identity_std^2)``); modes beyond
        ``n_identity`` are 0.
      expression: (Ke,) expression coefficients (blendshape weights in [0, 1], or raw PCA).
      camera: the :class:`AffineCamera` (2 x 4, model frame -> pixels).
      rotation: (3, 3) rotation of the nearest scaled orthographic camera (model -> camera
        frame: +x right, +y down, +z forward).
      scale: () its scale in pixels per model unit (mm).
      translation: (2,) its image offset in pixels: ``uv ~= scale * (R X)[:2] + translation``.
      landmarks2d: (L, 2) the fitted landmarks projected by the affine camera (pixels).
      residuals: (L,) per-landmark reprojection error in pixels; NaN for ignored landmarks
        (weight 0, NaN input, or undefined in the model).
      landmark_vertex_ids: (L,) vertex each landmark used in the last iteration (contour
        landmarks move along their candidates), -1 for barycentric landmarks.
      cost: () final energy (landmark term in units of sigma^2 plus the priors).
      sigma: () the landmark noise (pixels) the energy used.
    """

    identity: Any
    expression: Any
    camera: Any
    rotation: Any
    scale: Any
    translation: Any
    landmarks2d: Any
    residuals: Any
    landmark_vertex_ids: Any
    cost: Any
    sigma: Any

    @property
    def rmse_px(self) -> Array:
        """Root-mean-square landmark error over the landmarks that were used (pixels)."""
        return jnp.sqrt(jnp.nanmean(jnp.square(self.residuals), axis=-1))


def affine_to_scaled_orthographic(matrix: Any) -> tuple[Array, Array, Array]:
    """Nearest scaled orthographic projection of an affine camera (2, 4).

    ``A = P[:, :3] = U diag(S) V^T``; the two rows of ``U V^T`` are orthonormal and become the
    first two rows of ``R``; ``R[2] = R[0] x R[1]`` (a proper rotation); ``scale = mean(S)``;
    ``translation = P[:, 3]``.

    Returns:
      rotation (3, 3), scale (), translation (2,).
    """
    p = jnp.asarray(matrix)
    if p.shape[-2:] != (2, 4):
        raise ValueError(f"affine camera matrix must be (2, 4), got {p.shape}")
    u, s, vt = jnp.linalg.svd(p[:, :3], full_matrices=False)
    r2 = jnp.matmul(u, vt, precision=_HI)
    rot = jnp.concatenate([r2, jnp.cross(r2[0], r2[1])[None]], axis=0)
    return rot, jnp.mean(s), p[:, 3]


def _after(x: Array, dep: Array) -> Array:
    """``x``, made data-dependent on ``dep`` (NaN where ``dep`` has a NaN), so that XLA runs
    whatever consumes it after ``dep`` is computed.

    Used to keep two batched LAPACK calls from running concurrently: jaxlib 0.10.2's CPU
    LAPACK kernels (Cholesky, eigh, ...) split a batch into tasks on XLA:CPU's intra-op
    thread pool and block their worker until those tasks are done, so as many concurrent
    batched LAPACK calls as pool threads (2 on a 2-core machine) deadlock the pool: every
    worker waits, the process hangs with all threads idle. (``lax.optimization_barrier``
    does not order them: XLA:CPU expands it away.)
    """
    return jnp.where(jnp.isnan(jnp.sum(dep)), jnp.full_like(x, jnp.nan), x)


def solve_box_qp(h: Array, g: Array, x0: Array, lower: float = 0.0, upper: float = 1.0,
                 iterations: int = 100) -> Array:
    """``argmin_x 0.5 x^T H x - g^T x`` subject to ``lower <= x <= upper`` (ADMM).

    ``H`` (n, n) must be symmetric positive definite. The penalty ``rho`` is the mean diagonal of
    ``H``; ``H + rho I`` is inverted once (Cholesky), so each iteration is one mat-vec.
    Returns the (feasible) ADMM ``z`` iterate after ``iterations`` steps (static),
    warm-started at ``x0`` (n,).
    """
    n = h.shape[0]
    rho = jnp.maximum(jnp.trace(h) / n, 1e-8)
    eye = jnp.eye(n, dtype=h.dtype)
    # explicit inverse once: every ADMM step is then a mat-vec (fast under vmap / on GPU).
    # By a symmetric eigendecomposition: XLA CPU's batched triangular solve with a matrix
    # right-hand side (a Cholesky inverse) grew quadratically with the vmapped batch size.
    lam, vec = jnp.linalg.eigh(h + rho * eye)
    m_inv = jnp.matmul(vec / lam[None, :], vec.T, precision=_HI)
    z = jnp.clip(x0, lower, upper)
    u = jnp.zeros_like(z)

    def body(_, state):
        z, u = state
        x = jnp.matmul(m_inv, g + rho * (z - u), precision=_HI)
        z_new = jnp.clip(x + u, lower, upper)
        return z_new, u + x - z_new

    z, _ = jax.lax.fori_loop(0, iterations, body, (z, u))
    return z


@full_precision
def fit_linear(model: MorphableModel, landmarks: Any, image_size: tuple[int, int], *,
               weights: Any = None, n_iterations: int = 5, lambda_identity: Any = 1.0,
               lambda_expression: Any = 1.0, sigma: Any = None, n_identity: int | None = None,
               landmark_set: str = "ibug68", use_contour: bool = True,
               fit_expression: bool = True, expression_iterations: int = 100
               ) -> LinearFitResult:
    """Fit identity, expression and an affine camera to 2D landmarks by alternating linear solves.

    Args:
      model: a morphable model with landmark set ``landmark_set``.
      landmarks: (L, 2) observed landmarks in pixels (OpenCV convention) in the order of the
        landmark set. NaN rows are missing. Batch with ``jax.vmap``.
      image_size: (H, W) of the image (validated; the affine fit itself is image-size free).
      weights: (L,) non-negative per-landmark weights (default 1); 0 ignores a landmark, as do
        NaN rows and rows the model marks undefined (``LandmarkSet.valid``).
      n_iterations: camera / identity / expression rounds (static).
      lambda_identity, lambda_expression: prior weights (traced: changing them does not
        recompile).
      sigma: landmark noise in pixels; default 2 % of the observed landmarks' bounding-box
        diagonal, at least 1 px (the convention of :func:`jaxface.fit.fit_landmarks`).
      n_identity: fit only the leading identity modes (static; default all).
      landmark_set: which landmark set (static).
      use_contour: re-assign the model's contour landmarks each round (static; ignored when the
        model has no ``ContourSet`` for ``landmark_set``).
      fit_expression: solve for the expression (static; False keeps it neutral).
      expression_iterations: ADMM iterations of the blendshape box solve (static).

    Returns:
      :class:`LinearFitResult`.
    """
    if landmark_set not in model.landmarks:
        raise ValueError(f"model {model.name!r} has no landmark set {landmark_set!r}; "
                         f"it has {sorted(model.landmarks)}")
    if len(image_size) != 2 or min(int(image_size[0]), int(image_size[1])) <= 0:
        raise ValueError(f"image_size must be (H, W) with positive entries, got {image_size}")
    if int(n_iterations) < 1:
        raise ValueError(f"n_iterations must be >= 1, got {n_iterations}")
    lm_set = model.landmarks[landmark_set]
    n_lm = len(lm_set)
    landmarks = jnp.asarray(landmarks, jnp.float32)
    if landmarks.shape != (n_lm, 2):
        raise ValueError(f"landmarks must have shape ({n_lm}, 2) for landmark set "
                         f"{landmark_set!r}, got {landmarks.shape} (use jax.vmap to batch)")
    w = (jnp.ones((n_lm,), jnp.float32) if weights is None
         else jnp.asarray(weights, jnp.float32).reshape(n_lm))
    w = w * jnp.asarray(lm_set.valid_mask(), jnp.float32)
    n_id = model.n_identity if n_identity is None else max(1, min(int(n_identity),
                                                                  model.n_identity))
    sig = jnp.float32(-1.0) if sigma is None else jnp.asarray(sigma, jnp.float32)
    contour = model.contours.get(landmark_set) if use_contour else None
    return _fit_linear(model, landmarks, w, sig, jnp.asarray(lambda_identity, jnp.float32),
                       jnp.asarray(lambda_expression, jnp.float32), landmark_set=landmark_set,
                       n_id=n_id, n_iterations=int(n_iterations),
                       use_contour=contour is not None,
                       fit_expression=bool(fit_expression) and model.n_expression > 0,
                       expression_iterations=int(expression_iterations))


@functools.partial(jax.jit, static_argnames=("landmark_set", "n_id", "n_iterations",
                                             "use_contour", "fit_expression",
                                             "expression_iterations"))
def _fit_linear(model: MorphableModel, observed: Array, weights: Array, sigma: Array,
                lambda_id: Array, lambda_ex: Array, *, landmark_set: str, n_id: int,
                n_iterations: int, use_contour: bool, fit_expression: bool,
                expression_iterations: int) -> LinearFitResult:
    lm = model.landmarks[landmark_set]
    n_lm = lm.indices.shape[0]
    n_ex = model.n_expression
    blend = model.expression_kind == "blendshape"

    present = jnp.all(jnp.isfinite(observed), axis=-1)
    w = jnp.where(present, jnp.maximum(weights, 0.0), 0.0)
    y = jnp.where(present[:, None], observed, 0.0)
    lo = jnp.min(jnp.where(w[:, None] > 0, y, jnp.inf), axis=0)
    hi = jnp.max(jnp.where(w[:, None] > 0, y, -jnp.inf), axis=0)
    auto_sigma = jnp.maximum(1.0, 0.02 * jnp.linalg.norm(hi - lo))
    sigma = jnp.where(sigma > 0, sigma, auto_sigma)

    mean = jnp.asarray(model.mean, jnp.float32)
    id_scale = jnp.asarray(model.identity_std[:n_id], jnp.float32)
    if n_ex:
        ex_scale = (jnp.ones((n_ex,), jnp.float32) if blend
                    else jnp.asarray(model.expression_std, jnp.float32))
    else:
        ex_scale = jnp.zeros((0,), jnp.float32)

    def id_basis_at(ids: Array) -> Array:
        """Standardised identity basis at vertices ``ids`` (any shape): (K, *ids.shape, 3).

        Gathers before scaling so that the full (K, V, 3) basis is never touched."""
        g = jnp.asarray(model.identity_basis)[:n_id][:, ids].astype(jnp.float32)
        return g * id_scale.reshape((-1,) + (1,) * (g.ndim - 1))

    def ex_basis_at(ids: Array) -> Array:
        if not n_ex:
            return jnp.zeros((0,) + ids.shape + (3,), jnp.float32)
        g = jnp.asarray(model.expression_basis)[:, ids].astype(jnp.float32)
        return g * ex_scale.reshape((-1,) + (1,) * (g.ndim - 1))

    base_ids = jnp.asarray(lm.indices)
    base_w = jnp.asarray(lm.weights, jnp.float32)

    def gather(ids: Array, wts: Array) -> tuple[Array, Array, Array]:
        """Landmark mean (L, 3) and bases (K, L, 3) for correspondences ``ids`` (L, 3)."""
        m = jnp.einsum("lk,lkc->lc", wts, mean[ids], precision=_HI)
        b = jnp.einsum("lk,nlkc->nlc", wts, id_basis_at(ids), precision=_HI)
        e = jnp.einsum("lk,nlkc->nlc", wts, ex_basis_at(ids), precision=_HI)
        return m, b, e

    def shape_at(m: Array, b: Array, e: Array, a: Array, beta: Array) -> Array:
        return (m + jnp.einsum("n,nlc->lc", a, b, precision=_HI)
                + jnp.einsum("n,nlc->lc", beta, e, precision=_HI))

    def proj(p: Array, x: Array) -> Array:
        return jnp.matmul(x, p[:, :3].T, precision=_HI) + p[:, 3]

    def design(p: Array, basis: Array) -> Array:
        """(2L, K): d(projected landmarks)/d(coefficients) under camera ``p``."""
        jb = jnp.einsum("rc,nlc->lrn", p[:, :3], basis, precision=_HI)  # (L, 2, K)
        return jb.reshape(2 * n_lm, basis.shape[0])

    w2 = jnp.repeat(w, 2) / jnp.square(sigma)  # (2L,) per-row weights of the data term

    def normal_eq(p: Array, basis: Array, target: Array, lam: Array) -> tuple[Array, Array]:
        a = design(p, basis)
        h = jnp.matmul(a.T * w2, a, precision=_HI)
        h = h + lam * jnp.eye(basis.shape[0], dtype=h.dtype)
        g = jnp.matmul(a.T, w2 * target.reshape(-1), precision=_HI)
        return h, g

    def camera(x: Array) -> Array:
        return estimate_affine_camera(x, y, w).matrix

    contour_li = contour_cand = None
    if use_contour:
        cs = model.contours[landmark_set]
        contour_li = jnp.asarray(cs.landmark_index)
        cand = jnp.asarray(cs.candidates)
        contour_valid = cand >= 0
        contour_cand = jnp.where(contour_valid, cand, 0)
        cand_mean = mean[contour_cand]  # (n, C, 3)
        cand_id = id_basis_at(contour_cand)  # (K, n, C, 3)
        cand_ex = ex_basis_at(contour_cand)

    def correspond(p: Array, a: Array, beta: Array) -> tuple[Array, Array]:
        if not use_contour:
            return base_ids, base_w
        pts = (cand_mean + jnp.einsum("k,kncd->ncd", a, cand_id, precision=_HI)
               + jnp.einsum("k,kncd->ncd", beta, cand_ex, precision=_HI))
        uv = proj(p, pts)  # (n, C, 2)
        diff = uv - y[contour_li][:, None, :]
        # the two squares summed explicitly: XLA CPU's YNNPACK reduce fusion of this
        # ``sum(square(.), -1)`` never finished under vmap with batches >= 16 (jax 0.10.2)
        d = jnp.where(contour_valid, diff[..., 0] ** 2 + diff[..., 1] ** 2, jnp.inf)
        best = jnp.argmin(d, axis=1)
        chosen = jnp.take_along_axis(contour_cand, best[:, None], 1)[:, 0]
        ids = base_ids.at[contour_li].set(jnp.repeat(chosen[:, None], 3, axis=1))
        wts = base_w.at[contour_li].set(jnp.array([1.0, 0.0, 0.0], jnp.float32))
        return ids, wts

    def body(_, state):
        a, beta, ids, wts = state
        m, b, e = gather(ids, wts)
        p = camera(shape_at(m, b, e, a, beta))
        ids, wts = correspond(p, a, beta)
        m, b, e = gather(ids, wts)
        # identity, expression fixed
        target = y - proj(p, m + jnp.einsum("n,nlc->lc", beta, e, precision=_HI))
        h, g = normal_eq(p, b, target, lambda_id)
        a = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(h, lower=True), g)
        if fit_expression:
            target = y - proj(p, m + jnp.einsum("n,nlc->lc", a, b, precision=_HI))
            h, g = normal_eq(p, e, target, lambda_ex)
            # ``h`` does not depend on the identity solve: without this, XLA may run the
            # two factorisations at once, see ``_after``.
            h = _after(h, a)
            if blend:
                beta = solve_box_qp(h, g, beta, 0.0, 1.0, expression_iterations)
            else:
                beta = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(h, lower=True), g)
        return a, beta, ids, wts

    a0 = jnp.zeros((n_id,), jnp.float32)
    beta0 = jnp.zeros((n_ex,), jnp.float32)
    a, beta, ids, wts = jax.lax.fori_loop(0, n_iterations, body, (a0, beta0, base_ids, base_w))
    m, b, e = gather(ids, wts)
    x = shape_at(m, b, e, a, beta)
    p = camera(x)
    uv = proj(p, x)
    err = jnp.linalg.norm(uv - y, axis=-1)
    used = w > 0
    cost = (jnp.sum(w * jnp.square(err)) / jnp.square(sigma) + lambda_id * jnp.sum(a * a)
            + lambda_ex * jnp.sum(beta * beta))
    rot, scale, trans = affine_to_scaled_orthographic(p)
    ident = jnp.zeros((model.n_identity,), jnp.float32).at[:n_id].set(
        a * jnp.asarray(model.identity_std[:n_id], jnp.float32))
    if n_ex and not blend:
        expr = beta * jnp.asarray(model.expression_std, jnp.float32)
    else:
        expr = beta
    vid = jnp.where(jnp.all(ids == ids[:, :1], axis=1) | (wts[:, 0] == 1.0), ids[:, 0], -1)
    return LinearFitResult(identity=ident, expression=expr, camera=AffineCamera(matrix=p),
                           rotation=rot, scale=scale, translation=trans, landmarks2d=uv,
                           residuals=jnp.where(used, err, jnp.nan), landmark_vertex_ids=vid,
                           cost=cost, sigma=sigma)


def linear_to_perspective_init(model: MorphableModel, result: LinearFitResult,
                               image_size: tuple[int, int], focal: Any = None,
                               landmark_set: str = "ibug68") -> tuple[Pose, PerspectiveCamera]:
    """A perspective pose and camera that reproduce a linear fit's scaled orthographic view.

    The camera is centred (``(cx, cy) = (W/2, H/2)``) with focal ``focal`` (default
    ``max(H, W)``, the default of :func:`jaxface.fit.fit_landmarks`). The face's landmark
    centroid ``c`` is placed at depth ``z = focal / scale`` so that a perspective projection
    matches the weak perspective one to first order: ``p_cam = R X + t`` with
    ``t = ((u_c - cx) z / f, (v_c - cy) z / f, z) - R c`` where ``(u_c, v_c)`` is where the
    linear fit projects ``c``.

    Args:
      model: the model the fit used.
      result: an unbatched :class:`LinearFitResult` (``jax.vmap`` this function for a batch).
      image_size: (H, W).
      focal: focal length in pixels.
      landmark_set: the landmark set whose centroid anchors the depth.

    Returns:
      (:class:`Pose` model -> camera, :class:`PerspectiveCamera`).
    """
    from jaxface.models.morphable import landmarks as model_landmarks
    from jaxface.models.morphable import vertices

    h, w = (float(s) for s in image_size)
    f = jnp.asarray(max(h, w) if focal is None else focal, jnp.float32)
    verts = vertices(model, result.identity,
                     result.expression if model.n_expression else None)
    valid = jnp.asarray(model.landmarks[landmark_set].valid_mask(), jnp.float32)
    lms = model_landmarks(model, verts, landmark_set)
    c = jnp.sum(lms * valid[:, None], 0) / jnp.maximum(jnp.sum(valid), 1.0)
    rc = jnp.matmul(result.rotation, c, precision=_HI)
    uv_c = result.scale * rc[:2] + result.translation
    cx, cy = jnp.float32(w / 2.0), jnp.float32(h / 2.0)
    z = f / result.scale
    t = jnp.stack([(uv_c[0] - cx) * z / f, (uv_c[1] - cy) * z / f, z]) - rc
    cam = PerspectiveCamera(fx=f, fy=f, cx=cx, cy=cy)
    return Pose(rotation=result.rotation, translation=t), cam

