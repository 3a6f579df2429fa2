"""Writers of small face-model files in the exact upstream formats (containers, key names,
dtypes, layouts, index bases), for the loader tests. Nothing here imports the loaders.

Every writer returns the ground truth in jaxface conventions (mm, 0-based, (K, V, 3) bases,
outward triangles) so that a test can compare the loaded model against it.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

# ------------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------------


def cap_mesh(nu: int = 8, nv: int = 9, n_vertices: int | None = None,
             radii: tuple[float, float, float] = (75.0, 95.0, 60.0), seed: int = 0
             ) -> tuple[np.ndarray, np.ndarray]:
    """A face-like open surface (front of an ellipsoid, looking at +z), in mm.

    Returns (verts (V, 3) float64, triangles (T, 3) int64 0-based, counter-clockwise seen from
    outside, checked per triangle). ``n_vertices`` > nu*nv appends unreferenced vertices on the
    same ellipsoid (so that big vertex ids exist, e.g. for real eos mapping files).
    """
    rx, ry, rz = radii
    u = np.linspace(-1.1, 1.1, nu)
    v = np.linspace(-1.0, 1.0, nv)
    uu, vv = np.meshgrid(u, v, indexing="xy")  # (nv, nu)
    pts = np.stack([rx * np.sin(uu) * np.cos(vv), ry * np.sin(vv),
                    rz * np.cos(uu) * np.cos(vv)], -1).reshape(-1, 3)
    tris = []
    for j in range(nv - 1):
        for i in range(nu - 1):
            a, b, c, d = j * nu + i, j * nu + i + 1, (j + 1) * nu + i, (j + 1) * nu + i + 1
            tris += [(a, c, b), (b, c, d)]
    tri = np.asarray(tris, np.int64)
    n = np.cross(pts[tri[:, 1]] - pts[tri[:, 0]], pts[tri[:, 2]] - pts[tri[:, 0]])
    centroid = pts[tri].mean(axis=1)
    outward = np.einsum("ij,ij->i", n, centroid / np.asarray(radii) ** 2)
    if np.all(outward < 0):
        tri = tri[:, [0, 2, 1]]
    else:
        assert np.all(outward > 0)
    if n_vertices is not None and n_vertices > pts.shape[0]:
        rng = np.random.default_rng(seed)
        m = n_vertices - pts.shape[0]
        a, b = rng.uniform(-1.2, 1.2, m), rng.uniform(-1.0, 1.0, m)
        extra = np.stack([rx * np.sin(a) * np.cos(b), ry * np.sin(b),
                          rz * np.cos(a) * np.cos(b)], -1)
        pts = np.concatenate([pts, extra])
    return pts, tri


def orthonormal(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(rows, cols)))
    return q


def flat(verts: np.ndarray) -> np.ndarray:
    """(V, 3) -> (3V,) interleaved x0 y0 z0 x1 ..."""
    return np.asarray(verts).reshape(-1)


def kv3(basis_3v_k: np.ndarray) -> np.ndarray:
    """(3V, K) interleaved -> (K, V, 3)."""
    return basis_3v_k.T.reshape(basis_3v_k.shape[1], -1, 3)


# ------------------------------------------------------------------------------------------------
# BFM 2009: 01_MorphableModel.mat (MATLAB v5)
# ------------------------------------------------------------------------------------------------

def write_bfm2009_mat(path: Path, *, k: int = 4, n_vertices: int | None = None,
                      inward_winding: bool = False, seed: int = 0) -> dict[str, Any]:
    """``shapeMU`` (3V,1) single in micrometres, ``shapePC`` (3V,K) single orthonormal,
    ``shapeEV`` (K,1) single standard deviations (micrometres), ``texMU`` (3V,1) 0..255,
    ``texPC``, ``texEV``, ``tl`` (T,3) double 1-based, plus ``segbin`` (V,4) 0/1 per vertex,
    columns nose, eyes, mouth, rest, like the real file (its dtype there is unverified).
    """
    verts, tri = cap_mesh(n_vertices=n_vertices, seed=seed)
    v = verts.shape[0]
    pc = orthonormal(3 * v, k, seed)
    ev = np.linspace(3000.0, 800.0, k)  # micrometres
    rng = np.random.default_rng(seed + 1)
    tex_mu = rng.uniform(60, 200, size=(v, 3))
    tpc = orthonormal(3 * v, k, seed + 2)
    tev = np.linspace(30.0, 5.0, k)
    tl = (tri[:, [0, 2, 1]] if inward_winding else tri) + 1
    # segments by position on the face (nose, eyes, mouth, rest), 0/1 per vertex and column
    x, y = verts[:, 0] / 75.0, verts[:, 1] / 95.0
    nose = (np.abs(x) < 0.25) & (np.abs(y) < 0.3)
    eyes = (np.abs(x) > 0.2) & (np.abs(x) < 0.7) & (y > 0.2) & (y < 0.6)
    mouth = (np.abs(x) < 0.4) & (y < -0.3) & (y > -0.7)
    segbin = np.stack([nose, eyes, mouth, ~(nose | eyes | mouth)], 1)
    scipy.io.savemat(str(path), {
        "shapeMU": (flat(verts) * 1000.0).astype(np.float32)[:, None],
        "shapePC": pc.astype(np.float32), "shapeEV": ev.astype(np.float32)[:, None],
        "texMU": flat(tex_mu).astype(np.float32)[:, None], "texPC": tpc.astype(np.float32),
        "texEV": tev.astype(np.float32)[:, None], "tl": tl.astype(np.float64),
        "segbin": segbin.astype(np.uint8),
    }, format="5")
    return dict(mean=verts, triangles=tri, identity_basis=kv3(pc), identity_std=ev / 1000.0,
                segments=segbin,
                albedo_mean=tex_mu / 255.0, albedo_basis=kv3(tpc), albedo_std=tev / 255.0)


# ------------------------------------------------------------------------------------------------
# BFM 2017/2019: statismo h5
# ------------------------------------------------------------------------------------------------

def write_bfm2017_h5(path: Path, *, k: int = 5, ke: int = 3, kc: int = 4,
                     n_vertices: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Groups ``shape``/``color``/``expression`` each with ``model/mean`` (3V,) float32,
    ``model/pcaBasis`` (3V,K) float32 orthonormal, ``model/pcaVariance`` (K,) float32,
    ``model/noiseVariance`` scalar, ``representer/points`` (3,V), ``representer/cells`` (3,T)
    0-based; a ``version`` group (statismo 0.9). Lengths in mm, colours in [0, 1]."""
    import h5py

    verts, tri = cap_mesh(n_vertices=n_vertices, seed=seed)
    v = verts.shape[0]
    rng = np.random.default_rng(seed + 3)
    parts = {
        "shape": (flat(verts), orthonormal(3 * v, k, seed), np.linspace(400.0, 50.0, k)),
        "expression": (flat(rng.normal(0, 0.5, (v, 3))), orthonormal(3 * v, ke, seed + 1),
                       np.linspace(100.0, 10.0, ke)),
        "color": (flat(rng.uniform(0.2, 0.8, (v, 3))), orthonormal(3 * v, kc, seed + 2),
                  np.linspace(4.0, 0.5, kc)),
    }
    with h5py.File(path, "w") as f:
        ver = f.create_group("version")
        ver.create_dataset("majorVersion", data=np.int32(0))
        ver.create_dataset("minorVersion", data=np.int32(9))
        for name, (mean, basis, var) in parts.items():
            g = f.create_group(name)
            g.create_dataset("model/mean", data=mean.astype(np.float32))
            g.create_dataset("model/pcaBasis", data=basis.astype(np.float32))
            g.create_dataset("model/pcaVariance", data=var.astype(np.float32))
            g.create_dataset("model/noiseVariance", data=np.float32(0.0))
            g.create_dataset("representer/points", data=verts.T.astype(np.float32))
            g.create_dataset("representer/cells", data=tri.T.astype(np.int32))
    (_, sb, sv), (em, eb, ev), (cm, cb, cv) = (parts["shape"], parts["expression"],
                                                parts["color"])
    return dict(mean=verts + em.reshape(v, 3), triangles=tri, identity_basis=kv3(sb),
                identity_std=np.sqrt(sv), expression_basis=kv3(eb), expression_std=np.sqrt(ev),
                albedo_mean=cm.reshape(v, 3), albedo_basis=kv3(cb), albedo_std=np.sqrt(cv))


# ------------------------------------------------------------------------------------------------
# Deep3DFaceRecon: BFM_model_front.mat
# ------------------------------------------------------------------------------------------------

def write_deep3d_mat(path: Path, *, k_id: int = 80, k_exp: int = 64, k_tex: int = 80,
                     seed: int = 0) -> dict[str, Any]:
    """``meanshape`` (1,3V) single decimetres, ``idBase``/``exBase``/``texBase`` (3V,K) single
    (already scaled), ``meantex`` (1,3V) 0..255, ``tri`` (T,3) double 1-based, ``keypoints``
    (1,68) double 1-based, ``point_buf`` (V,8) 1-based, ``skinmask`` (1,V), ``frontmask2_idx``
    (N,1) 1-based vertex ids."""
    verts, tri = cap_mesh(nu=9, nv=10, seed=seed)
    v = verts.shape[0]
    rng = np.random.default_rng(seed)
    idb = rng.normal(0, 0.02, (3 * v, k_id))  # decimetres
    exb = rng.normal(0, 0.01, (3 * v, k_exp))
    tb = rng.normal(0, 8.0, (3 * v, k_tex))
    mt = rng.uniform(50, 220, (v, 3))
    kp = rng.choice(v, 68, replace=False)
    skin = (np.arange(v) % 3 != 0)
    front = np.arange(5, v - 7)  # 0-based ids of the "front" vertices
    scipy.io.savemat(str(path), {
        "meanshape": (flat(verts) / 100.0).astype(np.float32)[None, :],
        "idBase": idb.astype(np.float32), "exBase": exb.astype(np.float32),
        "meantex": flat(mt).astype(np.float32)[None, :], "texBase": tb.astype(np.float32),
        "tri": (tri + 1).astype(np.float64), "keypoints": (kp + 1).astype(np.float64)[None, :],
        "point_buf": np.ones((v, 8)), "skinmask": skin.astype(np.float64)[None, :],
        "frontmask2_idx": (front + 1).astype(np.float64)[:, None],
    }, format="5")
    return dict(mean=verts, triangles=tri, identity_basis=kv3(idb) * 100.0,
                expression_basis=kv3(exb) * 100.0, albedo_mean=mt / 255.0,
                albedo_basis=kv3(tb) / 255.0, keypoints=kp, skin=skin, front=front)


# ------------------------------------------------------------------------------------------------
# Python 2 style pickles (FLAME)
# ------------------------------------------------------------------------------------------------

class ChStandIn:
    """Pickles like ``chumpy.ch.Ch``: NEWOBJ of chumpy.ch.Ch, then its ``__dict__`` minus
    ``_parents`` and ``_cache`` (Ch.__getstate__ in mattloper/chumpy ch.py), holding the array
    under ``x`` and the attributes Ch.__new__ sets."""

    def __init__(self, x: np.ndarray):
        self.x = x

    def __getstate__(self):
        return {"_dirty_vars": set(), "_itr": None, "_make_dense": False, "_make_sparse": False,
                "_depends_on_deps": {}, "x": self.x}


ChStandIn.__module__ = "chumpy.ch"
ChStandIn.__qualname__ = ChStandIn.__name__ = "Ch"


class CscStandIn:
    """Pickles like an old ``scipy.sparse.csc.csc_matrix`` (object state = its __dict__)."""

    def __init__(self, dense: np.ndarray):
        import scipy.sparse

        m = scipy.sparse.csc_matrix(dense)
        self.state = {"_shape": tuple(int(s) for s in m.shape), "maxprint": 50,
                      "indices": m.indices.astype(np.int32), "indptr": m.indptr.astype(np.int32),
                      "data": m.data, "format": "csc"}

    def __getstate__(self):
        return self.state


class Py2Pickler(pickle._Pickler):
    """A protocol-2 pickler that writes what CPython 2 + NumPy 1.x + chumpy wrote: str as
    BINSTRING, globals under their Python 2 module names (numpy.core.multiarray._reconstruct,
    __builtin__.set, chumpy.ch.Ch, scipy.sparse.csc.csc_matrix)."""

    dispatch = pickle._Pickler.dispatch.copy()

    GLOBALS = {
        np.ndarray: ("numpy", "ndarray"),
        np.dtype: ("numpy", "dtype"),
        set: ("__builtin__", "set"),
        ChStandIn: ("chumpy.ch", "Ch"),
        CscStandIn: ("scipy.sparse.csc", "csc_matrix"),
    }

    def __init__(self, file, globals_extra: dict | None = None):
        super().__init__(file, protocol=2)
        self.globals_ = dict(self.GLOBALS)
        self.globals_[np.zeros(1).__reduce__()[0]] = ("numpy.core.multiarray", "_reconstruct")
        self.globals_.update(globals_extra or {})

    def save_py2_str(self, obj):
        raw = obj if isinstance(obj, bytes) else obj.encode("latin1")
        n = len(raw)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        module, qual = self.globals_[obj]
        self.write(pickle.GLOBAL + f"{module}\n{qual}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[type] = save_global


def py2_pickle_bytes(obj: Any, globals_extra: dict | None = None) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, globals_extra).dump(obj)
    return buf.getvalue()


def write_flame_pkl(path: Path, *, k_id: int = 300, k_exp: int = 100, seed: int = 0
                    ) -> dict[str, Any]:
    """A FLAME-like ``generic_model.pkl``: v_template/shapedirs as chumpy Ch, posedirs/weights/
    kintree_table/f/J ndarrays, J_regressor scipy.sparse.csc; metres; float64; f uint32."""
    verts_mm, tri = cap_mesh(seed=seed)
    v = verts_mm.shape[0]
    rng = np.random.default_rng(seed)
    nj = 5
    shapedirs = rng.normal(0, 1e-3, (v, 3, k_id + k_exp))  # metres per unit coefficient
    posedirs = rng.normal(0, 1e-4, (v, 3, 36))
    w = rng.uniform(0.1, 1.0, (v, nj))
    w /= w.sum(1, keepdims=True)
    jr = np.zeros((nj, v))
    for j in range(nj):
        ids = rng.choice(v, 4, replace=False)
        jr[j, ids] = 0.25
    kintree = np.array([[2**32 - 1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64)
    vt = verts_mm / 1000.0
    d = {
        "f": tri.astype(np.uint32), "v_template": ChStandIn(vt),
        "shapedirs": ChStandIn(shapedirs), "posedirs": posedirs, "weights": w,
        "J_regressor": CscStandIn(jr), "kintree_table": kintree, "J": jr @ vt,
        "bs_style": "lbs", "bs_type": "lrotmin",
    }
    Path(path).write_bytes(py2_pickle_bytes(d))
    return dict(mean=verts_mm, triangles=tri,
                identity_basis=np.transpose(shapedirs[..., :k_id], (2, 0, 1)) * 1000.0,
                expression_basis=np.transpose(shapedirs[..., k_id:], (2, 0, 1)) * 1000.0,
                posedirs=np.transpose(posedirs, (2, 0, 1)) * 1000.0, weights=w,
                J_regressor=jr, J=jr @ vt * 1000.0, parents=(-1, 0, 1, 1, 1))


def write_flame_static_embedding(path: Path, n_faces: int, n: int = 51, seed: int = 0
                                 ) -> tuple[np.ndarray, np.ndarray]:
    """TF_FLAME's ``flame_static_embedding.pkl``: {'lmk_face_idx' (51,) uint32,
    'lmk_b_coords' (51, 3) float64} as a Python 2 pickle."""
    rng = np.random.default_rng(seed)
    fid = rng.integers(0, n_faces, n).astype(np.uint32)
    b = rng.dirichlet(np.ones(3), n)
    Path(path).write_bytes(py2_pickle_bytes({"lmk_face_idx": fid, "lmk_b_coords": b}))
    return fid.astype(np.int64), b


def _npy_object_file(path: Path, body: bytes) -> None:
    """A .npy v1.0 file of a 0-d object array (``np.save(path, dict)``): header, then the
    pickle ``body`` of the array."""
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (), }"
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * pad + "\n"
    Path(path).write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header))
                           + header.encode("latin1") + body)


def _object_array(obj: Any) -> np.ndarray:
    arr = np.empty((), dtype=object)
    arr[()] = obj
    return arr


class GlobalRef:
    """A module-level name of a library that is not installed here (torch), for pickling."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle only requires reduce functions to be callable
        raise TypeError("a stand-in, not callable")


class Py3Pickler(pickle._Pickler):
    """A Python 3 pickler (protocol 2 or 3) that writes :class:`GlobalRef` names and NumPy 1.x
    module names (numpy.core.multiarray._reconstruct), with an optional persistent_id."""

    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file, protocol: int, pid=None):
        super().__init__(file, protocol=protocol)
        self._pid = pid
        self._renamed = {np.zeros(1).__reduce__()[0]: ("numpy.core.multiarray", "_reconstruct")}

    def persistent_id(self, obj):
        return None if self._pid is None else self._pid(obj)

    def save_ref(self, obj, name=None):
        module, qual = ((obj.module, obj.name) if isinstance(obj, GlobalRef)
                        else self._renamed[obj])
        self.write(pickle.GLOBAL + f"{module}\n{qual}\n".encode("ascii"))
        self.memoize(obj)

    def save_builtin(self, obj, name=None):
        if obj in self._renamed:
            return self.save_ref(obj)
        return pickle._Pickler.save_global(self, obj, name)

    dispatch[GlobalRef] = save_ref
    dispatch[type(np.zeros(1).__reduce__()[0])] = save_builtin


TORCH_STORAGE_NAMES = {np.dtype("<i8"): "LongStorage", np.dtype("<f4"): "FloatStorage",
                       np.dtype("<f8"): "DoubleStorage", np.dtype("<i4"): "IntStorage"}


def torch_legacy_storage_bytes(flat: np.ndarray, key: str = "94857136425760") -> bytes:
    """``torch.save(storage, _use_new_zipfile_serialization=False)`` of a 1-D storage: pickles
    (protocol 2) of the magic number, protocol version 1001 and sys info, the storage as the
    persistent id ('storage', torch.<T>Storage, key, 'cpu', numel, None), the key list; then
    int64 LE numel and the raw little-endian elements."""
    flat = np.ascontiguousarray(flat).reshape(-1)
    stype = GlobalRef("torch", TORCH_STORAGE_NAMES[flat.dtype.newbyteorder("<")])
    marker = object()
    buf = io.BytesIO()

    def pid(o):
        return ("storage", stype, key, "cpu", flat.size, None) if o is marker else None

    def dump(obj):
        Py3Pickler(buf, 2, pid).dump(obj)

    dump(0x1950A86A20F9469CFC6C)
    dump(1001)
    dump({"protocol_version": 1001, "little_endian": True,
          "type_sizes": {"short": 2, "int": 4, "long": 4}})
    dump(marker)
    dump([key])
    buf.write(struct.pack("<q", flat.size) + flat.astype(flat.dtype.newbyteorder("<")).tobytes())
    return buf.getvalue()


class TensorStandIn:
    """Pickles like a contiguous CPU ``torch.Tensor`` with the plain pickle module:
    ``torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`` with
    the storage as ``torch.storage._load_from_bytes(<legacy torch.save bytes>)``."""

    def __init__(self, arr: np.ndarray):
        self.arr = np.ascontiguousarray(arr)

    def __reduce__(self):
        from collections import OrderedDict

        stride = tuple(s // self.arr.itemsize for s in self.arr.strides)
        storage = _StorageStandIn(self.arr.reshape(-1))
        return (GlobalRef("torch._utils", "_rebuild_tensor_v2"),
                (storage, 0, tuple(self.arr.shape), stride, False, OrderedDict()))


class _StorageStandIn:
    def __init__(self, flat: np.ndarray):
        self.flat = flat

    def __reduce__(self):
        return (GlobalRef("torch.storage", "_load_from_bytes"),
                (torch_legacy_storage_bytes(self.flat),))


def write_flame_landmark_embedding_npy(path: Path, n_faces: int, seed: int = 0
                                       ) -> dict[str, np.ndarray]:
    """DECA's ``landmark_embedding.npy``: ``np.save`` of a dict (a .npy v1.0, descr '|O',
    shape (), whose payload is a protocol-3 pickle of the 0-d object array) with the static
    and full sets as numpy arrays and ``dynamic_lmk_faces_idx`` (79, 17) int64 /
    ``dynamic_lmk_bary_coords`` (79, 17, 3) float32 as torch tensors (DECA calls ``.long()`` /
    ``.to()`` on them; a PaddlePaddle port converts them with ``.numpy()``)."""
    rng = np.random.default_rng(seed)
    d = {
        "static_lmk_faces_idx": rng.integers(0, n_faces, 51).astype(np.int64),
        "static_lmk_bary_coords": rng.dirichlet(np.ones(3), 51),
        "dynamic_lmk_faces_idx": rng.integers(0, n_faces, (79, 17)).astype(np.int64),
        "dynamic_lmk_bary_coords": rng.dirichlet(np.ones(3), (79, 17)).astype(np.float32),
        "full_lmk_faces_idx": rng.integers(0, n_faces, (1, 68)).astype(np.int64),
        "full_lmk_bary_coords": rng.dirichlet(np.ones(3), (1, 68)),
    }
    stored = {k: (TensorStandIn(v) if k.startswith("dynamic") else v) for k, v in d.items()}
    buf = io.BytesIO()
    Py3Pickler(buf, 3).dump(_object_array(stored))
    _npy_object_file(path, buf.getvalue())
    return d


def write_flame_dynamic_embedding_npy(path: Path, n_faces: int, seed: int = 0,
                                      rows: int = 79, n: int = 17) -> dict[str, np.ndarray]:
    """RingNet's ``flame_dynamic_embedding.npy`` (read by FLAME_PyTorch and smplx as
    ``np.load(..., allow_pickle=True, encoding='latin1')[()]``): a dict with ``lmk_face_idx``
    (79, 17) and ``lmk_b_coords`` (79, 17, 3), saved by Python 2 NumPy (protocol-2 pickle of a
    0-d object array). The integer dtype (uint32 here, like ``f``) is unverified."""
    rng = np.random.default_rng(seed)
    d = {"lmk_face_idx": rng.integers(0, n_faces, (rows, n)).astype(np.uint32),
         "lmk_b_coords": rng.dirichlet(np.ones(3), (rows, n))}
    _npy_object_file(path, py2_pickle_bytes(_object_array(d)))
    return d


# ------------------------------------------------------------------------------------------------
# eos / Surrey Face Model: cereal BinaryOutputArchive
# ------------------------------------------------------------------------------------------------

def _eigen(a: np.ndarray) -> bytes:
    """Eigen matrix as eos's cereal code writes it: int32 rows, int32 cols, col-major float32."""
    a = np.asarray(a, np.float32)
    if a.ndim == 1:
        a = a[:, None]
    return struct.pack("<ii", *a.shape) + np.asfortranarray(a).tobytes(order="F")


def _tri_list(t: np.ndarray) -> bytes:
    t = np.asarray(t, "<i4").reshape(-1, 3)
    return struct.pack("<Q", t.shape[0]) + t.tobytes()


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _pca(mean, basis, eigenvalues, tri) -> bytes:
    return _eigen(mean) + _eigen(basis) + _eigen(eigenvalues) + _tri_list(tri)


def _empty_pca() -> bytes:
    return _eigen(np.zeros((0, 1))) + _eigen(np.zeros((0, 0))) + _eigen(np.zeros((0, 1))) \
        + _tri_list(np.zeros((0, 3)))


def _blendshapes(shapes: list[tuple[str, np.ndarray]]) -> bytes:
    return struct.pack("<Q", len(shapes)) + b"".join(_string(n) + _eigen(d) for n, d in shapes)


def write_sfm_bin(path: Path, *, k: int = 3, n_vertices: int | None = 3448,
                  with_color: bool = False, with_expression: bool = False,
                  landmark_definitions: dict[str, int] | None = None,
                  seed: int = 0) -> dict[str, Any]:
    """An eos MorphableModel, class version 4: uint32 version; shape PcaModel; colour PcaModel
    (empty in sfm_shape_3448.bin); optional expression (bool, int32 variant index 0, PcaModel);
    optional landmark definitions (bool, uint64 n, (string, int32)...); texture coordinates
    (uint64 n, n x 2 float64, v = 0 at the top); texture triangle indices (empty)."""
    verts, tri = cap_mesh(n_vertices=n_vertices, seed=seed)
    v = verts.shape[0]
    basis = orthonormal(3 * v, k, seed)
    var = np.linspace(900.0, 100.0, k)
    rng = np.random.default_rng(seed)
    out = struct.pack("<I", 4) + _pca(flat(verts), basis, var, tri)
    gt: dict[str, Any] = dict(mean=verts.copy(), triangles=tri, identity_basis=kv3(basis),
                              identity_std=np.sqrt(var))
    if with_color:
        cm = rng.uniform(0.2, 0.8, (v, 3))
        cb = orthonormal(3 * v, 2, seed + 1)
        cv = np.array([0.04, 0.01])
        out += _pca(flat(cm), cb, cv, tri)
        gt.update(albedo_mean=cm, albedo_basis=kv3(cb), albedo_std=np.sqrt(cv))
    else:
        out += _empty_pca()
    if with_expression:
        em = rng.normal(0, 0.3, (v, 3))
        eb = orthonormal(3 * v, 2, seed + 2)
        ev = np.array([25.0, 4.0])
        out += b"\x01" + struct.pack("<i", 0) + _pca(flat(em), eb, ev, tri)
        gt["mean"] = verts + em
        gt.update(expression_basis=kv3(eb), expression_std=np.sqrt(ev))
    else:
        out += b"\x00"
    if landmark_definitions:
        out += b"\x01" + struct.pack("<Q", len(landmark_definitions)) + b"".join(
            _string(n) + struct.pack("<i", i) for n, i in landmark_definitions.items())
    else:
        out += b"\x00"
    tc = np.stack([rng.uniform(0, 1, v), rng.uniform(0, 1, v)], -1)
    out += struct.pack("<Q", v) + tc.astype("<f8").tobytes()
    out += _tri_list(np.zeros((0, 3)))
    Path(path).write_bytes(out)
    gt["uv"] = np.stack([tc[:, 0], 1.0 - tc[:, 1]], -1)
    return gt


def write_eos_blendshapes(path: Path, n_vertices: int, names=("anger", "smile", "surprise"),
                          seed: int = 0) -> np.ndarray:
    """``expression_blendshapes_3448.bin``: vector<Blendshape{string name, VectorXf}>."""
    rng = np.random.default_rng(seed)
    d = rng.normal(0, 2.0, (len(names), n_vertices, 3))
    Path(path).write_bytes(_blendshapes([(n, flat(x)) for n, x in zip(names, d, strict=True)]))
    return d


# ------------------------------------------------------------------------------------------------
# FaceWarehouse-style core tensor (layout UNVERIFIED, see jaxface.models.facewarehouse)
# ------------------------------------------------------------------------------------------------

def write_facewarehouse_core(path: Path, *, k_id: int = 4, k_exp: int = 5, seed: int = 0,
                             header_order: tuple[str, str, str] = ("id", "exp", "coord")
                             ) -> dict[str, Any]:
    """int32 x 3 header (dims in ``header_order``), then float32 data in C order of those dims.
    The core is built so that S(w_id, e_j) is a plausible face: mean shape + identity and
    expression offsets."""
    verts, tri = cap_mesh(seed=seed)
    v = verts.shape[0]
    rng = np.random.default_rng(seed)
    core = rng.normal(0, 1.0, (k_id, k_exp, v, 3))
    core[0] += verts[None]  # identity 0 carries the mean face
    by_name = {"id": k_id, "exp": k_exp, "coord": 3 * v}
    dims = tuple(by_name[a] for a in header_order)
    data = np.transpose(core.reshape(k_id, k_exp, 3 * v),
                        [("id", "exp", "coord").index(a) for a in header_order])
    Path(path).write_bytes(struct.pack("<3i", *dims) + data.astype("<f4").tobytes())
    return dict(core=core.astype(np.float32).astype(np.float64), triangles=tri)


def write_facewarehouse_shape_bs(path: Path, n_verts: int = 30, n_shapes: int = 46,
                                 seed: int = 0) -> np.ndarray:
    """FaceWarehouse ``Tester_<i>/Blendshape/shape.bs``: int32 nShapes, nVerts, nFaces, then
    (1 + nShapes) x nVerts x 3 float32 (neutral first, xyz interleaved). Returns the shapes."""
    rng = np.random.default_rng(seed)
    shapes = rng.normal(0, 1.0, (1 + n_shapes, n_verts, 3)).astype(np.float32)
    Path(path).write_bytes(struct.pack("<3i", n_shapes, n_verts, 2 * n_verts)
                           + shapes.astype("<f4").tobytes())
    return shapes
