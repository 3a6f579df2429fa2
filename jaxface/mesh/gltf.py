"""Textured mesh export: OBJ + MTL + PNG, and glTF 2.0 (``.gltf`` with an embedded base64 buffer,
or binary ``.glb``). Pure Python (``json``, ``struct``, ``zlib``), no extra dependency.

glTF specifics handled here: positions are written in metres (``scale=0.001`` from the project's
millimetres; glTF is +Y up, which the model frame of the bundled models already is), vertices
are split at UV seams (glTF has one index per vertex for all attributes), texture coordinates
are flipped to glTF's top-left origin (``t = 1 - v``), accessors carry ``min``/``max`` for
positions, and the texture is a PNG image in a buffer view with an unlit (``KHR_materials_unlit``)
material: an extracted photo texture already contains the lighting.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from jaxface._image import to_uint8

__all__ = ["encode_png", "write_gltf", "write_textured_obj"]

_FLOAT, _UINT32 = 5126, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963


def encode_png(image: Any) -> bytes:
    """PNG bytes of an (H, W[, C]) image, C in 1, 3, 4; float in [0, 1] or uint8."""
    a = to_uint8(image, layout="hwc")
    h, w, c = a.shape
    color_type = {1: 0, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + a[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _layout_arrays(layout: Any, uv: Any, uv_triangles: Any, triangles: Any):
    if layout is not None:
        return (np.asarray(layout.triangles, np.int64), np.asarray(layout.uv, np.float64),
                np.asarray(layout.uv_triangles, np.int64))
    if triangles is None:
        raise ValueError("give a UV layout or triangles (and optionally uv, uv_triangles)")
    tri = np.asarray(triangles, np.int64)
    if uv is None:
        return tri, None, None
    uvt = tri if uv_triangles is None else np.asarray(uv_triangles, np.int64)
    return tri, np.asarray(uv, np.float64), uvt


def write_textured_obj(path: str | os.PathLike, vertices: Any, layout: Any = None,
                       texture: Any = None, *, triangles: Any = None, uv: Any = None,
                       uv_triangles: Any = None, texture_name: str = "texture.png",
                       material: str = "face") -> tuple[Path, Path, Path]:
    """Write ``<path>`` (OBJ), ``<stem>.mtl`` and the texture PNG next to it.

    Args:
      path: the .obj file.
      vertices: (V, 3) positions (written as given, e.g. mm).
      layout: a :class:`jaxface.edit.UVLayout` (its triangles and atlas uv), or None and
        ``triangles`` / ``uv`` / ``uv_triangles`` given directly.
      texture: (S, S, 3) float texture, a Texture (its ``.texture``), or uint8.
      texture_name: file name of the PNG (in the same folder).
      material: the material name.

    Only the textured triangles are written; vertices unused by them are dropped (ids
    renumbered).

    Returns:
      (obj path, mtl path, png path).
    """
    from jaxface.mesh.io import write_obj
    from jaxface.mesh.types import Mesh

    obj = Path(path)
    if texture is None:
        raise ValueError("texture is required")
    tex = getattr(texture, "texture", texture)
    tri, uvs, uvt = _layout_arrays(layout, uv, uv_triangles, triangles)
    if uvs is None:
        raise ValueError("a textured OBJ needs uv coordinates")
    verts = np.asarray(vertices, np.float64).reshape(-1, 3)
    if tri.size and tri.max() >= len(verts):
        raise ValueError(f"triangles index vertex {tri.max()} but only {len(verts)} vertices")
    used, inv = np.unique(tri, return_inverse=True)
    tri_c = inv.reshape(-1, 3).astype(np.int32)
    obj.parent.mkdir(parents=True, exist_ok=True)
    mtl = obj.with_suffix(".mtl")
    png = obj.parent / texture_name
    _atomic_write(png, encode_png(tex))
    _atomic_write(mtl, (f"# jaxface\nnewmtl {material}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\n"
                        f"d 1\nillum 1\nmap_Kd {texture_name}\n").encode())
    tmp = obj.with_name(obj.name + ".tmp.obj")
    write_obj(tmp, Mesh(vertices=verts[used].astype(np.float32), triangles=tri_c,
                        uv=uvs.astype(np.float32), uv_triangles=uvt.astype(np.int32)),
              mtl_name=material, mtllib=mtl.name)
    os.replace(tmp, obj)
    return obj, mtl, png


def _split_vertices(tri: np.ndarray, uvt: np.ndarray | None):
    """Unique (vertex, uv) corner pairs -> (vertex ids (N,), uv ids (N,) | None, indices (T, 3))."""
    if uvt is None:
        used, inv = np.unique(tri.reshape(-1), return_inverse=True)
        return used, None, inv.reshape(-1, 3)
    pairs = np.stack([tri.reshape(-1), uvt.reshape(-1)], 1)
    uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
    return uniq[:, 0], uniq[:, 1], inv.reshape(-1, 3)


def _normals(verts: np.ndarray, tri: np.ndarray) -> np.ndarray:
    n = np.zeros_like(verts)
    fn = np.cross(verts[tri[:, 1]] - verts[tri[:, 0]], verts[tri[:, 2]] - verts[tri[:, 0]])
    for k in range(3):
        np.add.at(n, tri[:, k], fn)
    ln = np.linalg.norm(n, axis=1, keepdims=True)
    return (n / np.where(ln > 0, ln, 1.0)).astype(np.float32)


def _pad4(b: bytes, fill: bytes = b"\x00") -> bytes:
    return b + fill * (-len(b) % 4)


def build_gltf(vertices: Any, triangles: Any = None, *, layout: Any = None, uv: Any = None,
               uv_triangles: Any = None, texture: Any = None, normals: bool = True,
               scale: float = 0.001, name: str = "face") -> tuple[dict, bytes]:
    """The glTF JSON document and its binary buffer (see :func:`write_gltf`)."""
    tri, uvs, uvt = _layout_arrays(layout, uv, uv_triangles, triangles)
    verts = np.asarray(vertices, np.float64).reshape(-1, 3)
    if tri.ndim != 2 or tri.shape[1] != 3 or not tri.size:
        raise ValueError(f"triangles must be a non-empty (T, 3) array, got {tri.shape}")
    if tri.min() < 0 or tri.max() >= len(verts):
        raise ValueError(f"triangles index outside [0, {len(verts)})")
    if uvs is not None and (uvt.shape != tri.shape or uvt.max() >= len(uvs)):
        raise ValueError(f"uv_triangles {uvt.shape} do not match triangles {tri.shape}")
    vid, tid, idx = _split_vertices(tri, uvt)
    pos = (verts[vid] * scale).astype(np.float32)
    nrm = _normals(verts, tri)[vid] if normals else None
    tex_uv = None
    if uvs is not None:
        tex_uv = np.stack([uvs[tid, 0], 1.0 - uvs[tid, 1]], 1).astype(np.float32)
    indices = idx.astype(np.uint32).reshape(-1)

    blob = bytearray()
    views: list[dict] = []
    accessors: list[dict] = []

    def add_view(data: bytes, target: int | None) -> int:
        off = len(blob)
        blob.extend(_pad4(data))
        v: dict[str, Any] = {"buffer": 0, "byteOffset": off, "byteLength": len(data)}
        if target is not None:
            v["target"] = target
        views.append(v)
        return len(views) - 1

    def add_accessor(arr: np.ndarray, ctype: int, typ: str, target: int,
                     minmax: bool = False) -> int:
        view = add_view(arr.tobytes(), target)
        acc: dict[str, Any] = {"bufferView": view, "componentType": ctype,
                               "count": int(arr.shape[0]), "type": typ}
        if minmax:
            acc["min"] = [float(x) for x in arr.min(axis=0).reshape(-1)]
            acc["max"] = [float(x) for x in arr.max(axis=0).reshape(-1)]
        accessors.append(acc)
        return len(accessors) - 1

    attrs = {"POSITION": add_accessor(pos, _FLOAT, "VEC3", _ARRAY_BUFFER, minmax=True)}
    if nrm is not None:
        attrs["NORMAL"] = add_accessor(nrm, _FLOAT, "VEC3", _ARRAY_BUFFER)
    if tex_uv is not None:
        attrs["TEXCOORD_0"] = add_accessor(tex_uv, _FLOAT, "VEC2", _ARRAY_BUFFER)
    ind = add_accessor(indices, _UINT32, "SCALAR", _ELEMENT_ARRAY_BUFFER)
    accessors[ind]["min"] = [int(indices.min())]
    accessors[ind]["max"] = [int(indices.max())]
    prim: dict[str, Any] = {"attributes": attrs, "indices": ind, "mode": 4}
    doc: dict[str, Any] = {
        "asset": {"version": "2.0", "generator": "jaxface"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": name}],
        "meshes": [{"name": name, "primitives": [prim]}],
    }
    if texture is not None:
        if tex_uv is None:
            raise ValueError("a texture needs uv coordinates")
        png = encode_png(getattr(texture, "texture", texture))
        img_view = add_view(png, None)
        doc["images"] = [{"bufferView": img_view, "mimeType": "image/png", "name": "texture"}]
        doc["samplers"] = [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071,
                            "wrapT": 33071}]
        doc["textures"] = [{"sampler": 0, "source": 0}]
        doc["materials"] = [{"name": name, "doubleSided": False,
                             "pbrMetallicRoughness": {"baseColorTexture": {"index": 0},
                                                      "metallicFactor": 0.0,
                                                      "roughnessFactor": 1.0},
                             "extensions": {"KHR_materials_unlit": {}}}]
        doc["extensionsUsed"] = ["KHR_materials_unlit"]
        prim["material"] = 0
    doc["bufferViews"] = views
    doc["accessors"] = accessors
    doc["buffers"] = [{"byteLength": len(blob)}]
    return doc, bytes(blob)


def write_gltf(path: str | os.PathLike, vertices: Any, triangles: Any = None, *,
               layout: Any = None, uv: Any = None, uv_triangles: Any = None,
               texture: Any = None, normals: bool = True, scale: float = 0.001,
               name: str = "face") -> Path:
    """Write a glTF 2.0 mesh: ``.glb`` (binary container) or ``.gltf`` (JSON with the buffer
    embedded as a base64 data URI), chosen by the suffix.

    Args:
      path: output file (``.glb`` or ``.gltf``).
      vertices: (V, 3) positions (mm; multiplied by ``scale``, default to metres).
      triangles: (T, 3) vertex ids (or ``layout``'s).
      layout: a :class:`jaxface.edit.UVLayout` giving triangles, uv and uv_triangles.
      uv: (Vt, 2) OBJ-convention uv (v up); uv_triangles: (T, 3) ids into uv (default
        ``triangles``: per-vertex uv).
      texture: (S, S, 3) float/uint8 image (or a Texture), embedded as PNG.
      normals: write smooth per-vertex normals.

    Returns:
      the path written (atomically).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".glb", ".gltf"):
        raise ValueError(f"glTF path must end in .glb or .gltf, got {p.name!r}")
    doc, blob = build_gltf(vertices, triangles, layout=layout, uv=uv, uv_triangles=uv_triangles,
                           texture=texture, normals=normals, scale=scale, name=name)
    p.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gltf":
        doc["buffers"][0]["uri"] = ("data:application/octet-stream;base64,"
                                    + base64.b64encode(blob).decode("ascii"))
        _atomic_write(p, json.dumps(doc, indent=1).encode())
        return p
    js = _pad4(json.dumps(doc, separators=(",", ":")).encode(), b" ")
    bin_chunk = _pad4(blob)
    total = 12 + 8 + len(js) + 8 + len(bin_chunk)
    data = (struct.pack("<III", 0x46546C67, 2, total)
            + struct.pack("<II", len(js), 0x4E4F534A) + js
            + struct.pack("<II", len(bin_chunk), 0x004E4942) + bin_chunk)
    _atomic_write(p, data)
    return p
