"""Loaders for the Basel Face Models: BFM 2009, BFM 2017/2019 (h5) and Deep3DFaceRecon's BFM.

Every loader returns a validated :class:`~jaxface.models.morphable.MorphableModel` in
millimetres with albedo in [0, 1] (linear scale of the stored 0..255 or 0..1 colours), triangles
0-based and oriented so that their normals point out of the face (checked on the mean shape
and flipped as a whole where needed).

Layout facts used here (see each function for the details and which ones are verified):

* BFM 2009 ``01_MorphableModel.mat`` (MATLAB v5): ``shapeMU`` (3V, 1), ``shapePC`` (3V, K),
  ``shapeEV`` (K, 1), ``texMU``/``texPC``/``texEV`` likewise, ``tl`` (T, 3) 1-based; xyz
  interleaved per vertex; V = 53490, K = 199. Lengths in micrometres; ``shapeEV`` holds standard
  deviations of the coefficients of the orthonormal ``shapePC``. ``segbin`` (V, 4) 0/1: one
  column per face segment, in the order nose, eyes, mouth, rest (the Basel code's
  "external"); it becomes four boolean regions. ``segMM``/``segMB`` (segment blending data, if
  present) are not read.
* BFM 2017/2019 h5 (statismo/scalismo format): ``<part>/model/mean`` (3V,),
  ``<part>/model/pcaBasis`` (3V, K) orthonormal columns, ``<part>/model/pcaVariance`` (K,)
  variances, ``<part>/representer/points`` (3, V), ``<part>/representer/cells`` (3, T) 0-based,
  part in ``shape``/``color``/``expression``. Lengths in millimetres, colours in [0, 1].
* Deep3DFaceRecon ``BFM_model_front.mat``: ``meanshape`` (1, 3V), ``idBase`` (3V, 80),
  ``exBase`` (3V, 64), ``meantex`` (1, 3V), ``texBase`` (3V, 80), ``tri`` (T, 3) 1-based,
  ``keypoints`` (1, 68) 1-based; bases already multiplied by their standard deviations
  (coefficients ~ N(0, 1)); lengths in decimetres (BFM 2009 micrometres / 1e5), colours 0..255.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from jaxface.errors import ModelFormatError
from jaxface.models import _formats as F
from jaxface.models.morphable import LandmarkSet, MorphableModel, make_model

PathLike = str | os.PathLike

MICROMETRE_TO_MM = 1e-3
DECIMETRE_TO_MM = 100.0


def _landmark_parts(n_vertices: int, landmarks: PathLike | None, contours: PathLike | None,
                    src: str) -> tuple[dict, dict]:
    if landmarks is None:
        if contours is not None:
            raise ModelFormatError("contours need a landmark mapping (landmarks=...)",
                                   source=src, field="contours")
        return {}, {}
    lms, cset, _ = F.eos_landmarks(n_vertices, landmarks, contours)
    return {"ibug68": lms}, ({} if cset is None else {"ibug68": cset})


# ------------------------------------------------------------------------------------------------
# BFM 2009
# ------------------------------------------------------------------------------------------------

def load_bfm2009(path: PathLike, *, landmarks: PathLike | None = None,
                 contours: PathLike | None = None, with_albedo: bool = True) -> MorphableModel:
    """Load the Basel Face Model 2009 (``01_MorphableModel.mat``).

    Conversion: lengths micrometres -> mm (x 1e-3); ``shapeEV``/``texEV`` are used as the
    standard deviations of the coefficients of the orthonormal ``shapePC``/``texPC`` (checked:
    the basis columns must be unit-norm, or already scaled by EV, in which case they are
    normalised); colours 0..255 -> [0, 1]. ``tl`` is 1-based.

    Args:
      path: the ``.mat`` file.
      landmarks: an eos mapping file (``ibug_to_bfm2009.txt``, see
        :func:`jaxface.models._formats.eos_mapping_path`); its landmarks become the 68-row set
        ``"ibug68"`` in iBUG order, rows the mapping lacks marked ``valid = False`` (see
        :func:`jaxface.models._formats.eos_landmarks`).
      contours: an eos ``*_model_contours.json`` (needs ``landmarks``): adds the contour
        landmarks 1-8 / 10-17 to the set and a ContourSet under the same name.
      with_albedo: read the texture model too.

    Returns:
      MorphableModel (V=53490, 199 identity modes, 199 albedo modes, no expression), with
      regions ``"nose"``, ``"eyes"``, ``"mouth"``, ``"rest"`` from ``segbin`` when the file has
      it (see :data:`BFM2009_SEGMENTS`).

    Raises:
      ModelFormatError: not a BFM 2009 file, truncated, or inconsistent shapes.
    """
    src = F.src_name(path)
    data = F.read_mat(path, what="BFM 2009 01_MorphableModel.mat")
    what = "BFM 2009 01_MorphableModel.mat"
    mu = F.get_array(data, "shapeMU", src, what=what)
    F.expect_shape(mu, (None, 1), src, "shapeMU")
    if mu.shape[0] % 3 or mu.shape[0] < 9:
        raise ModelFormatError(f"length {mu.shape[0]} is not 3V with V >= 3", source=src,
                               field="shapeMU")
    v = mu.shape[0] // 3
    pc = F.get_array(data, "shapePC", src, what=what)
    F.expect_shape(pc, (3 * v, None), src, "shapePC")
    ev = F.get_array(data, "shapeEV", src, what=what)
    F.expect_shape(ev, (pc.shape[1], 1), src, "shapeEV")
    tl = F.get_array(data, "tl", src, what=what)
    F.expect_shape(tl, (None, 3), src, "tl")
    for a, k in ((mu, "shapeMU"), (pc, "shapePC"), (ev, "shapeEV")):
        F.check_finite(a, src, k)
    pc, std, _ = F.orthonormal_basis(pc, ev[:, 0], src, "shapePC")
    mean = mu[:, 0].reshape(v, 3).astype(np.float64) * MICROMETRE_TO_MM
    tri = F.as_index(tl, src, "tl", one_based=True, n=v)
    tri, _ = F.orient_outward(mean, tri)

    albedo: dict[str, Any] = {}
    if with_albedo:
        tmu = F.get_array(data, "texMU", src, what=what)
        F.expect_shape(tmu, (3 * v, 1), src, "texMU")
        tpc = F.get_array(data, "texPC", src, what=what)
        F.expect_shape(tpc, (3 * v, None), src, "texPC")
        tev = F.get_array(data, "texEV", src, what=what)
        F.expect_shape(tev, (tpc.shape[1], 1), src, "texEV")
        for a, k in ((tmu, "texMU"), (tpc, "texPC"), (tev, "texEV")):
            F.check_finite(a, src, k)
        tpc, tstd, _ = F.orthonormal_basis(tpc, tev[:, 0], src, "texPC")
        albedo = dict(albedo_mean=tmu[:, 0].reshape(v, 3) / 255.0,
                      albedo_basis=F.flat_basis_to_kv3(tpc, v), albedo_std=tstd / 255.0)
    lms, cts = _landmark_parts(v, landmarks, contours, src)
    regions = _bfm2009_segments(data, v, src)
    return make_model(mean=mean, identity_basis=F.flat_basis_to_kv3(pc, v),
                      identity_std=std * MICROMETRE_TO_MM, triangles=tri, landmarks=lms,
                      contours=cts, regions=regions, units="mm", name="bfm2009", source=src,
                      **albedo)


#: Column order of BFM 2009's ``segbin`` (the Basel MATLAB code labels them nose, eyes, mouth,
#: external).
BFM2009_SEGMENTS = ("nose", "eyes", "mouth", "rest")


def _bfm2009_segments(data: dict[str, Any], n_vertices: int, src: str) -> dict[str, np.ndarray]:
    """``segbin`` (V, 4) 0/1 -> one (V,) bool region per segment ({} when absent)."""
    if "segbin" not in data:
        return {}
    seg = F.get_array(data, "segbin", src, what="BFM 2009 01_MorphableModel.mat")
    F.expect_shape(seg, (n_vertices, len(BFM2009_SEGMENTS)), src, "segbin")
    if not np.all((seg == 0) | (seg == 1)):
        raise ModelFormatError("segment indicators must be 0 or 1", source=src, field="segbin")
    return {name: np.asarray(seg[:, i] != 0) for i, name in enumerate(BFM2009_SEGMENTS)}


# ------------------------------------------------------------------------------------------------
# BFM 2017 / 2019 (h5)
# ------------------------------------------------------------------------------------------------

def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is installed in the dev env
        raise ImportError("loading BFM 2017/2019 .h5 files needs the optional dependency h5py "
                          "(pip install h5py)") from e
    return h5py


def _h5_part(f: Any, part: str, src: str, n_vertices: int | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(mean (3V,), orthonormal basis (3V, K), std (K,)) of group ``part`` or None if absent."""
    if part not in f:
        return None
    h5py = _h5py()

    def ds(key):
        full = f"{part}/model/{key}"
        node = f.get(full)
        if not isinstance(node, h5py.Dataset):
            raise ModelFormatError("missing dataset: not a BFM 2017/2019 (statismo) h5 file",
                                   source=src, field=full)
        try:
            return np.asarray(node[()])
        except OSError as e:  # truncated file
            raise ModelFormatError(f"cannot read dataset ({e})", source=src, field=full) from e

    mean = ds("mean").reshape(-1)
    basis = ds("pcaBasis")
    var = ds("pcaVariance").reshape(-1)
    n3 = mean.shape[0]
    if n3 % 3 or (n_vertices is not None and n3 != 3 * n_vertices):
        want = "3V" if n_vertices is None else f"3V = {3 * n_vertices}"
        raise ModelFormatError(f"mean has length {n3}, expected {want}", source=src,
                               field=f"{part}/model/mean")
    F.expect_shape(basis, (n3, var.shape[0]), src, f"{part}/model/pcaBasis")
    for a, k in ((mean, "mean"), (basis, "pcaBasis"), (var, "pcaVariance")):
        F.check_finite(a, src, f"{part}/model/{k}")
    keep = var > 0
    if not keep.all():
        warnings.warn(f"{src}: {part}: dropping {int((~keep).sum())} modes with non-positive "
                      "variance", stacklevel=3)
        basis, var = basis[:, keep], var[keep]
    basis, std, _ = F.orthonormal_basis(basis, np.sqrt(var), src, f"{part}/model/pcaBasis")
    return mean, basis, std


def load_bfm2017(path: PathLike, *, landmarks: PathLike | None = None,
                 contours: PathLike | None = None, with_albedo: bool = True,
                 with_expression: bool = True) -> MorphableModel:
    """Load a BFM 2017 or 2019 h5 model (``model2017-1_bfm_nomouth.h5``,
    ``model2019_fullHead.h5``, ...). Needs h5py (imported lazily).

    Conversion: lengths are millimetres already; ``pcaVariance`` are variances (std = sqrt);
    ``pcaBasis`` has orthonormal columns (checked; a basis scaled by the std is normalised);
    colour means above 1.5 are taken as 0..255 and divided by 255. Triangles from
    ``shape/representer/cells`` (3, T), 0-based. Expression modes (if the file has them) are a
    PCA (``expression_kind="pca"``).

    Args: as :func:`load_bfm2009` (use ``ibug_to_bfm2017-1_bfm_nomouth.txt``), plus
      ``with_expression``.

    Raises:
      ModelFormatError: not a statismo h5 model, truncated, or inconsistent shapes.
    """
    h5py = _h5py()
    p = F.require_file(path)
    src = str(p)
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise ModelFormatError(f"not a readable HDF5 file, expected a BFM 2017/2019 .h5 ({e})",
                               source=src) from e
    with f:
        shape = _h5_part(f, "shape", src, None)
        if shape is None:
            raise ModelFormatError(f"no 'shape' group (groups: {sorted(f.keys())}): not a BFM "
                                   "2017/2019 h5 file", source=src, field="shape")
        mean, basis, std = shape
        v = mean.shape[0] // 3
        cells_node = f.get("shape/representer/cells")
        if not isinstance(cells_node, h5py.Dataset):
            raise ModelFormatError("missing triangle list", source=src,
                                   field="shape/representer/cells")
        cells = np.asarray(cells_node[()])
        F.expect_shape(cells, (3, None), src, "shape/representer/cells")
        pts = f.get("shape/representer/points")
        if isinstance(pts, h5py.Dataset) and pts.shape != (3, v):
            raise ModelFormatError(f"expected shape (3, {v}), found {pts.shape}", source=src,
                                   field="shape/representer/points")
        mean_v = mean.reshape(v, 3).astype(np.float64)
        tri = F.as_index(cells.T, src, "shape/representer/cells", one_based=False, n=v)
        tri, _ = F.orient_outward(mean_v, tri)
        extra: dict[str, Any] = {}
        if with_expression:
            ex = _h5_part(f, "expression", src, v)
            if ex is not None:
                emean, ebasis, estd = ex
                mean_v = mean_v + emean.reshape(v, 3)  # the expression mean is an offset
                extra.update(expression_basis=F.flat_basis_to_kv3(ebasis, v),
                             expression_std=estd, expression_kind="pca")
        if with_albedo:
            col = _h5_part(f, "color", src, v)
            if col is not None:
                cmean, cbasis, cstd = col
                scale = 255.0 if cmean.max() > 1.5 else 1.0
                extra.update(albedo_mean=cmean.reshape(v, 3) / scale,
                             albedo_basis=F.flat_basis_to_kv3(cbasis, v),
                             albedo_std=cstd / scale)
    lms, cts = _landmark_parts(v, landmarks, contours, src)
    name = Path(src).stem
    return make_model(mean=mean_v, identity_basis=F.flat_basis_to_kv3(basis, v),
                      identity_std=std, triangles=tri, landmarks=lms, contours=cts,
                      units="mm", name=name, source=src, **extra)


# ------------------------------------------------------------------------------------------------
# Deep3DFaceRecon's BFM_model_front.mat
# ------------------------------------------------------------------------------------------------

def load_deep3d_bfm(path: PathLike) -> MorphableModel:
    """Load Deep3DFaceRecon's ``BFM_model_front.mat`` (BFM 2009 front + the 64-mode expression
    basis of Guo et al., as made by their ``transferBFM09``).

    Conversion: decimetres -> mm (x 100; the raw file is *not* re-centred: Deep3DFaceRecon
    subtracts the mean vertex at load time, we keep the file's frame); the bases are already
    multiplied by their standard deviations, so every std is 1; colours 0..255 -> [0, 1]
    (the texture basis too). ``tri`` and ``keypoints`` are 1-based; ``keypoints`` become the
    full ``"ibug68"`` landmark set. ``skinmask`` (if present) becomes the ``"skin"`` region and
    ``frontmask2_idx`` (1-based vertex ids) the ``"front"`` region.

    Raises:
      ModelFormatError: not this file, truncated, or inconsistent shapes.
    """
    src = F.src_name(path)
    what = "Deep3DFaceRecon BFM_model_front.mat"
    data = F.read_mat(path, what=what)
    ms = F.get_array(data, "meanshape", src, what=what)
    F.expect_shape(ms, (1, None), src, "meanshape")
    n3 = ms.shape[1]
    if n3 % 3 or n3 < 9:
        raise ModelFormatError(f"length {n3} is not 3V", source=src, field="meanshape")
    v = n3 // 3
    idb = F.get_array(data, "idBase", src, what=what)
    F.expect_shape(idb, (n3, None), src, "idBase")
    exb = F.get_array(data, "exBase", src, what=what)
    F.expect_shape(exb, (n3, None), src, "exBase")
    mt = F.get_array(data, "meantex", src, what=what)
    F.expect_shape(mt, (1, n3), src, "meantex")
    tb = F.get_array(data, "texBase", src, what=what)
    F.expect_shape(tb, (n3, None), src, "texBase")
    tri = F.get_array(data, "tri", src, what=what)
    F.expect_shape(tri, (None, 3), src, "tri")
    for a, k in ((ms, "meanshape"), (idb, "idBase"), (exb, "exBase"), (mt, "meantex"),
                 (tb, "texBase")):
        F.check_finite(a, src, k)
    mean = ms[0].reshape(v, 3).astype(np.float64) * DECIMETRE_TO_MM
    tri0 = F.as_index(tri, src, "tri", one_based=True, n=v)
    tri0, _ = F.orient_outward(mean, tri0)
    lms = {}
    if "keypoints" in data:
        kp = F.get_array(data, "keypoints", src, what=what).reshape(-1)
        if kp.shape != (68,):
            raise ModelFormatError(f"expected 68 landmarks, found {kp.shape[0]}", source=src,
                                   field="keypoints")
        lms["ibug68"] = LandmarkSet.from_vertex_ids(
            F.as_index(kp, src, "keypoints", one_based=True, n=v))
    regions = {}
    if "skinmask" in data:
        sk = F.get_array(data, "skinmask", src, what=what).reshape(-1)
        if sk.shape == (v,) and np.isin(sk, (0, 1)).all():
            regions["skin"] = sk.astype(bool)
    if "frontmask2_idx" in data:
        fm = F.as_index(F.get_array(data, "frontmask2_idx", src, what=what).reshape(-1), src,
                        "frontmask2_idx", one_based=True, n=v)
        mask = np.zeros(v, bool)
        mask[fm] = True
        regions["front"] = mask
    return make_model(
        mean=mean, identity_basis=F.flat_basis_to_kv3(idb * DECIMETRE_TO_MM, v),
        expression_basis=F.flat_basis_to_kv3(exb * DECIMETRE_TO_MM, v), expression_kind="pca",
        albedo_mean=mt[0].reshape(v, 3) / 255.0, albedo_basis=F.flat_basis_to_kv3(tb / 255.0, v),
        triangles=tri0, landmarks=lms, regions=regions, units="mm", name="deep3d_bfm",
        source=src)
