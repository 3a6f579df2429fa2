"""Albedo models for photometric fitting (survey §3.1, eq 4: the ``T(beta)`` of the image model).

Two kinds, one representation (:class:`AlbedoModel`: ``albedo = mean + sum_k c_k basis_k``):

* ``"model"``: the morphable model's own statistical albedo (BFM-type models carry
  ``albedo_mean`` / ``albedo_basis`` / ``albedo_std``).
* ``"harmonics"``: for models without one (the embedded ICT-derived model), a low-dimensional
  smooth albedo: the first ``k`` *manifold harmonics* of the template, i.e. the generalised
  eigenvectors ``L phi = lambda M phi`` of the cotangent Laplacian ``L`` with the lumped mass
  matrix ``M`` (the smoothest functions on the surface; ``phi_0`` is constant), around a
  uniform skin tone. Each harmonic is used once per colour channel, so ``3 k`` coefficients.
  The harmonics are scaled to unit area-weighted RMS and the coefficient prior std falls with
  the eigenvalue, ``std_k = base * sqrt(lambda_1 / max(lambda_k, lambda_1))``, so rough
  patterns cost more than smooth ones.

The eigen-decomposition runs once per template on the host (``scipy.sparse.linalg.eigsh``,
shift-invert around a small negative shift) and is cached on the template's bytes.

:func:`refine_free_albedo` is the optional last stage: a free per-vertex albedo with a
Laplacian smoothness prior, solved on the host by a sparse linear system.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from jaxface._pytree import pytree_dataclass, static_field
from jaxface.mesh.laplacian import cotangent_laplacian, mass_matrix
from jaxface.models.morphable import MorphableModel
from jaxface.render.pipeline import SKIN_TONE

Array = jax.Array

__all__ = [
    "AlbedoModel",
    "albedo_model",
    "albedo_vertices",
    "manifold_harmonics",
    "refine_free_albedo",
]


@pytree_dataclass
class AlbedoModel:
    """A linear per-vertex albedo model ``mean + einsum("k,kvc->vc", coeffs, basis)``.

    Attributes:
      mean: (V, 3) float32 linear RGB.
      basis: (K, V, 3) float32.
      std: (K,) float32 prior standard deviation of each coefficient.
      kind: ``"model"`` or ``"harmonics"`` (static).
    """

    mean: Any
    basis: Any
    std: Any
    kind: str = static_field(default="harmonics")

    @property
    def n_coefficients(self) -> int:
        return int(np.shape(self.basis)[0])

    @property
    def n_vertices(self) -> int:
        return int(np.shape(self.mean)[0])


def albedo_vertices(albedo: AlbedoModel, coeffs: Any = None) -> Array:
    """(V, 3) per-vertex albedo for (K,) coefficients (the mean when ``coeffs`` is None)."""
    mean = jnp.asarray(albedo.mean, jnp.float32)
    if coeffs is None:
        return mean
    c = jnp.asarray(coeffs, jnp.float32)
    if c.shape != (albedo.n_coefficients,):
        raise ValueError(f"albedo coefficients must have shape ({albedo.n_coefficients},), "
                         f"got {tuple(c.shape)}")
    return mean + jnp.einsum("k,kvc->vc", c, jnp.asarray(albedo.basis),
                             precision=jax.lax.Precision.HIGHEST)


def _digest(verts: np.ndarray, triangles: np.ndarray) -> str:
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(verts, np.float32).tobytes())
    h.update(np.ascontiguousarray(triangles, np.int64).tobytes())
    return h.hexdigest()


_HARMONICS: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}


def manifold_harmonics(verts: Any, triangles: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` manifold harmonics of a triangle mesh (host side, cached).

    Solves ``L phi = lambda M phi`` (cotangent Laplacian, barycentric lumped mass) for the ``k``
    smallest eigenvalues by shift-invert Lanczos.

    Args:
      verts: (V, 3) vertices; triangles: (T, 3) int.
      k: number of harmonics, 1 <= k < V.

    Returns:
      ``(eigenvalues (k,), harmonics (V, k))`` float64, ascending, M-orthonormal
      (``phi^T M phi = I``), sign fixed so that each harmonic's largest-magnitude entry is
      positive. Components (a mesh with several parts) each contribute a constant harmonic.
    """
    v = np.asarray(verts, np.float64)
    t = np.asarray(triangles, np.int64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"verts must have shape (V, 3), got {v.shape}")
    if not 1 <= int(k) < v.shape[0]:
        raise ValueError(f"k must lie in [1, {v.shape[0]}), got {k}")
    key = (_digest(v, t), int(k))
    if key not in _HARMONICS:
        lap = cotangent_laplacian(v, t)
        mass = mass_matrix(v, t)
        # vertices in no triangle have zero mass: give them a tiny one so M stays definite
        d = mass.diagonal().copy()
        d[d <= 0] = max(float(d[d > 0].min()) * 1e-3, 1e-12) if np.any(d > 0) else 1.0
        mass = sp.diags(d).tocsc()
        sigma = -1e-3 * float(np.mean(np.abs(lap.diagonal()) / d))
        vals, vecs = spla.eigsh(lap.tocsc(), k=int(k), M=mass, sigma=sigma, which="LM")
        order = np.argsort(vals)
        vals, vecs = np.maximum(vals[order], 0.0), vecs[:, order]
        sign = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(vecs.shape[1])])
        vecs = vecs * np.where(sign == 0, 1.0, sign)
        vals.setflags(write=False)
        vecs.setflags(write=False)
        _HARMONICS[key] = (vals, vecs)
    return _HARMONICS[key]


@functools.lru_cache(maxsize=16)
def _harmonic_model(digest: str, k: int, base_std: float, verts_bytes: bytes,
                    tris_bytes: bytes, n_vertices: int) -> AlbedoModel:
    v = np.frombuffer(verts_bytes, np.float32).reshape(n_vertices, 3)
    t = np.frombuffer(tris_bytes, np.int64).reshape(-1, 3)
    vals, phi = manifold_harmonics(v, t, k)
    area = float(mass_matrix(v, t).diagonal().sum())
    phi = phi * np.sqrt(area)  # unit area-weighted RMS
    lam1 = vals[1] if k > 1 and vals[1] > 0 else 1.0
    std = base_std * np.sqrt(lam1 / np.maximum(vals, lam1))
    basis = np.zeros((3 * k, n_vertices, 3), np.float32)
    for c in range(3):
        basis[c::3, :, c] = phi.T
    mean = np.broadcast_to(np.asarray(SKIN_TONE, np.float32), (n_vertices, 3)).copy()
    return AlbedoModel(mean=mean, basis=basis, std=np.repeat(std, 3).astype(np.float32),
                       kind="harmonics")


def albedo_model(model: MorphableModel, n_harmonics: int = 16,
                 base_std: float = 0.06) -> AlbedoModel:
    """The albedo model to fit with ``model``.

    Args:
      model: a morphable model (host arrays; not traced).
      n_harmonics: ``k`` manifold harmonics when the model has no albedo basis (3 k
        coefficients: one per harmonic and colour channel).
      base_std: prior std (albedo units) of the smoothest harmonics' coefficients.

    Returns:
      :class:`AlbedoModel` over the model's V vertices: the model's statistical albedo
      (``kind="model"``) when it has one, else the harmonics around ``SKIN_TONE`` (cached per
      template).
    """
    if model.albedo_mean is not None and model.albedo_basis is not None:
        std = (np.ones((model.n_albedo,), np.float32) if model.albedo_std is None
               else np.asarray(model.albedo_std, np.float32))
        return AlbedoModel(mean=np.asarray(model.albedo_mean, np.float32),
                           basis=np.asarray(model.albedo_basis, np.float32), std=std,
                           kind="model")
    v = np.ascontiguousarray(np.asarray(model.mean, np.float32))
    t = np.ascontiguousarray(np.asarray(model.triangles, np.int64))
    return _harmonic_model(_digest(v, t), int(n_harmonics), float(base_std), v.tobytes(),
                           t.tobytes(), v.shape[0])


def refine_free_albedo(verts: Any, triangles: Any, observed: Any, weights: Any, prior: Any,
                       smoothness: float = 1.0, prior_weight: float = 1e-2) -> np.ndarray:
    """Free per-vertex albedo with a Laplacian smoothness prior (host side, sparse solve).

    Minimises, per colour channel,
    ``sum_v w_v m_v (a_v - o_v)^2 + smoothness * (a - p)^T L (a - p) + prior_weight *
    sum_v m_v (a_v - p_v)^2`` with ``L`` the cotangent Laplacian and ``m`` the vertex areas
    normalised to mean 1: the observed albedo where it is seen, smoothed, pulled to the prior
    (e.g. the fitted low-dimensional albedo) where it is not.

    Args:
      verts: (V, 3) mesh (mm); triangles: (T, 3).
      observed: (V, 3) observed albedo (e.g. image colour / shading at visible vertices).
      weights: (V,) confidence >= 0 (0 where unseen).
      prior: (V, 3) fallback albedo.
      smoothness, prior_weight: the energy's weights (> 0).

    Returns:
      (V, 3) float32 albedo clipped to [0, 1].
    """
    v = np.asarray(verts, np.float64)
    o = np.asarray(observed, np.float64)
    p = np.asarray(prior, np.float64)
    w = np.asarray(weights, np.float64).reshape(-1)
    n = v.shape[0]
    if o.shape != (n, 3) or p.shape != (n, 3) or w.shape != (n,):
        raise ValueError(f"observed and prior must be ({n}, 3) and weights ({n},), got "
                         f"{o.shape}, {p.shape}, {w.shape}")
    if smoothness <= 0 or prior_weight <= 0:
        raise ValueError("smoothness and prior_weight must be positive")
    lap = cotangent_laplacian(v, triangles)
    m = mass_matrix(v, triangles).diagonal()
    m = m / max(float(m.mean()), 1e-12)
    w = np.where(np.isfinite(o).all(1), np.maximum(w, 0.0), 0.0)
    o = np.where(np.isfinite(o), o, 0.0)
    data = sp.diags(w * m + prior_weight * m)
    system = (data + smoothness * lap).tocsc()
    solve = spla.factorized(system)
    out = np.empty((n, 3))
    for c in range(3):
        rhs = w * m * o[:, c] + prior_weight * m * p[:, c] + smoothness * (lap @ p[:, c])
        out[:, c] = solve(rhs)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
