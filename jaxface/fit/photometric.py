"""Photometric analysis-by-synthesis fitting (survey §3.1, eq 4).

Starting from a landmark fit, recover shape, expression, pose, albedo and SH illumination by
making the rendered face match the photo through the differentiable renderer:

    E = lambda_I   E_I                                    (photo consistency, robust)
      + lambda_lmk E_lmk                                  (detected landmarks, as fit_landmarks)
      + lambda_id |alpha|^2 + lambda_exp |beta|^2 + lambda_alb |c / sigma_c|^2   (E_reg)

* ``E_I = sum_p rho(|I_render(p) - I(p)|^2) / N_0``, Geman-McClure
  ``rho(e) = e / (e + s^2)`` with ``s = robust_scale`` (colour units): hair, glasses, beards
  and specularities stop pulling once their residual is well above ``s``. The render covers
  only the model's ``region`` (default ``"narrow_face"``: the front of the face; no scalp, ears,
  eyeballs, mouth interior or neck) and is composited over the photo itself, so pixels outside
  the face have zero residual and silhouette pixels (``mode="antialias"``) give edge gradients
  (at folds such as the nose's and cheeks' outline; the region's boundary edges are not
  blended, as the photo continues across them).
  ``N_0 = size^2 / 2`` (the crop is fitted to the face, so about the face's pixel count), a
  constant. Coarser pyramid levels add the same term on 2^l-pooled images.
  ``image_error="gradient"`` replaces it by ``lambda_gradient (1 - GC)``, the gradient
  correlation :func:`gradient_correlation` of render and photo over the rendered face pixels
  (insensitive to a per-channel gain and offset of the colours); ``"color+gradient"`` adds
  the two.
* ``E_lmk = sum_i w_i |pi(R S_i + t) - y_i|^2 / sigma^2 / sum_i w_i``, ``sigma`` the landmark
  noise of :func:`jaxface.fit.landmarks.fit_landmarks` (contour landmarks keep the vertices the
  landmark fit matched them to).
* ``alpha``: standardized identity; ``beta``: expression (blendshape weights, box [0, 1]);
  ``c``: albedo coefficients of :func:`jaxface.fit.albedo.albedo_model`.

Stages, all inside one compiled function (``lax.scan`` loops; ``jax.vmap`` batches images of
one size):

1. Crop: a square box around the init fit's projected face (``crop_margin`` x its extent),
   resampled (area-antialiased bilinear) to the working size; the camera intrinsics follow
   the crop and scale.
2. Stage A: SH lighting (9 x 3) and albedo coefficients by alternating weighted linear least
   squares given the init geometry over the visible face pixels of the first level
   (``linear_rounds`` rounds, Geman-McClure IRLS weights; 9 x 9 and K x K normal equations).
3. Stage B: Adam (optax) on pose (rotation increment as axis-angle, translation), identity,
   expression, albedo coefficients and SH, coarse to fine: the first ``coarse_steps`` steps
   render at ``size // 2`` (a step there costs about a fifth of one at ``size``), the rest
   at ``size``; at each working size ``E_I`` is summed over an image pyramid (render and photo
   average-pooled 2x, 4x, ...) whose coarse levels' weight fades to 0 over the steps. The
   step size decays linearly from ``learning_rate`` to ``final_lr_fraction`` times it. One
   differentiable render is compiled per working size.

4. Optional (``free_albedo``): a free per-vertex albedo that explains the working-size crop's
   pixels under the fitted geometry and light (:func:`jaxface.fit.albedo.fit_free_albedo`:
   Geman-McClure-weighted pixels, cotangent-Laplacian smoothness towards the low-dimensional
   albedo, which fills what the camera does not see). Detail the smooth harmonics cannot
   express (freckles, brows, lips) goes here; the geometry is not changed by it.

The focal length stays that of the init fit unless ``estimate_focal`` (a log-focal variable in
stage B, with the prior ``lambda_focal (log(f / f0) / 0.1)^2``; the landmarks and the photo
both see it through the perspective).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxface._pytree import pytree_dataclass, static_field
from jaxface.camera import PerspectiveCamera, project
from jaxface.fit._precision import full_precision
from jaxface.fit.albedo import AlbedoModel, albedo_model, albedo_vertices, fit_free_albedo
from jaxface.fit.landmarks import FitResult, _landmark_basis, _landmark_noise
from jaxface.geometry import axis_angle_to_matrix
from jaxface.models.morphable import MorphableModel, restrict, vertices
from jaxface.render.antialias import edge_neighbors
from jaxface.render.pipeline import render_mesh
from jaxface.render.shading import irradiance_basis, sh_ambient, sh_shading

Array = jax.Array

__all__ = [
    "PhotometricConfig",
    "PhotometricResult",
    "face_submodel",
    "fit_photometric",
    "gradient_correlation",
    "photometric_result_to_json",
]


@pytree_dataclass
class PhotometricConfig:
    """Settings of :func:`fit_photometric`.

    Static (changing one recompiles): ``size`` (working resolution of the square face crop, in
    pixels), ``pyramid`` (levels of the residual pyramid: 2^l average-pooled copies of render
    and photo, whose weight fades from 1 to 0 over the steps: coarse to fine), ``steps`` (Adam
    steps in all), ``coarse_steps`` (how many of them render at ``size // 2``, first),
    ``mode`` (``"antialias"`` or ``"hard"``), ``region`` (model region rendered, None for the
    whole model), ``n_harmonics``, ``n_identity``, ``linear_rounds``, ``image_error``
    (``"color"``, ``"gradient"`` or ``"color+gradient"``, see the module doc),
    ``estimate_focal`` (also refine the focal length, prior ``lambda_focal (log(f / f0) /
    0.1)^2`` towards the init fit's ``f0``), ``free_albedo`` (a final stage: free per-vertex
    albedo by :func:`jaxface.fit.albedo.fit_free_albedo` with ``albedo_smoothness`` and
    ``albedo_prior_weight``, ``free_albedo_iterations`` conjugate-gradient steps). The weights,
    ``learning_rate`` and ``final_lr_fraction`` (the step size decays linearly to this
    fraction of ``learning_rate`` by the last step) are pytree leaves (no recompilation).
    """

    size: int = static_field(default=96)
    pyramid: int = static_field(default=3)
    steps: int = static_field(default=55)
    mode: str = static_field(default="antialias")
    region: str | None = static_field(default="narrow_face")
    n_harmonics: int = static_field(default=16)
    n_identity: int | None = static_field(default=None)
    linear_rounds: int = static_field(default=3)
    coarse_steps: int = static_field(default=30)
    image_error: str = static_field(default="color")
    estimate_focal: bool = static_field(default=False)
    free_albedo: bool = static_field(default=False)
    free_albedo_iterations: int = static_field(default=150)
    learning_rate: Any = 0.05
    final_lr_fraction: Any = 1.0
    crop_margin: Any = 1.15
    robust_scale: Any = 0.15
    lambda_photo: Any = 1.0
    lambda_landmarks: Any = 0.05
    lambda_identity: Any = 2e-4
    lambda_expression: Any = 2e-4
    lambda_albedo: Any = 2e-4
    sh_regularization: Any = 1e-3
    lambda_gradient: Any = 1.0
    lambda_focal: Any = 1e-3
    albedo_smoothness: Any = 0.3
    albedo_prior_weight: Any = 1e-2


@pytree_dataclass
class PhotometricResult(FitResult):
    """Result of :func:`fit_photometric` (a pytree; batched results have a leading axis).

    A :class:`~jaxface.fit.FitResult` (so :func:`~jaxface.fit.result_to_json` and
    :func:`~jaxface.fit.model_vertices_camera` accept it) for the photometric solution, whose
    ``cost`` is the final photometric energy and ``iterations`` the Adam steps taken, with these
    attributes added:

      albedo_coefficients: (K,) coefficients of the albedo model.
      albedo: (V, 3) per-vertex albedo of the whole model (outside the fitted region: the
        albedo model's mean colour); the free per-vertex albedo when ``free_albedo``, else
        the albedo model's at ``albedo_coefficients``.
      sh: (9, 3) SH light in the camera frame.
      photometric_error: () RMS colour error (per channel) over the rendered face pixels of
        the working-size crop, at the last step (with the free albedo when ``free_albedo``).
      energies: (S,) total energy per Adam step.
      crop: (3,) ``(x0, y0, size)`` of the square crop in image pixels.
    """

    albedo_coefficients: Any
    albedo: Any
    sh: Any
    photometric_error: Any
    energies: Any
    crop: Any

    @property
    def rmse_px(self) -> Array:
        """(…) RMS landmark error (pixels) over the landmarks the fit used (NaN residuals of
        landmarks outside the fitted region left out)."""
        return jnp.sqrt(jnp.nanmean(jnp.square(self.residuals), axis=-1))

    def fit_result(self) -> FitResult:
        """The geometric part as a plain :class:`FitResult` (the photometric extras dropped)."""
        return FitResult(**{f.name: getattr(self, f.name)
                            for f in dataclasses.fields(FitResult)})


_IMAGE_ERRORS = ("color", "gradient", "color+gradient")

_SUBMODELS: dict[tuple[int, str | None], tuple[Any, MorphableModel, np.ndarray]] = {}


def face_submodel(model: MorphableModel, region: str | None = "narrow_face"
                  ) -> tuple[MorphableModel, np.ndarray]:
    """The sub-model rendered by the photometric fit and its vertex ids in ``model`` (cached).

    ``region`` None, or a model without that region, gives the whole model.
    """
    key = (id(model), region)
    hit = _SUBMODELS.get(key)
    if hit is not None and hit[0] is model:
        return hit[1], hit[2]
    if region is None or region not in model.regions:
        sub, ids = model, np.arange(model.n_vertices)
    else:
        mask = np.asarray(model.regions[region], bool)
        if mask.sum() < 3:
            raise ValueError(f"region {region!r} of model {model.name!r} has too few vertices")
        import warnings

        with warnings.catch_warnings():  # landmark sets off the region are not needed here
            warnings.simplefilter("ignore")
            sub = restrict(model, mask)
        ids = np.nonzero(mask)[0]
    if len(_SUBMODELS) > 8:
        _SUBMODELS.clear()
    _SUBMODELS[key] = (model, sub, ids)
    return sub, ids


@full_precision
def fit_photometric(model: MorphableModel, image: Any, init: FitResult, landmarks: Any = None,
                    *, landmark_weights: Any = None, config: PhotometricConfig | None = None,
                    albedo: AlbedoModel | None = None, landmark_set: str = "ibug68",
                    **overrides: Any) -> PhotometricResult:
    """Photometric fit of identity, expression, pose, albedo and SH light to one photo.

    Args:
      model: the morphable model (host arrays).
      image: (H, W, 3) photo, float in [0, 1]. Batch with ``jax.vmap`` over ``image``,
        ``init`` and ``landmarks``.
      init: the landmark fit (:func:`jaxface.fit.fit_landmarks`) the fit starts from; its camera
        is kept.
      landmarks: (L, 2) detected landmarks in pixels (NaN rows missing) for ``E_lmk``, or None.
      landmark_weights: (L,) confidences (default 1).
      config: PhotometricConfig; keyword ``overrides`` replace its fields.
      albedo: an AlbedoModel over the rendered region's vertices (default
        :func:`jaxface.fit.albedo.albedo_model` of that region).
      landmark_set: the model's landmark set ``landmarks`` follow.

    Returns:
      PhotometricResult.
    """
    cfg = config or PhotometricConfig()
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    if cfg.mode not in ("hard", "antialias"):
        raise ValueError(f"mode must be 'hard' or 'antialias', got {cfg.mode!r}")
    if cfg.image_error not in _IMAGE_ERRORS:
        raise ValueError(f"image_error must be one of {_IMAGE_ERRORS}, got {cfg.image_error!r}")
    if int(cfg.size) < 16 or int(cfg.steps) < 2 or int(cfg.pyramid) < 1:
        raise ValueError(f"need size >= 16 px, steps >= 2 and pyramid >= 1, got size={cfg.size}, "
                         f"steps={cfg.steps}, pyramid={cfg.pyramid}")
    for lsize, _ in _levels(cfg):
        if lsize % (2 ** (cfg.pyramid - 1)) or lsize < 16:
            raise ValueError(f"working size {lsize} (size={cfg.size}, coarse level size // 2 "
                             f"when coarse_steps > 0) must be >= 16 and divisible by "
                             f"2^(pyramid - 1) = {2 ** (cfg.pyramid - 1)}")
    image = jnp.asarray(image, jnp.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {tuple(image.shape)}")
    if min(image.shape[:2]) < 16:
        raise ValueError(f"image of {image.shape[1]}x{image.shape[0]} pixels is too small for a "
                         "photometric fit (at least 16 px a side)")
    if landmark_set not in model.landmarks:
        raise ValueError(f"model {model.name!r} has no landmark set {landmark_set!r}")
    n_lm = len(model.landmarks[landmark_set])
    if landmarks is None:
        observed = jnp.zeros((n_lm, 2), jnp.float32)
        weights = jnp.zeros((n_lm,), jnp.float32)
    else:
        observed = jnp.asarray(landmarks, jnp.float32)
        if observed.shape != (n_lm, 2):
            raise ValueError(f"landmarks must have shape ({n_lm}, 2), got {observed.shape}")
        weights = (jnp.ones((n_lm,), jnp.float32) if landmark_weights is None
                   else jnp.asarray(landmark_weights, jnp.float32).reshape(n_lm))
    weights = weights * jnp.asarray(model.landmarks[landmark_set].valid_mask(), jnp.float32)
    sub, ids = face_submodel(model, cfg.region)
    am = albedo_model(sub, cfg.n_harmonics) if albedo is None else albedo
    if am.n_vertices != sub.n_vertices:
        raise ValueError(f"albedo model has {am.n_vertices} vertices, the fitted region "
                         f"{sub.n_vertices}")
    mesh = _mesh(sub)
    lm = model.landmarks[landmark_set]
    # contour landmarks keep the vertex the landmark fit matched them to
    vid = jnp.asarray(init.landmark_vertex_ids, jnp.int32)
    base_ids, base_w = jnp.asarray(lm.indices), jnp.asarray(lm.weights, jnp.float32)
    lm_ids = jnp.where(vid[:, None] >= 0, vid[:, None], base_ids)
    lm_w = jnp.where(vid[:, None] >= 0, jnp.array([1.0, 0.0, 0.0]), base_w)
    n_id = model.n_identity if cfg.n_identity is None else min(cfg.n_identity, model.n_identity)
    lin = _landmark_basis(model, n_id, lm_ids, lm_w)
    res = _fit(sub, am, mesh, lin, image, init, observed, weights, cfg)
    # scatter the region's albedo into the whole model
    full_alb = jnp.broadcast_to(jnp.mean(jnp.asarray(am.mean, jnp.float32), 0),
                                (model.n_vertices, 3))
    full_alb = full_alb.at[jnp.asarray(ids)].set(res.albedo)
    ident = jnp.zeros((model.n_identity,), jnp.float32).at[:n_id].set(res.identity[:n_id])
    return dataclasses.replace(res, albedo=full_alb, identity=ident)


class _Mesh:
    """The rendered region's triangles and edge neighbours as host arrays.

    A static argument of the compiled fit (hashed by identity; one per cached sub-model), so
    that the renderer's index gathers and scatters see constant indices.
    """

    def __init__(self, triangles: np.ndarray, neighbors: np.ndarray) -> None:
        self.triangles = triangles
        self.neighbors = neighbors


_MESHES: dict[int, tuple[Any, _Mesh]] = {}


def _mesh(sub: MorphableModel) -> _Mesh:
    hit = _MESHES.get(id(sub))
    if hit is None or hit[0] is not sub:
        if len(_MESHES) > 8:
            _MESHES.clear()
        tri = np.ascontiguousarray(np.asarray(sub.triangles), np.int32)
        nbr = edge_neighbors(tri).astype(np.int32)
        # boundary edges (the region's outline, eye and mouth openings) are not antialiased:
        # the render is composited over the photo, which shows the same skin (or the eyes and
        # mouth the region leaves out) across them, not a background; blending there only
        # adds a misleading edge gradient. Folds (nose, cheeks at yaw) stay silhouettes.
        # Measured on 10 synthetic faces: median vertex error 1.67 mm, against 1.72 mm
        # with the boundary edges antialiased too.
        own = np.broadcast_to(np.arange(tri.shape[0], dtype=np.int32)[:, None], nbr.shape)
        nbr = np.where(nbr < 0, own, nbr)
        hit = (sub, _Mesh(tri, nbr))
        _MESHES[id(sub)] = hit
    return hit[1]


def _geman_mcclure(e2: Array, s: Array) -> Array:
    return e2 / (e2 + s * s)


def _crop_box(sub: MorphableModel, init: FitResult, image_size: tuple[int, int],
              margin: Array) -> Array:
    """(x0, y0, size): a square around the init fit's projected region."""
    verts = vertices(sub, init.identity[: sub.n_identity],
                     init.expression if sub.n_expression else None)
    uv = project(init.camera, verts @ init.rotation.T + init.translation)
    lo, hi = jnp.min(uv, 0), jnp.max(uv, 0)
    centre = 0.5 * (lo + hi)
    size = jnp.maximum(jnp.max(hi - lo) * margin, 8.0)
    return jnp.stack([centre[0] - size / 2, centre[1] - size / 2, size])


def _level_view(image: Array, camera: PerspectiveCamera, box: Array, size: int
                ) -> tuple[Array, PerspectiveCamera]:
    """The crop resampled to ``size`` x ``size`` and the camera of that view."""
    s = size / box[2]
    img = jax.image.scale_and_translate(image, (size, size, 3), (0, 1), jnp.stack([s, s]),
                                        jnp.stack([-box[1] * s, -box[0] * s]),
                                        method="linear", antialias=True)
    cam = PerspectiveCamera(fx=camera.fx * s, fy=camera.fy * s, cx=(camera.cx - box[0]) * s,
                            cy=(camera.cy - box[1]) * s)
    return jnp.clip(img, 0.0, 1.0), cam


def _pixel_attr(attr: Array, tid: Array, bary: Array, tri: Array) -> Array:
    """Interpolate (V, C) vertex attributes at the pixels of a hard rasterisation."""
    covered = tid >= 0
    tri = jnp.asarray(tri)
    rows = attr[tri[jnp.where(covered, tid, 0)]]  # (H, W, 3, C)
    out = jnp.einsum("hwk,hwkc->hwc", bary, rows)
    return jnp.where(covered[..., None], out, 0.0)


def gradient_correlation(a: Any, b: Any, weights: Any = None, eps: float = 1e-8) -> Array:
    """Gradient correlation of two images (Penney et al. 1998), optionally weighted.

    The mean, over the two directions (forward differences along rows and columns) and the
    channels, of the weighted normalised cross-correlation of the two images' gradients:
    ``GC = mean_{d, c} sum w (g_a - mu_a)(g_b - mu_b) / sqrt(sum w (g_a - mu_a)^2
    sum w (g_b - mu_b)^2 + eps)`` with ``mu`` the weighted means. A difference between pixels
    ``p`` and ``q`` has weight ``max(w_p, w_q)``. Invariant to a per-channel gain and offset of
    either image; 1 for equal images.

    Args:
      a, b: (H, W, C) images.
      weights: (H, W) non-negative pixel weights (e.g. the rendered face's coverage), or None
        for all ones.
      eps: added under the square root (flat images give 0, not NaN).

    Returns:
      () correlation in [-1, 1].
    """
    dt = jnp.promote_types(jnp.result_type(a, b), jnp.float32)
    a = jnp.asarray(a, dt)
    b = jnp.asarray(b, dt)
    w = jnp.ones(a.shape[:2], a.dtype) if weights is None else jnp.asarray(weights, a.dtype)
    out = []
    for axis in (0, 1):
        n = a.shape[axis]

        def d(x, axis=axis, n=n):
            return (jax.lax.slice_in_dim(x, 1, n, axis=axis)
                    - jax.lax.slice_in_dim(x, 0, n - 1, axis=axis))

        wp = jnp.maximum(jax.lax.slice_in_dim(w, 1, n, axis=axis),
                         jax.lax.slice_in_dim(w, 0, n - 1, axis=axis))[..., None]
        ga, gb = d(a), d(b)
        ws = jnp.maximum(jnp.sum(wp), 1e-12)
        ga = ga - jnp.sum(wp * ga, (0, 1)) / ws
        gb = gb - jnp.sum(wp * gb, (0, 1)) / ws
        cov = jnp.sum(wp * ga * gb, (0, 1))
        var = jnp.sum(wp * ga * ga, (0, 1)) * jnp.sum(wp * gb * gb, (0, 1))
        out.append(cov / jnp.sqrt(var + eps))
    return jnp.mean(jnp.stack(out))


def _levels(cfg: PhotometricConfig) -> list[tuple[int, int]]:
    """Stage B's (working size, Adam steps) per level: ``coarse_steps`` at ``size // 2``,
    then the rest at ``size``."""
    coarse = min(int(cfg.coarse_steps), int(cfg.steps) - 1)
    out = [(int(cfg.size) // 2, coarse)] if coarse > 0 else []
    return out + [(int(cfg.size), int(cfg.steps) - coarse)]


def _pyramid(image: Array, levels: int) -> list[Array]:
    """[image, 2x average-pooled, 4x, ...] (``levels`` entries; sizes must divide)."""
    out = [image]
    for _ in range(levels - 1):
        x = out[-1]
        h, w, c = x.shape
        out.append(x[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c).mean((1, 3)))
    return out


def _sh_solve(alb_px: Array, irr: Array, target: Array, weights: Array, reg: Any) -> Array:
    """Weighted least-squares SH light per colour channel by the 9 x 9 normal equations.

    Minimises ``sum_p w_p |alb_p * (irr_p @ sh) - target_p|^2 + reg |sh|^2`` (what
    :func:`jaxface.render.shading.fit_sh_lstsq` solves by SVD, here as three 9 x 9 solves).

    Args:
      alb_px: (P, 3) albedo; irr: (P, 9) irradiance basis; target: (P, 3); weights: (P,).
      reg: Tikhonov weight.

    Returns:
      (9, 3) SH coefficients.
    """
    hi = jax.lax.Precision.HIGHEST
    wa = alb_px * weights[:, None]  # (P, 3)
    gram = jnp.einsum("pc,pk,pl->ckl", wa * alb_px, irr, irr, precision=hi)
    rhs = jnp.einsum("pc,pk->ck", wa * target, irr, precision=hi)
    gram = gram + reg * jnp.eye(9, dtype=gram.dtype)
    return jnp.linalg.solve(gram, rhs[..., None])[..., 0].T


def _linear_stage(mesh: _Mesh, am: AlbedoModel, verts_cam: Array,
                  cam: PerspectiveCamera, target: Array, size: int, cfg: PhotometricConfig
                  ) -> tuple[Array, Array]:
    """Stage A: alternate SH and albedo-coefficient least squares. Returns (sh, coeffs).

    Works on the covered pixels of a hard render at ``size`` x ``size`` (flattened to P
    pixels); every solve is a small normal-equation system (9 x 9 per channel for the light,
    K x K for the albedo).
    """
    hi = jax.lax.Precision.HIGHEST
    tri = mesh.triangles
    out = render_mesh(verts_cam, tri, cam, (size, size), mode="hard")
    p = size * size
    covered = (out.triangle_id >= 0).astype(jnp.float32).reshape(p)
    k = am.n_coefficients
    mean_px = _pixel_attr(jnp.asarray(am.mean, jnp.float32), out.triangle_id, out.barycentric,
                          tri).reshape(p, 3)
    basis_vc = jnp.transpose(jnp.asarray(am.basis, jnp.float32), (1, 0, 2)).reshape(-1, k * 3)
    basis_px = _pixel_attr(basis_vc, out.triangle_id, out.barycentric, tri).reshape(p, k, 3)
    irr = irradiance_basis(out.normals).reshape(p, 9)
    tgt = target.reshape(p, 3)
    s = cfg.robust_scale
    inv_var = 1.0 / jnp.square(jnp.asarray(am.std, jnp.float32))
    n_eff = jnp.maximum(jnp.sum(covered), 1.0)

    def albedo_px(coeffs):
        return mean_px + jnp.einsum("pkc,k->pc", basis_px, coeffs, precision=hi)

    def round_(carry, _):
        coeffs, w = carry
        pw = w * covered
        sh = _sh_solve(albedo_px(coeffs), irr, tgt, pw, cfg.sh_regularization)
        shade = jnp.matmul(irr, sh, precision=hi)  # (P, 3)
        a = basis_px * shade[:, None, :]  # (P, K, 3)
        b = tgt - mean_px * shade
        lhs = jnp.einsum("pkc,plc,p->kl", a, a, pw, precision=hi) / n_eff \
            + cfg.lambda_albedo * jnp.diag(inv_var) / 3.0
        rhs = jnp.einsum("pkc,pc,p->k", a, b, pw, precision=hi) / n_eff
        coeffs = jnp.linalg.solve(lhs, rhs)
        e2 = jnp.sum(jnp.square(albedo_px(coeffs) * shade - tgt), -1)
        w = jnp.square(s * s / (e2 + s * s))  # Geman-McClure IRLS weights
        return (coeffs, w), None

    init = (jnp.zeros((k,), jnp.float32), jnp.ones((p,), jnp.float32))
    (coeffs, w), _ = jax.lax.scan(round_, init, None, length=cfg.linear_rounds)
    sh = _sh_solve(albedo_px(coeffs), irr, tgt, w * covered, cfg.sh_regularization)
    return sh, coeffs


@functools.partial(jax.jit, static_argnames=("mesh",))
def _fit(sub: MorphableModel, am: AlbedoModel, mesh: _Mesh, lin: tuple[Array, Array],
         image: Array, init: FitResult, observed: Array, weights: Array,
         cfg: PhotometricConfig) -> PhotometricResult:
    h, w = image.shape[:2]
    n_id = lin[1].shape[-1] - sub.n_expression
    n_ex = sub.n_expression
    blend = sub.expression_kind == "blendshape"
    tri, nbr = mesh.triangles, mesh.neighbors
    id_std = jnp.asarray(sub.identity_std[:n_id], jnp.float32)
    ex_scale = (jnp.ones((n_ex,), jnp.float32) if blend or n_ex == 0
                else jnp.asarray(sub.expression_std, jnp.float32))
    alb_std = jnp.asarray(am.std, jnp.float32)
    cam0 = init.camera

    present = jnp.all(jnp.isfinite(observed), axis=-1)
    lw = jnp.where(present, weights, 0.0)
    obs = jnp.where(present[:, None], observed, 0.0)
    sigma = _landmark_noise(obs, present & (lw > 0))
    lw_sum = jnp.maximum(jnp.sum(lw), 1e-6)

    box = _crop_box(sub, init, (h, w), cfg.crop_margin)
    rot0 = jnp.asarray(init.rotation, jnp.float32)
    t0 = jnp.asarray(init.translation, jnp.float32)
    alpha0 = jnp.asarray(init.identity[:n_id], jnp.float32) / id_std
    beta0 = (jnp.asarray(init.expression, jnp.float32) / ex_scale if n_ex
             else jnp.zeros((0,), jnp.float32))

    # optimisation variables, preconditioned: value = z * scale
    scales = {"rot": jnp.full((3,), 0.05), "trans": jnp.full((3,), 5.0),
              "alpha": jnp.ones((n_id,)), "beta": jnp.full((n_ex,), 0.5),
              "albedo": alb_std, "sh": jnp.full((9, 3), 0.2)}
    if cfg.estimate_focal:
        scales["logf"] = jnp.full((), 0.2)

    def with_focal(cam, p):
        """``cam`` with its focal length scaled by ``exp(p["logf"])`` (crops scale fx, fy and
        move the principal point, so the factor carries over to every view)."""
        if "logf" not in p:
            return cam
        k = jnp.exp(p["logf"])
        return PerspectiveCamera(fx=cam.fx * k, fy=cam.fy * k, cx=cam.cx, cy=cam.cy)

    def unpack(z):
        return {k: z[k] * scales[k] for k in z}

    def geometry(p):
        rot = axis_angle_to_matrix(p["rot"]) @ rot0
        trans = t0 + p["trans"]
        if "logf" in p:  # a dolly zoom: the face keeps its image size as the focal changes
            trans = trans.at[2].multiply(jnp.exp(p["logf"]))
        ident = p["alpha"] * id_std
        expr = (p["beta"] * ex_scale) if n_ex else None
        return rot, trans, ident, expr

    def landmarks_of(p, rot, trans):
        pts = (lin[0] + lin[1] @ jnp.concatenate([p["alpha"], p["beta"]])) @ rot.T + trans
        return project(with_focal(cam0, p), pts)

    def render_view(p, cam, size, target, mode):
        rot, trans, ident, expr = geometry(p)
        verts = vertices(sub, jnp.zeros((sub.n_identity,)).at[:n_id].set(ident), expr)
        verts_cam = verts @ rot.T + trans
        alb = albedo_vertices(am, p["albedo"])
        out = render_mesh(verts_cam, tri, with_focal(cam, p), (size, size), albedo=alb,
                          sh=p["sh"], background=target, mode=mode, neighbors=nbr)
        return out, rot, trans

    def energy_terms(p, cam, size, targets, n0, t):
        out, rot, trans = render_view(p, cam, size, targets[0], cfg.mode)
        e_photo = 0.0
        if cfg.image_error in ("color", "color+gradient"):
            renders = _pyramid(out.rgb, cfg.pyramid)
            for lev, (ren, tgt) in enumerate(zip(renders, targets, strict=True)):
                e2 = jnp.sum(jnp.square(ren - tgt), -1)
                # coarse levels (2^lev pooled) fade out over the steps: coarse to fine
                wl = 1.0 if lev == 0 else 1.0 - t
                e_photo = e_photo + wl * jnp.sum(_geman_mcclure(e2, cfg.robust_scale)) / (
                    n0 / 4.0 ** lev)
        if cfg.image_error in ("gradient", "color+gradient"):
            gc = gradient_correlation(out.rgb, targets[0], jax.lax.stop_gradient(out.mask))
            e_photo = e_photo + cfg.lambda_gradient * (1.0 - gc)
        uv = landmarks_of(p, rot, trans)
        r2 = jnp.sum(jnp.square((uv - obs) / sigma), -1)
        e_lmk = jnp.sum(lw * r2) / lw_sum
        e_reg = (cfg.lambda_identity * jnp.sum(jnp.square(p["alpha"]))
                 + cfg.lambda_expression * jnp.sum(jnp.square(p["beta"] / ex_scale))
                 + cfg.lambda_albedo * jnp.sum(jnp.square(p["albedo"] / alb_std)))
        if "logf" in p:
            e_reg = e_reg + cfg.lambda_focal * jnp.square(p["logf"] / 0.1)
        total = cfg.lambda_photo * e_photo + cfg.lambda_landmarks * e_lmk + e_reg
        cov = out.mask
        err = jnp.sqrt(jnp.sum(cov * jnp.mean(jnp.square(out.rgb - targets[0]), -1))
                       / jnp.maximum(jnp.sum(cov), 1.0))
        return total, (e_photo, e_lmk, err)

    def project_box(z):
        if blend and n_ex:
            z = dict(z, beta=jnp.clip(z["beta"] * scales["beta"], 0.0, 1.0) / scales["beta"])
        return z

    # Stage A: light and albedo for the init geometry, at the first level's size.
    levels = _levels(cfg)
    views = {sz: _level_view(image, cam0, box, sz) for sz, _ in levels}
    size0 = levels[0][0]
    p = {"rot": jnp.zeros((3,)), "trans": jnp.zeros((3,)), "alpha": alpha0, "beta": beta0,
         "albedo": jnp.zeros((am.n_coefficients,)), "sh": sh_ambient(0.8)}
    if cfg.estimate_focal:
        p["logf"] = jnp.zeros(())
    rot, trans, ident, expr = geometry(p)
    verts0 = vertices(sub, jnp.zeros((sub.n_identity,)).at[:n_id].set(ident), expr)
    sh_a, coeffs_a = _linear_stage(mesh, am, verts0 @ rot.T + trans, views[size0][1],
                                   views[size0][0], size0, cfg)
    p = dict(p, sh=sh_a, albedo=coeffs_a)
    z = {k: v / scales[k] for k, v in p.items()}

    # Stage B: Adam, one compiled render per step, level by level (coarse working size
    # first); within a level the residual pyramid moves from coarse to fine.
    n_steps = cfg.steps
    opt = optax.scale_by_adam()
    state = opt.init(z)
    outs = []
    start = 0
    for size, n in levels:
        target, cam = views[size]
        targets = _pyramid(target, cfg.pyramid)
        n0 = jnp.float32(0.5 * size * size)

        def f(zz, t, cam=cam, size=size, targets=targets, n0=n0):
            return energy_terms(unpack(zz), cam, size, targets, n0, t)

        vg = jax.value_and_grad(f, has_aux=True)

        def step(carry, i, vg=vg):
            zz, st = carry
            t = i / max(n_steps - 1, 1)
            (value, aux), grad = vg(zz, t)
            updates, st = opt.update(grad, st, zz)
            lr = cfg.learning_rate * (1.0 + (cfg.final_lr_fraction - 1.0) * t)
            updates = jax.tree.map(lambda u: -lr * u, updates)
            zz = project_box(optax.apply_updates(zz, updates))
            return (zz, st), (value, aux)

        (z, state), out = jax.lax.scan(
            step, (z, state), jnp.arange(start, start + n, dtype=jnp.float32))
        outs.append(out)
        start += n
    energies, (e_photo, e_lmk, err) = jax.tree.map(lambda *x: jnp.concatenate(x), *outs)
    p = unpack(z)
    total = energies[-1]
    err = err[-1]
    rot, trans, ident, expr = geometry(p)
    albedo = albedo_vertices(am, p["albedo"])
    if cfg.free_albedo:
        albedo, err = _free_albedo_stage(sub, mesh, p, albedo, views[levels[-1][0]],
                                         levels[-1][0], geometry, with_focal, cfg)
    uv = landmarks_of(p, rot, trans)
    res = jnp.where(present, jnp.linalg.norm(uv - obs, axis=-1), jnp.nan)
    rel = jnp.abs(energies[-2] - energies[-1]) / jnp.maximum(jnp.abs(energies[-2]), 1e-12) \
        if energies.shape[0] > 1 else jnp.float32(0.0)
    return PhotometricResult(
        identity=ident, expression=expr if n_ex else jnp.zeros((0,), jnp.float32),
        rotation=rot, translation=trans, camera=with_focal(cam0, p), landmarks2d=uv,
        residuals=res,
        landmark_vertex_ids=jnp.asarray(init.landmark_vertex_ids), cost=total,
        iterations=jnp.int32(cfg.steps), converged=rel < 1e-3,
        albedo_coefficients=p["albedo"], albedo=albedo, sh=p["sh"],
        photometric_error=err, energies=energies, crop=box)


def _free_albedo_stage(sub: MorphableModel, mesh: _Mesh, p: dict, prior: Array,
                       view: tuple[Array, PerspectiveCamera], size: int, geometry: Any,
                       with_focal: Any, cfg: PhotometricConfig) -> tuple[Array, Array]:
    """The free per-vertex albedo of the final geometry and light, and the RMS colour error of
    its render (the final stage of :func:`fit_photometric`)."""
    target, cam = view
    cam = with_focal(cam, p)
    rot, trans, ident, expr = geometry(p)
    n_id = ident.shape[0]
    verts = vertices(sub, jnp.zeros((sub.n_identity,)).at[:n_id].set(ident), expr)
    verts_cam = verts @ rot.T + trans
    tri = mesh.triangles
    out = render_mesh(verts_cam, tri, cam, (size, size), albedo=prior, sh=p["sh"],
                      background=target, mode="hard")
    shade = sh_shading(out.normals, p["sh"])
    e2 = jnp.sum(jnp.square(out.rgb - target), -1)
    s2 = jnp.square(cfg.robust_scale)
    wpx = out.mask * jnp.square(s2 / (e2 + s2))  # Geman-McClure IRLS weights
    albedo = fit_free_albedo(verts, tri, out.triangle_id, out.barycentric, shade, target, wpx,
                             prior, cfg.albedo_smoothness, cfg.albedo_prior_weight,
                             iterations=cfg.free_albedo_iterations)
    final = render_mesh(verts_cam, tri, cam, (size, size), albedo=albedo, sh=p["sh"],
                        background=target, mode=cfg.mode, neighbors=mesh.neighbors)
    cov = final.mask
    err = jnp.sqrt(jnp.sum(cov * jnp.mean(jnp.square(final.rgb - target), -1))
                   / jnp.maximum(jnp.sum(cov), 1.0))
    return albedo, err


def photometric_result_to_json(model: MorphableModel, result: PhotometricResult,
                               image_size: tuple[int, int], landmark_set: str = "ibug68",
                               albedo_kind: str | None = None) -> dict[str, Any]:
    """``result_to_json`` of the photometric fit plus its photometric keys.

    Added keys: ``albedo`` (``{"kind", "coefficients", "mean_rgb"}``: the albedo model's
    coefficients and the mean fitted colour of the face), ``sh`` (9 x 3, camera frame),
    ``photometric_error`` (RMS colour error over the face pixels), ``photometric_cost``,
    ``photometric_steps`` and ``crop`` ([x0, y0, size] pixels). Existing keys are unchanged.
    """
    from jaxface.fit.results import result_to_json

    out = result_to_json(model, result, image_size, landmark_set)
    alb = np.asarray(result.albedo, np.float64)
    if albedo_kind is None:
        albedo_kind = "model" if model.albedo_basis is not None else "harmonics"
    out.update({
        "albedo": {"kind": albedo_kind,
                   "coefficients": np.asarray(result.albedo_coefficients,
                                              np.float64).round(6).tolist(),
                   "mean_rgb": alb.mean(0).round(6).tolist()},
        "sh": np.asarray(result.sh, np.float64).round(6).tolist(),
        "photometric_error": float(result.photometric_error),
        "photometric_cost": float(result.cost),
        "photometric_steps": int(result.iterations),
        "crop": np.asarray(result.crop, np.float64).round(4).tolist(),
    })
    return out
