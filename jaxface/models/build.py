"""Building morphable models from registered meshes (survey §2.1, eqs 1-3).

* :func:`generalized_procrustes` aligns N meshes in dense correspondence (similarity or rigid,
  Umeyama per mesh against the running mean);
* :func:`build_pca_model` centres the aligned shape vectors, takes their SVD and keeps the
  smallest number of modes whose cumulative explained variance reaches ``variance`` (eq. 1),
  with ``sigma_i = s_i / sqrt(N - 1)`` the prior standard deviation of mode i (eq. 3) and an
  orthonormal basis;
* :func:`build_expression_model` makes an expression basis from neutral/expression pairs (a
  PCA of the offsets, or averaged blendshapes), :func:`add_expression` attaches it to a model;
* :func:`build_bilinear_model` computes a FaceWarehouse-style bilinear model by HOSVD (Tucker)
  of an identity x expression x 3V data tensor.

All of this is host-side construction (NumPy float64 for the decompositions; the Procrustes
step uses :func:`jaxface.geometry.umeyama` under ``jax.vmap``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxface._pytree import replace
from jaxface.geometry import Similarity, umeyama
from jaxface.models.facewarehouse import BilinearModel, make_bilinear_model
from jaxface.models.morphable import MorphableModel, make_model, validate


def _meshes(meshes: Any, what: str = "meshes", min_n: int = 2) -> np.ndarray:
    m = np.asarray(meshes, np.float64)
    if m.ndim != 3 or m.shape[2] != 3 or m.shape[1] < 3:
        raise ValueError(f"{what} must be (N, V, 3) with V >= 3, got {m.shape}")
    if m.shape[0] < min_n:
        raise ValueError(f"{what}: need at least {min_n} meshes, got {m.shape[0]}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{what} contain NaN or inf")
    return m


@functools.partial(jax.jit, static_argnames="with_scale")
def _align_all(meshes: jax.Array, ref: jax.Array, with_scale: bool
               ) -> tuple[jax.Array, Similarity]:
    sims = jax.vmap(lambda m: umeyama(m, ref, with_scale=with_scale))(meshes)
    return jax.vmap(lambda s, m: s.apply(m))(sims, meshes), sims


def generalized_procrustes(meshes: Any, with_scale: bool = True, iterations: int = 20,
                           tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray, Similarity]:
    """Generalised Procrustes alignment of meshes in dense correspondence.

    Starting from the first mesh, every mesh is aligned (``umeyama``: rotation, translation and,
    with ``with_scale``, a scale) to the current mean, then the mean is recomputed; this repeats
    until the mean moves by less than ``tol`` (relative RMS) or ``iterations`` is reached. The
    gauge (the common frame, and with ``with_scale`` the overall size) is then fixed by mapping
    the final mean onto the arithmetic mean of the *input* meshes, so already aligned input
    stays (nearly) where it was and units are preserved.

    Args:
      meshes: (N, V, 3) vertex positions, N >= 2.
      with_scale: similarity (True) or rigid (False) alignment.
      iterations: maximum number of alternations.
      tol: convergence threshold on the relative RMS change of the mean.

    Returns:
      (aligned (N, V, 3) float64, mean (V, 3) float64, the per-mesh ``Similarity`` (leaves with
      a leading N axis) mapping each input mesh onto its aligned version).
    """
    m = _meshes(meshes)
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    centred = m - m.mean(axis=1, keepdims=True)
    # work on centred meshes (better conditioned in float32); translations are restored below
    x = jnp.asarray(centred, dtype)
    ref = np.asarray(centred[0])
    for _ in range(int(iterations)):
        aligned, _ = _align_all(x, jnp.asarray(ref, dtype), with_scale)
        new = np.asarray(aligned, np.float64).mean(axis=0)
        new -= new.mean(axis=0)
        if with_scale:  # keep the reference size fixed (the gauge of the scale)
            new *= np.sqrt((ref ** 2).sum() / max((new ** 2).sum(), 1e-300))
        change = np.sqrt(((new - ref) ** 2).mean() / max((ref ** 2).mean(), 1e-300))
        ref = new
        if change < tol:
            break
    # fix the gauge: the final mean goes onto the mean of the inputs
    target = m.mean(axis=0)
    g = umeyama(jnp.asarray(ref, dtype), jnp.asarray(target, dtype), with_scale=with_scale)
    ref_final = np.asarray(g.apply(jnp.asarray(ref, dtype)), np.float64)
    aligned, sims = _align_all(jnp.asarray(m, dtype), jnp.asarray(ref_final, dtype), with_scale)
    aligned = np.asarray(aligned, np.float64)
    return aligned, aligned.mean(axis=0), sims


@dataclasses.dataclass(frozen=True)
class PCAInfo:
    """What :func:`build_pca_model` computed besides the model.

    Attributes:
      explained_variance_ratio: (min(N, 3V),) fraction of the total variance of every mode.
      singular_values: (min(N, 3V),) singular values of the centred data matrix.
      n_components: number of modes kept.
      aligned: (N, V, 3) the (aligned) meshes the PCA was computed on.
    """

    explained_variance_ratio: np.ndarray
    singular_values: np.ndarray
    n_components: int
    aligned: np.ndarray

    @property
    def cumulative(self) -> np.ndarray:
        return np.cumsum(self.explained_variance_ratio)


def n_components_for(explained_variance_ratio: Any, variance: float) -> int:
    """Smallest k with ``sum(ratio[:k]) >= variance`` (0 < variance <= 1)."""
    r = np.asarray(explained_variance_ratio, np.float64)
    if not 0.0 < variance <= 1.0:
        raise ValueError(f"variance must lie in (0, 1], got {variance}")
    cum = np.cumsum(r)
    # tolerate rounding: 0.98 must be reachable when the ratios sum to 1 - 1e-15
    k = int(np.searchsorted(cum, variance - 1e-12, side="left")) + 1
    return min(k, int(np.count_nonzero(r > 0)) or 1)


def _svd_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(singular values (r,), right singular vectors (r, D)) of x (N, D), r = min(N, D).

    For N << D (a few hundred faces of tens of thousands of coordinates) this goes through the
    N x N Gram matrix (float64 eigh), much faster than an SVD of x (orthonormality error
    ~ 1e-16 (s_0 / s_i)^2); directions whose singular
    value is below 1e-7 of the largest are returned as zero rows with value 0.
    """
    n, d = x.shape
    if n * 4 > d:
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        return s, vt
    w, u = np.linalg.eigh(x @ x.T)
    order = np.argsort(w)[::-1]
    w, u = np.clip(w[order], 0.0, None), u[:, order]
    s = np.sqrt(w)
    ok = s > s[0] * 1e-7
    vt = np.zeros((n, d))
    vt[ok] = (u[:, ok].T @ x) / s[ok, None]
    s[~ok] = 0.0
    return s, vt


def _pca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean (D,), singular values (r,), right singular vectors (r, D)) of data rows x (N, D)."""
    mean = x.mean(axis=0)
    s, vt = _svd_rows(x - mean)
    # deterministic signs: the largest-magnitude entry of each mode is positive
    sign = np.sign(vt[np.arange(vt.shape[0]), np.abs(vt).argmax(axis=1)])
    sign[s == 0] = 1.0
    sign[sign == 0] = 1.0
    return mean, s, vt * sign[:, None]


def build_pca_model(meshes: Any, triangles: Any, *, variance: float | None = 0.98,
                    n_components: int | None = None, align: bool = True,
                    align_scale: bool = False, name: str = "pca", units: str = "mm",
                    return_info: bool = False, **model_fields: Any
                    ) -> MorphableModel | tuple[MorphableModel, PCAInfo]:
    """A PCA shape model (survey eqs 1-3) from meshes in dense correspondence.

    Steps: (optional) generalised Procrustes alignment (rigid by default: head size is identity
    information; ``align_scale=True`` removes it), centring, SVD of the (N, 3V) data matrix,
    then ``k`` = ``n_components`` if given, else the smallest k whose cumulative explained
    variance is >= ``variance``. The basis rows are the right singular vectors (orthonormal
    in R^{3V}), ``identity_std[i] = s_i / sqrt(N - 1)`` (the standard deviation of coefficient
    i over the training set, eq. 3). At most ``min(N - 1, 3V)`` modes carry variance.

    Args:
      meshes: (N, V, 3), N >= 2, in ``units``.
      triangles: (T, 3) 0-based topology shared by all meshes.
      variance: explained-variance threshold eta in (0, 1] (ignored with ``n_components``).
      n_components: keep exactly this many modes.
      align: run :func:`generalized_procrustes` first.
      align_scale: similarity instead of rigid alignment.
      return_info: also return a :class:`PCAInfo`.
      **model_fields: passed on to :func:`make_model` (``landmarks``, ``regions``, ``uv``, ...).

    Returns:
      the MorphableModel (and its PCAInfo).
    """
    m = _meshes(meshes)
    n, v, _ = m.shape
    if align:
        m, _, _ = generalized_procrustes(m, with_scale=align_scale)
    mean, s, vt = _pca(m.reshape(n, 3 * v))
    total = float((s ** 2).sum())
    if s[0] <= 1e-10 * np.sqrt(n) * np.linalg.norm(mean):
        raise ValueError("the meshes are all identical: no variance to model")
    ratio = s ** 2 / total
    r_max = int(np.count_nonzero(s > s[0] * 1e-10))
    if n_components is not None:
        if not 1 <= n_components <= r_max:
            raise ValueError(f"n_components must lie in [1, {r_max}] (the rank of the centred "
                             f"data), got {n_components}")
        k = int(n_components)
    else:
        if variance is None:
            raise ValueError("give variance or n_components")
        k = min(n_components_for(ratio, variance), r_max)
    model = make_model(mean=mean.reshape(v, 3), identity_basis=vt[:k].reshape(k, v, 3),
                       identity_std=s[:k] / np.sqrt(n - 1), triangles=triangles, units=units,
                       name=name, **model_fields)
    if return_info:
        return model, PCAInfo(ratio, s, k, m)
    return model


@dataclasses.dataclass(frozen=True)
class ExpressionBasis:
    """An expression basis to attach to a model with :func:`add_expression`.

    Attributes:
      basis: (Ke, V, 3) offsets from the neutral face.
      std: (Ke,) prior std (PCA) or ones (blendshapes).
      kind: ``"pca"`` or ``"blendshape"``.
      names: expression names (blendshapes) or None.
      explained_variance_ratio: PCA only: ratio of every mode of the offset data, else None.
    """

    basis: np.ndarray
    std: np.ndarray
    kind: str
    names: tuple[str, ...] | None = None
    explained_variance_ratio: np.ndarray | None = None


def build_expression_model(neutrals: Any, expressions: Any, *,
                           kind: Literal["pca", "blendshape"] = "pca",
                           variance: float | None = 0.98, n_components: int | None = None,
                           names: Any = None) -> ExpressionBasis:
    """An expression basis from neutral/expression pairs of the same subjects.

    Offsets ``d[n, e] = expressions[n, e] - neutrals[n]`` (meshes must already share a frame,
    e.g. the scans of one subject registered rigidly on the upper face).

    * ``kind="pca"``: an *uncentred* PCA of all N*E offsets, so zero coefficients are exactly
      the neutral face; ``std_i = s_i / sqrt(N E)`` (the RMS coefficient of mode i); modes are
      kept as in :func:`build_pca_model` (``variance`` / ``n_components``).
    * ``kind="blendshape"``: expression e means the same thing for every subject (FaceWarehouse,
      ARKit): blendshape e is the mean offset over subjects, weights in [0, 1], std 1.

    Args:
      neutrals: (N, V, 3).
      expressions: (N, E, V, 3) (or (N, V, 3) for one expression per subject).
      names: E expression names (blendshapes).
    """
    neu = _meshes(neutrals, "neutrals", 1)
    ex = np.asarray(expressions, np.float64)
    if ex.ndim == 3:
        ex = ex[:, None]
    if ex.ndim != 4 or ex.shape[0] != neu.shape[0] or ex.shape[2:] != neu.shape[1:]:
        raise ValueError(f"expressions must be (N, E, V, 3) = ({neu.shape[0]}, E, "
                         f"{neu.shape[1]}, 3), got {np.shape(expressions)}")
    if not np.all(np.isfinite(ex)):
        raise ValueError("expressions contain NaN or inf")
    d = ex - neu[:, None]
    n, e, v, _ = d.shape
    if kind == "blendshape":
        if names is not None and len(names) != e:
            raise ValueError(f"{len(names)} names for {e} expressions")
        return ExpressionBasis(d.mean(axis=0), np.ones(e), "blendshape",
                               None if names is None else tuple(str(x) for x in names))
    if kind != "pca":
        raise ValueError(f"kind must be 'pca' or 'blendshape', got {kind!r}")
    x = d.reshape(n * e, 3 * v)
    s, vt = _svd_rows(x)
    total = float((s ** 2).sum())
    if total <= 0:
        raise ValueError("all expression offsets are zero")
    ratio = s ** 2 / total
    r_max = int(np.count_nonzero(s > s[0] * 1e-10))
    if n_components is not None:
        if not 1 <= n_components <= r_max:
            raise ValueError(f"n_components must lie in [1, {r_max}], got {n_components}")
        k = int(n_components)
    else:
        if variance is None:
            raise ValueError("give variance or n_components")
        k = min(n_components_for(ratio, variance), r_max)
    return ExpressionBasis(vt[:k].reshape(k, v, 3), s[:k] / np.sqrt(n * e), "pca", None, ratio)


def add_expression(model: MorphableModel, expression: ExpressionBasis) -> MorphableModel:
    """``model`` with ``expression`` as its expression basis (replacing any existing one)."""
    out = replace(model, expression_basis=np.asarray(expression.basis, np.float32),
                  expression_std=np.asarray(expression.std, np.float32),
                  expression_kind=expression.kind, expression_names=expression.names)
    return validate(out)


@dataclasses.dataclass(frozen=True)
class BilinearInfo:
    """Factors of :func:`build_bilinear_model`.

    Attributes:
      identity_factors: (I, Kid) identity weights of every training subject (rows of U_id).
      expression_factors: (E, Kexp) expression-mode factor U_exp.
      identity_singular_values / expression_singular_values: mode-unfolding singular values.
    """

    identity_factors: np.ndarray
    expression_factors: np.ndarray
    identity_singular_values: np.ndarray
    expression_singular_values: np.ndarray


def build_bilinear_model(tensor: Any, triangles: Any, *, n_identity: int | None = None,
                         n_expression: int | None = None, neutral_index: int = 0,
                         units: str = "mm", name: str = "bilinear",
                         return_info: bool = False
                         ) -> BilinearModel | tuple[BilinearModel, BilinearInfo]:
    """A FaceWarehouse-style bilinear model by (truncated) HOSVD / Tucker decomposition.

    The data tensor T (I identities x E expressions x 3V) is decomposed along the identity and
    expression modes (the vertex mode is kept): ``U_id`` = leading ``n_identity`` left singular
    vectors of the identity unfolding, ``U_exp`` likewise, core ``C = T x_1 U_id^T x_2 U_exp^T``
    (FaceWarehouse, Cao et al. 2014). So that expression weights stay one-hot blendshape
    selectors (expression e = ``e_e``, the neutral at ``neutral_index``), the returned core is
    ``C x_2 U_exp`` (Kid x E x V x 3): the expression mode projected onto its leading
    ``n_expression``-dimensional subspace but indexed by the original expressions. Subject i
    is ``w_id = U_id[i]`` (``BilinearInfo.identity_factors``):
    ``bilinear_vertices(model, U_id[i], e_e) ~ T[i, e]``, exact when the truncation keeps the
    tensor's multilinear rank.

    Args:
      tensor: (I, E, 3V) (xyz interleaved per vertex) or (I, E, V, 3).
      triangles: (T, 3) 0-based.
      n_identity / n_expression: truncation ranks (None: full).
      neutral_index: which expression is neutral.
    """
    t = np.asarray(tensor, np.float64)
    if t.ndim == 4 and t.shape[3] == 3:
        t = t.reshape(t.shape[0], t.shape[1], -1)
    if t.ndim != 3 or t.shape[2] % 3 or t.shape[2] < 9:
        raise ValueError(f"tensor must be (I, E, 3V) or (I, E, V, 3), got {np.shape(tensor)}")
    if not np.all(np.isfinite(t)):
        raise ValueError("tensor contains NaN or inf")
    n_id, n_ex, n3 = t.shape
    u_id, s_id, _ = np.linalg.svd(t.reshape(n_id, -1), full_matrices=False)
    u_ex, s_ex, _ = np.linalg.svd(np.transpose(t, (1, 0, 2)).reshape(n_ex, -1),
                                  full_matrices=False)
    kid = u_id.shape[1] if n_identity is None else int(n_identity)
    kex = u_ex.shape[1] if n_expression is None else int(n_expression)
    if not 1 <= kid <= u_id.shape[1]:
        raise ValueError(f"n_identity must lie in [1, {u_id.shape[1]}], got {n_identity}")
    if not 1 <= kex <= u_ex.shape[1]:
        raise ValueError(f"n_expression must lie in [1, {u_ex.shape[1]}], got {n_expression}")
    u_id, u_ex = u_id[:, :kid], u_ex[:, :kex]
    core = np.einsum("iet,ia,eb->abt", t, u_id, u_ex)  # (Kid, Kexp, 3V)
    core_e = np.einsum("abt,eb->aet", core, u_ex)  # expression mode back to E blendshapes
    model = make_bilinear_model(core_e.reshape(kid, n_ex, n3 // 3, 3), triangles,
                                neutral_index=neutral_index, units=units, name=name)
    if return_info:
        return model, BilinearInfo(u_id, u_ex, s_id, s_ex)
    return model
