"""Synthetic ground truth: Generate & Render faces with known parameters (survey §3.1).

:func:`generate` draws a random identity (model prior), expression (sparse blendshape weights
or PCA prior), head pose, SH illumination, smooth albedo (manifold harmonics, see
:mod:`jaxface.fit.albedo`) and a smooth background, renders the whole head (face, neck, ears,
eyes, mouth) with :func:`jaxface.render.render`, and returns the image with every parameter and
the 68 projected landmarks. Deterministic in the PRNG key; ``jit``/``vmap``-able over keys.

:func:`evaluate_fits` fits renders back, landmark-only (:func:`jaxface.fit.fit_landmarks` on
the projected landmarks plus Gaussian noise) and photometric
(:func:`jaxface.fit.fit_photometric` from that landmark fit), and measures the
similarity-aligned per-vertex error over the face region in mm.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxface._pytree import pytree_dataclass
from jaxface.camera import PerspectiveCamera
from jaxface.fit.albedo import albedo_model, albedo_vertices
from jaxface.fit.landmarks import MODEL_TO_CAMERA
from jaxface.geometry import euler_to_matrix
from jaxface.models.morphable import MorphableModel, random_coefficients, vertices
from jaxface.render.pipeline import FaceParams, render
from jaxface.render.shading import sh_ambient, sh_directional

Array = jax.Array

__all__ = ["SyntheticFace", "evaluate_fits", "generate"]

EYE_ALBEDO = (0.8, 0.78, 0.76)
MOUTH_ALBEDO = (0.55, 0.28, 0.28)


@pytree_dataclass
class SyntheticFace:
    """One Generate & Render sample (batched with a leading axis under ``vmap``).

    Attributes:
      image: (H, W, 3) float32 in [0, 1].
      mask: (H, W) head coverage.
      identity: (Ks,) raw identity coefficients; expression: (Ke,).
      rotation: (3, 3) model -> camera; translation: (3,) mm.
      camera: PerspectiveCamera (fx = fy = max(H, W), centred).
      sh: (9, 3) SH light (camera frame).
      albedo_coefficients: (K,) of :func:`jaxface.fit.albedo.albedo_model` on the face region.
      albedo: (V, 3) per-vertex albedo of the whole model.
      landmarks2d: (68, 2) projected iBUG landmarks (pixels).
      vertices: (V, 3) ground-truth model-frame vertices (mm).
    """

    image: Any
    mask: Any
    identity: Any
    expression: Any
    rotation: Any
    translation: Any
    camera: Any
    sh: Any
    albedo_coefficients: Any
    albedo: Any
    landmarks2d: Any
    vertices: Any


def _whole_albedo(model: MorphableModel, face_albedo: Array, face_ids: np.ndarray,
                  tone: Array) -> Array:
    """(V, 3): the face region's albedo, ``tone`` on the rest of the skin, eyes and mouth."""
    alb = jnp.broadcast_to(tone, (model.n_vertices, 3))
    for name, col in (("eyes", EYE_ALBEDO), ("mouth", MOUTH_ALBEDO)):
        if name in model.regions:
            m = jnp.asarray(np.asarray(model.regions[name], bool))[:, None]
            alb = jnp.where(m, jnp.asarray(col, jnp.float32), alb)
    return alb.at[jnp.asarray(face_ids)].set(face_albedo)


def generate(model: MorphableModel, key: Array, image_size: tuple[int, int] = (224, 224), *,
             identity_scale: float = 1.0, expression_scale: float = 0.6,
             max_angles_deg: tuple[float, float, float] = (12.0, 30.0, 8.0),
             albedo_scale: float = 1.0, face_fraction: float = 0.55, noise: float = 0.005,
             n_harmonics: int = 16, region: str = "face", mode: str = "antialias"
             ) -> SyntheticFace:
    """Draw and render one random face.

    Args:
      model: morphable model with an ``"ibug68"`` landmark set (host arrays).
      key: jax PRNG key (the sample is a deterministic function of it).
      image_size: (H, W), static.
      identity_scale, expression_scale: prior scales of the coefficients.
      max_angles_deg: (pitch, yaw, roll) drawn uniformly in +- these.
      albedo_scale: scale of the albedo coefficients (times their prior std).
      face_fraction: face region width / image width (sets the distance).
      noise: std of the Gaussian pixel noise.
      n_harmonics: harmonics of the albedo model; region: model region carrying it.
      mode: render mode (``"antialias"``, or ``"hard"``: cheaper to compile).

    Returns:
      SyntheticFace.
    """
    from jaxface.fit.photometric import face_submodel

    h, w = (int(s) for s in image_size)
    if min(h, w) < 16:
        raise ValueError(f"image_size must be at least 16 x 16, got {image_size}")
    if "ibug68" not in model.landmarks:
        raise ValueError(f"model {model.name!r} has no ibug68 landmark set")
    sub, face_ids = face_submodel(model, region)
    am = albedo_model(sub, n_harmonics)
    ks = jax.random.split(key, 9)
    ident, expr = random_coefficients(model, ks[0], 1.0)
    ident = ident * identity_scale
    if expr is not None:
        expr = jnp.clip(expr * expression_scale, 0.0, 1.0) if (
            model.expression_kind == "blendshape") else expr * expression_scale
    angles = jnp.deg2rad(jnp.asarray(max_angles_deg, jnp.float32)) * jax.random.uniform(
        ks[1], (3,), minval=-1.0, maxval=1.0)
    rot = euler_to_matrix(angles) @ jnp.asarray(MODEL_TO_CAMERA)
    f = float(max(h, w))
    cam = PerspectiveCamera(fx=jnp.float32(f), fy=jnp.float32(f), cx=jnp.float32(w / 2.0),
                            cy=jnp.float32(h / 2.0))
    verts = vertices(model, ident, expr)
    face = verts[jnp.asarray(face_ids)]
    width = jnp.max(face[:, 0]) - jnp.min(face[:, 0])
    depth = f * width / (face_fraction * w) * (1.0 + 0.1 * jax.random.uniform(ks[2], (),
                                                                               minval=-1, maxval=1))
    centre = jnp.mean(face, 0) @ rot.T
    shift = 0.06 * jax.random.uniform(ks[3], (2,), minval=-1.0, maxval=1.0) * jnp.asarray(
        [w, h], jnp.float32) * depth / f
    trans = jnp.stack([shift[0], shift[1], depth]) - centre

    coeffs = albedo_scale * jnp.asarray(am.std) * jax.random.normal(ks[4], (am.n_coefficients,))
    face_alb = jnp.clip(albedo_vertices(am, coeffs), 0.02, 1.0)
    tone = jnp.mean(face_alb, 0)
    alb = _whole_albedo(model, face_alb, face_ids, tone)

    amb = jax.random.uniform(ks[5], (), minval=0.55, maxval=0.85)
    tint = 1.0 + 0.08 * jax.random.uniform(ks[6], (3,), minval=-1.0, maxval=1.0)
    d = jax.random.normal(ks[7], (3,)) * jnp.asarray([0.6, 0.5, 0.2])
    d = d.at[2].set(-1.0)  # from the viewer's side
    inten = jax.random.uniform(ks[8], (), minval=0.15, maxval=0.5)
    sh = amb * sh_ambient(tint) + sh_directional(d, inten * tint)

    kb = jax.random.split(ks[8], 3)
    c0 = jax.random.uniform(kb[0], (3,), minval=0.1, maxval=0.9)
    grad = jax.random.uniform(kb[1], (2, 3), minval=-0.3, maxval=0.3)
    yy, xx = jnp.meshgrid(jnp.linspace(-0.5, 0.5, h), jnp.linspace(-0.5, 0.5, w), indexing="ij")
    bg = jnp.clip(c0 + xx[..., None] * grad[0] + yy[..., None] * grad[1], 0.0, 1.0)

    out = render(model, FaceParams(ident, expr, rot, trans), cam, (h, w), sh=sh, albedo=alb,
                 background=bg, mode=mode, landmark_set="ibug68")
    img = jnp.clip(out.rgb + noise * jax.random.normal(kb[2], out.rgb.shape), 0.0, 1.0)
    return SyntheticFace(image=img, mask=out.mask, identity=ident,
                         expression=expr if expr is not None else jnp.zeros((0,)), rotation=rot,
                         translation=trans, camera=cam, sh=sh, albedo_coefficients=coeffs,
                         albedo=alb, landmarks2d=out.landmarks2d, vertices=verts)


def evaluate_fits(model: MorphableModel, seeds: Any, image_size: tuple[int, int] = (224, 224),
                  *, landmark_noise_px: float = 1.5, photometric_config: Any = None,
                  region: str = "narrow_face", **generate_kwargs: Any) -> dict[str, Any]:
    """Fit synthetic renders back, landmark-only and photometric; vertex errors in mm.

    For each seed: :func:`generate` a face, fit :func:`~jaxface.fit.fit_landmarks` to its
    landmarks plus N(0, ``landmark_noise_px``^2) noise (deterministic in the seed), then
    :func:`~jaxface.fit.fit_photometric` from that fit with the same landmarks. Errors:
    similarity-aligned (Umeyama) per-vertex distance between fitted and true model-frame
    vertices over ``model.regions[region]``.

    Returns:
      dict with ``seeds``, per-sample ``median_mm_landmark`` / ``median_mm_photometric`` /
      ``mean_mm_landmark`` / ``mean_mm_photometric`` / ``photometric_error`` (lists) and their
      medians over samples ``median_vertex_error_mm_landmark`` /
      ``median_vertex_error_mm_photometric`` and ``relative_improvement``.
    """
    from jaxface.fit import fit_landmarks, fit_photometric

    try:
        from jaxface.eval.metrics import aligned_vertex_error
    except ImportError:  # pragma: no cover - metrics ships with the package
        aligned_vertex_error = None

    mask = (np.asarray(model.regions[region], bool) if region in model.regions
            else np.ones(model.n_vertices, bool))
    rows: dict[str, list[float]] = {k: [] for k in (
        "median_mm_landmark", "median_mm_photometric", "mean_mm_landmark",
        "mean_mm_photometric", "photometric_error")}

    def err(pred: Array, gt: Array) -> tuple[float, float]:
        if aligned_vertex_error is not None:
            e = aligned_vertex_error(pred, gt, mask)
            return float(e.median), float(e.mean)
        from jaxface.geometry import umeyama

        tf = umeyama(pred, gt, weights=jnp.asarray(mask, jnp.float32))
        d = np.linalg.norm(np.asarray(tf.apply(pred) - gt), axis=-1)[mask]
        return float(np.median(d)), float(np.mean(d))

    gen = jax.jit(lambda k: generate(model, k, image_size, **generate_kwargs))
    for seed in seeds:
        key = jax.random.PRNGKey(int(seed))
        s = gen(key)
        noisy = s.landmarks2d + landmark_noise_px * jax.random.normal(
            jax.random.fold_in(key, 1), s.landmarks2d.shape)
        lm = fit_landmarks(model, noisy, image_size)
        ph = fit_photometric(model, s.image, init=lm, landmarks=noisy,
                             config=photometric_config)
        gt = s.vertices
        v_lm = vertices(model, lm.identity, lm.expression)
        v_ph = vertices(model, ph.identity, ph.expression)
        m_lm, a_lm = err(v_lm, gt)
        m_ph, a_ph = err(v_ph, gt)
        rows["median_mm_landmark"].append(m_lm)
        rows["mean_mm_landmark"].append(a_lm)
        rows["median_mm_photometric"].append(m_ph)
        rows["mean_mm_photometric"].append(a_ph)
        rows["photometric_error"].append(float(ph.photometric_error))
    med_lm = float(np.median(rows["median_mm_landmark"]))
    med_ph = float(np.median(rows["median_mm_photometric"]))
    return {"seeds": [int(s) for s in seeds], **rows,
            "median_vertex_error_mm_landmark": med_lm,
            "median_vertex_error_mm_photometric": med_ph,
            "relative_improvement": (med_lm - med_ph) / max(med_lm, 1e-12),
            "landmark_noise_px": float(landmark_noise_px),
            "image_size": [int(image_size[0]), int(image_size[1])]}
