"""Training losses (survey §5.3), each a pure function of arrays for ONE sample (``vmap`` them).

Parameter space (§5.3.1):
  * :func:`parameter_loss` — eq 15, ``sum_i |theta_i - theta_i^gt|^p`` (L1 or L2), or with a
    diagonal weight vector ``w``, eq 16, ``(theta - theta^gt)^T diag(w) (theta - theta^gt)``.
  * :func:`vertex_distance_weights` — the weights of 3DDFA's "optimised weighted parameter
    distance cost" (Zhu et al.; survey eq 16 and the text after it): ``w_i`` is how far the
    face's points move when only parameter ``i`` takes its predicted value (gradient-stopped,
    normalised to sum 1), so parameters that matter more to the geometry weigh more.
3D space (§5.3.2):
  * :func:`vertex_loss` — mean Euclidean distance of corresponding points (mm).
Self-supervision (§5.3.3):
  * :func:`landmark_loss` — mean reprojection distance of 2D landmarks, divided by a length
    (the crop size), over valid landmarks;
  * :func:`photometric_loss` — mean per-pixel colour distance ``||I - R||_2`` over a mask
    (Deep3DFaceRecon's robust L2,1 form);
  * :func:`coefficient_regularizer` — squared standardised coefficients (Gaussian priors).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["coefficient_regularizer", "landmark_loss", "parameter_loss", "photometric_loss",
           "vertex_distance_weights", "vertex_loss"]


def parameter_loss(pred: Any, target: Any, weights: Any = None, *, p: int = 2) -> Array:
    """Survey eq 15 (``weights`` None) / eq 16 (diagonal ``weights``) for one sample.

    Args:
      pred, target: (P,) parameter vectors (e.g. :func:`jaxface.nets.to_vector`).
      weights: (P,) non-negative weights (0 leaves a parameter out), or None.
      p: 1 or 2.
    """
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p}")
    d = jnp.asarray(pred) - jnp.asarray(target)
    e = jnp.abs(d) if p == 1 else d * d
    if weights is not None:
        e = e * jnp.asarray(weights)
    return jnp.sum(e)


def vertex_distance_weights(points_of: Callable[[Array], Array], pred: Any, target: Any,
                            mask: Any = None) -> Array:
    """Per-parameter weights of the vertex-weighted parameter distance (3DDFA's OWPDC).

    ``w_i = || points_of(theta~[i]) - points_of(target) ||``, where ``theta~[i]`` is ``target``
    with its i-th entry replaced by ``pred``'s; normalised to sum to 1 and gradient-stopped
    (the weights rank parameters; they are not optimised through).

    Args:
      points_of: (P,) vector -> (N, D) points (e.g. camera-frame vertices of a vertex subset).
      pred, target: (P,) vectors.
      mask: (P,) 0/1, parameters to weigh (others get 0), or None for all.

    Returns:
      (P,) weights.
    """
    pred = jax.lax.stop_gradient(jnp.asarray(pred))
    target = jnp.asarray(target)
    base = points_of(target)
    n = target.shape[0]

    def moved(i: Array) -> Array:
        theta = target.at[i].set(pred[i])
        return jnp.sqrt(jnp.sum(jnp.square(points_of(theta) - base)) + 1e-12)

    w = jax.vmap(moved)(jnp.arange(n))
    if mask is not None:
        w = w * jnp.asarray(mask)
    return jax.lax.stop_gradient(w / jnp.maximum(jnp.sum(w), 1e-12))


def vertex_loss(pred_points: Any, target_points: Any) -> Array:
    """Mean Euclidean distance between (N, 3) corresponding points (model units, mm)."""
    d = jnp.asarray(pred_points) - jnp.asarray(target_points)
    return jnp.mean(jnp.sqrt(jnp.sum(d * d, -1) + 1e-12))


def landmark_loss(pred: Any, target: Any, valid: Any = None, scale: Any = 1.0) -> Array:
    """Mean distance between (L, 2) landmarks over ``valid`` ones, divided by ``scale``.

    ``valid``: (L,) 0/1 or bool (None: every landmark that is finite in ``target``).
    """
    target = jnp.asarray(target)
    ok = jnp.all(jnp.isfinite(target), -1)
    if valid is not None:
        ok = ok & (jnp.asarray(valid) > 0)
    t = jnp.where(ok[:, None], target, 0.0)
    d = jnp.sqrt(jnp.sum(jnp.square(jnp.asarray(pred) - t), -1) + 1e-12)
    return jnp.sum(jnp.where(ok, d, 0.0)) / jnp.maximum(jnp.sum(ok), 1) / scale


def photometric_loss(rendered: Any, image: Any, mask: Any) -> Array:
    """Mean over ``mask`` of the per-pixel colour distance ``||rendered - image||_2``.

    Args:
      rendered, image: (H, W, 3); mask: (H, W) weights in [0, 1] (e.g. rendered coverage
        times a skin mask). Zero when the mask is empty.
    """
    d = jnp.sqrt(jnp.sum(jnp.square(jnp.asarray(rendered) - jnp.asarray(image)), -1) + 1e-8)
    m = jnp.asarray(mask)
    return jnp.sum(d * m) / jnp.maximum(jnp.sum(m), 1.0)


def coefficient_regularizer(*standardized: Any, weights: Any = None) -> Array:
    """Sum over the given (K_j,) standardised coefficient vectors of ``w_j * mean(c^2)``."""
    ws = [1.0] * len(standardized) if weights is None else list(weights)
    if len(ws) != len(standardized):
        raise ValueError("one weight per coefficient vector")
    total = jnp.float32(0.0)
    for w, c in zip(ws, standardized, strict=True):
        c = jnp.asarray(c)
        if c.size:
            total = total + w * jnp.mean(c * c)
    return total
