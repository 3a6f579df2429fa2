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

:func:`fit_free_albedo` is the optional last stage of a photometric fit: a free per-vertex
albedo that explains the rendered pixels, with a cotangent-Laplacian smoothness prior towards
the low-dimensional fit; :func:`refine_free_albedo` is the same from per-vertex observations.
Both solve their sparse normal equations by conjugate gradients in JAX (jit/vmap).
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
from jaxface.fit._precision import full_precision
from jaxface.mesh.laplacian import (
    cotangent_laplacian,
    cotangent_weights,
    laplacian_apply,
    mass_matrix,
    vertex_areas,
)
from jaxface.models.morphable import MorphableModel
from jaxface.render.pipeline import SKIN_TONE

Array = jax.Array

__all__ = [
    "AlbedoModel",
    "albedo_model",
    "albedo_vertices",
    "manifold_harmonics",
    "fit_free_albedo",
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


def _unit_mass(verts: Array, tri: Array) -> Array:
    """(V,) lumped vertex areas normalised to mean 1."""
    m = vertex_areas(verts, tri)
    return m / jnp.maximum(jnp.mean(m), 1e-30)


def _free_albedo_cg(data_apply: Any, data_rhs: Array, data_diag: Array, verts: Array,
                    triangles: Any, prior: Array, smoothness: Any, prior_weight: Any,
                    iterations: int, mass: Array | None = None) -> Array:
    """Solve ``(D + s L + lam M) a = b_D + s L p + lam M p`` by Jacobi-preconditioned conjugate
    gradients, the three colour channels at once (each with its own step sizes).

    ``D`` is the data term's (V, V) symmetric PSD operator (``data_apply``: (V, 3) -> (V, 3),
    diagonal ``data_diag`` (V,)), ``L`` the cotangent Laplacian, ``M`` the lumped vertex areas
    normalised to mean 1 and ``p`` the prior; the system is SPD for ``lam > 0``. Starts from
    the prior; a fixed number of iterations (``lax.fori_loop``: jit/vmap-friendly). ``mass``:
    ``M``'s diagonal when the caller has it already (:func:`_unit_mass`).
    """
    tri = jnp.asarray(triangles, jnp.int32)
    ei, ej, w = cotangent_weights(verts, tri)
    m = _unit_mass(verts, tri) if mass is None else mass
    lap_diag = jax.ops.segment_sum(w, ei, num_segments=verts.shape[0]) \
        + jax.ops.segment_sum(w, ej, num_segments=verts.shape[0])

    def apply(a):
        return data_apply(a) + smoothness * laplacian_apply(ei, ej, w, a) \
            + prior_weight * m[:, None] * a

    b = (data_rhs + smoothness * laplacian_apply(ei, ej, w, prior)
         + prior_weight * m[:, None] * prior)
    precond = 1.0 / jnp.maximum(data_diag + smoothness * jnp.maximum(lap_diag, 0.0)
                                + prior_weight * m, 1e-12)[:, None]
    x = prior
    r = b - apply(x)
    z = precond * r
    d = z
    rz = jnp.sum(r * z, 0)

    def body(_, carry):
        x, r, d, rz = carry
        ad = apply(d)
        dad = jnp.sum(d * ad, 0)
        alpha = jnp.where(dad > 0, rz / jnp.where(dad > 0, dad, 1.0), 0.0)
        x = x + alpha * d
        r = r - alpha * ad
        z = precond * r
        rz_new = jnp.sum(r * z, 0)
        beta = jnp.where(rz > 0, rz_new / jnp.where(rz > 0, rz, 1.0), 0.0)
        return x, r, z + beta * d, rz_new

    x, _, _, _ = jax.lax.fori_loop(0, iterations, body, (x, r, d, rz))
    return x


@full_precision
def refine_free_albedo(verts: Any, triangles: Any, observed: Any, weights: Any, prior: Any,
                       smoothness: Any = 1.0, prior_weight: Any = 1e-2,
                       iterations: int = 300) -> Array:
    """Free per-vertex albedo from per-vertex observations, with a Laplacian smoothness prior.

    Minimises, per colour channel,
    ``sum_v w_v m_v (a_v - o_v)^2 + smoothness * (a - p)^T L (a - p) + prior_weight *
    sum_v m_v (a_v - p_v)^2`` with ``L`` the cotangent Laplacian and ``m`` the vertex areas
    normalised to mean 1: the observed albedo where it is seen, smoothed, pulled to the prior
    (e.g. the fitted low-dimensional albedo) where it is not. Conjugate gradients in JAX
    (jit/vmap; ``iterations`` static).

    Args:
      verts: (V, 3) mesh (mm); triangles: (T, 3).
      observed: (V, 3) observed albedo (e.g. image colour / shading at visible vertices); NaN
        rows are unobserved.
      weights: (V,) confidence >= 0 (0 where unseen).
      prior: (V, 3) fallback albedo.
      smoothness, prior_weight: the energy's weights (> 0).

    Returns:
      (V, 3) float32 albedo clipped to [0, 1].
    """
    v = jnp.asarray(verts, jnp.float32)
    n = v.shape[0]
    o = jnp.asarray(observed, jnp.float32)
    p = jnp.asarray(prior, jnp.float32)
    w = jnp.asarray(weights, jnp.float32)
    if o.shape != (n, 3) or p.shape != (n, 3) or w.shape != (n,):
        raise ValueError(f"observed and prior must be ({n}, 3) and weights ({n},), got "
                         f"{o.shape}, {p.shape}, {w.shape}")
    _check_positive(smoothness, prior_weight)
    tri = jnp.asarray(triangles, jnp.int32)
    m = _unit_mass(v, tri)
    seen = jnp.all(jnp.isfinite(o), axis=1)
    wm = jnp.where(seen, jnp.maximum(w, 0.0), 0.0) * m
    o = jnp.where(seen[:, None], o, 0.0)
    out = _free_albedo_cg(lambda a: wm[:, None] * a, wm[:, None] * o, wm, v, tri, p,
                          smoothness, prior_weight, iterations, mass=m)
    return jnp.clip(out, 0.0, 1.0)


@full_precision
def fit_free_albedo(verts: Any, triangles: Any, triangle_id: Any, barycentric: Any,
                    shading: Any, target: Any, weights: Any, prior: Any,
                    smoothness: Any = 0.3, prior_weight: Any = 1e-2,
                    iterations: int = 200) -> Array:
    """Free per-vertex albedo that best explains the pixels of a hard render (the last stage of
    a photometric fit: detail the low-dimensional albedo cannot express).

    Minimises, per colour channel,
    ``c sum_p w_p (s_p * sum_k b_pk a_{t_pk} - I_p)^2 + smoothness * (a - p)^T L (a - p)
    + prior_weight * sum_v m_v (a_v - p_v)^2``: pixel ``p`` of triangle ``t_p`` with
    barycentrics ``b_p`` and shading ``s_p`` (the SH irradiance) should show the photo's colour
    ``I_p``; ``L`` is the cotangent Laplacian, ``m`` the vertex areas normalised to mean 1 and
    ``c`` scales the data term so that its mean per-vertex weight over the observed vertices is
    1 (the weights then mean the same at any resolution). Vertices no pixel sees keep the
    prior, smoothly joined. Conjugate gradients in JAX (jit/vmap; ``iterations`` static).

    Args:
      verts: (V, 3) mesh; triangles: (T, 3).
      triangle_id: (H, W) int32 visible triangle per pixel (-1 background), barycentric:
        (H, W, 3), as from :func:`jaxface.render.rasterize`.
      shading: (H, W, 3) irradiance per pixel (rendered colour = albedo * shading).
      target: (H, W, 3) photo.
      weights: (H, W) pixel confidence >= 0 (e.g. robust weights; background is ignored).
      prior: (V, 3) albedo where nothing is seen (e.g. the fitted low-dimensional albedo).
      smoothness, prior_weight: the energy's weights (> 0).

    Returns:
      (V, 3) float32 albedo clipped to [0, 1].
    """
    v = jnp.asarray(verts, jnp.float32)
    n = v.shape[0]
    tri = jnp.asarray(triangles, jnp.int32)
    tid = jnp.asarray(triangle_id, jnp.int32).reshape(-1)
    bary = jnp.asarray(barycentric, jnp.float32).reshape(-1, 3)
    shade = jnp.asarray(shading, jnp.float32).reshape(-1, 3)
    tgt = jnp.asarray(target, jnp.float32).reshape(-1, 3)
    p = jnp.asarray(prior, jnp.float32)
    if p.shape != (n, 3):
        raise ValueError(f"prior must be ({n}, 3), got {p.shape}")
    if not (tid.shape[0] == bary.shape[0] == shade.shape[0] == tgt.shape[0]):
        raise ValueError("triangle_id, barycentric, shading and target must cover the same "
                         f"pixels, got {tid.shape[0]}, {bary.shape[0]}, {shade.shape[0]}, "
                         f"{tgt.shape[0]}")
    _check_positive(smoothness, prior_weight)
    covered = tid >= 0
    w = jnp.where(covered & jnp.all(jnp.isfinite(tgt), -1),
                  jnp.maximum(jnp.asarray(weights, jnp.float32).reshape(-1), 0.0), 0.0)
    ids = tri[jnp.where(covered, tid, 0)]  # (P, 3)
    tgt = jnp.where(jnp.isfinite(tgt), tgt, 0.0)
    # the data term's diagonal, per vertex: sum_p w_p b_pk^2 s_p^2 (mean over channels)
    s2 = jnp.mean(jnp.square(shade), -1)
    diag = jax.ops.segment_sum(((w * s2)[:, None] * jnp.square(bary)).reshape(-1),
                               ids.reshape(-1), num_segments=n)
    seen = diag > 1e-12 * jnp.max(diag)
    c = jnp.sum(seen) / jnp.maximum(jnp.sum(jnp.where(seen, diag, 0.0)), 1e-30)

    def to_pixels(a):  # (V, 3) -> (P, 3): interpolated albedo times shading
        return jnp.einsum("pk,pkc->pc", bary, a[ids]) * shade

    def to_vertices(q):  # (P, 3) -> (V, 3): the adjoint of to_pixels
        contrib = bary[:, :, None] * (q * shade)[:, None, :]  # (P, 3, 3)
        return jax.ops.segment_sum(contrib.reshape(-1, 3), ids.reshape(-1), num_segments=n)

    def data_apply(a):
        return c * to_vertices(w[:, None] * to_pixels(a))

    out = _free_albedo_cg(data_apply, c * to_vertices(w[:, None] * tgt), c * diag, v, tri, p,
                          smoothness, prior_weight, iterations)
    return jnp.clip(out, 0.0, 1.0)


def _check_positive(smoothness: Any, prior_weight: Any) -> None:
    try:
        bad = float(smoothness) <= 0 or float(prior_weight) <= 0
    except (TypeError, jax.errors.ConcretizationTypeError):  # traced: checked by the caller
        return
    if bad:
        raise ValueError("smoothness and prior_weight must be positive")
