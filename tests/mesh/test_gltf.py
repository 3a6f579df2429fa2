"""glTF / GLB and OBJ+MTL+PNG export: parse the files back and check their structure."""

from __future__ import annotations

import base64
import json
import struct

import imageio.v3 as iio
import numpy as np
import pytest

from jaxface.mesh.gltf import build_gltf, encode_png, write_gltf, write_textured_obj
from jaxface.mesh.io import read_obj

_SIZES = {5126: 4, 5125: 4}
_NCOMP = {"SCALAR": 1, "VEC2": 2, "VEC3": 3}


def cube_with_seams():
    """A unit cube (mm) with per-face UVs: 8 vertices, 14 uv points, seams everywhere."""
    v = np.array([[x, y, z] for x in (0, 10) for y in (0, 10) for z in (0, 10)], np.float32)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    tri, uvt, uv = [], [], []
    for q, (a, b, c, d) in enumerate(quads):
        base = len(uv)
        u0 = q / 6.0
        uv += [[u0, 0.0], [u0 + 1 / 6, 0.0], [u0 + 1 / 6, 1.0], [u0, 1.0]]
        tri += [[a, b, c], [a, c, d]]
        uvt += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
    return v, np.array(tri, np.int32), np.array(uv, np.float32), np.array(uvt, np.int32)


def accessor_data(doc, blob, k):
    acc = doc["accessors"][k]
    view = doc["bufferViews"][acc["bufferView"]]
    n = _NCOMP[acc["type"]]
    dtype = np.float32 if acc["componentType"] == 5126 else np.uint32
    start = view["byteOffset"] + acc.get("byteOffset", 0)
    assert view["byteLength"] >= acc["count"] * n * _SIZES[acc["componentType"]]
    assert start % 4 == 0
    return np.frombuffer(blob, dtype, acc["count"] * n, start).reshape(acc["count"], n)


def check_document(doc, blob, verts, tri, uv, uvt, texture):
    """Validator-like structural checks (glTF 2.0 core + what we rely on)."""
    assert doc["asset"]["version"] == "2.0"
    assert doc["buffers"][0]["byteLength"] == len(blob)
    for view in doc["bufferViews"]:
        assert view["buffer"] == 0
        assert view["byteOffset"] + view["byteLength"] <= len(blob)
    prim = doc["meshes"][0]["primitives"][0]
    assert prim["mode"] == 4
    attrs = prim["attributes"]
    pos = accessor_data(doc, blob, attrs["POSITION"])
    nrm = accessor_data(doc, blob, attrs["NORMAL"])
    tc = accessor_data(doc, blob, attrs["TEXCOORD_0"])
    idx = accessor_data(doc, blob, prim["indices"])[:, 0]
    acc_pos = doc["accessors"][attrs["POSITION"]]
    np.testing.assert_allclose(acc_pos["min"], pos.min(0))
    np.testing.assert_allclose(acc_pos["max"], pos.max(0))
    assert doc["bufferViews"][acc_pos["bufferView"]]["target"] == 34962
    assert doc["bufferViews"][doc["accessors"][prim["indices"]]["bufferView"]]["target"] == 34963
    # every attribute has one entry per (split) vertex; indices cover them
    assert len(pos) == len(nrm) == len(tc)
    assert len(idx) == 3 * len(tri) and idx.max() < len(pos)
    assert len(np.unique(np.stack([tri.reshape(-1), uvt.reshape(-1)], 1), axis=0)) == len(pos)
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-5)
    # the triangles reference the same positions (in metres) and uv (t flipped)
    np.testing.assert_allclose(pos[idx].reshape(-1, 3, 3), verts[tri] * 0.001, atol=1e-7)
    flipped = np.stack([uv[uvt][..., 0], 1.0 - uv[uvt][..., 1]], -1)
    np.testing.assert_allclose(tc[idx].reshape(-1, 3, 2), flipped, atol=1e-7)
    # the texture: material -> texture -> image -> PNG bytes in a buffer view
    mat = doc["materials"][prim["material"]]
    t = doc["textures"][mat["pbrMetallicRoughness"]["baseColorTexture"]["index"]]
    img = doc["images"][t["source"]]
    assert img["mimeType"] == "image/png"
    view = doc["bufferViews"][img["bufferView"]]
    png = blob[view["byteOffset"]: view["byteOffset"] + view["byteLength"]]
    decoded = iio.imread(png, extension=".png")
    np.testing.assert_array_equal(decoded, np.round(texture * 255).astype(np.uint8))


@pytest.fixture
def textured():
    v, tri, uv, uvt = cube_with_seams()
    tex = np.random.default_rng(1).random((8, 12, 3)).astype(np.float32)
    return v, tri, uv, uvt, tex


def test_glb_round_trip(tmp_path, textured):
    v, tri, uv, uvt, tex = textured
    p = write_gltf(tmp_path / "cube.glb", v, tri, uv=uv, uv_triangles=uvt, texture=tex)
    data = p.read_bytes()
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert (magic, version, length) == (0x46546C67, 2, len(data))
    jlen, jtype = struct.unpack_from("<II", data, 12)
    assert jtype == 0x4E4F534A and jlen % 4 == 0
    doc = json.loads(data[20:20 + jlen])
    blen, btype = struct.unpack_from("<II", data, 20 + jlen)
    assert btype == 0x004E4942 and blen % 4 == 0
    blob = data[28 + jlen: 28 + jlen + blen]
    assert 28 + jlen + blen == len(data)
    assert "uri" not in doc["buffers"][0]
    check_document(doc, blob, v, tri, uv, uvt, tex)
    assert not list(tmp_path.glob("*.tmp"))


def test_gltf_embedded_round_trip(tmp_path, textured):
    v, tri, uv, uvt, tex = textured
    p = write_gltf(tmp_path / "cube.gltf", v, tri, uv=uv, uv_triangles=uvt, texture=tex)
    doc = json.loads(p.read_text())
    uri = doc["buffers"][0]["uri"]
    prefix = "data:application/octet-stream;base64,"
    assert uri.startswith(prefix)
    blob = base64.b64decode(uri[len(prefix):])
    check_document(doc, blob, v, tri, uv, uvt, tex)
    # same document as the builder's
    doc2, blob2 = build_gltf(v, tri, uv=uv, uv_triangles=uvt, texture=tex)
    assert blob2 == blob and doc2["accessors"] == doc["accessors"]


def test_gltf_bad_input(tmp_path, textured):
    v, tri, uv, uvt, tex = textured
    with pytest.raises(ValueError, match=".glb or .gltf"):
        write_gltf(tmp_path / "x.obj", v, tri)
    with pytest.raises(ValueError, match="index outside"):
        write_gltf(tmp_path / "x.glb", v[:3], tri)
    with pytest.raises(ValueError, match="uv"):
        write_gltf(tmp_path / "x.glb", v, tri, texture=tex)
    # untextured meshes are fine: no material, no TEXCOORD_0
    doc, _ = build_gltf(v, tri)
    prim = doc["meshes"][0]["primitives"][0]
    assert "material" not in prim and "TEXCOORD_0" not in prim["attributes"]
    assert doc["accessors"][prim["attributes"]["POSITION"]]["count"] == 8


def test_png_encoder(tmp_path):
    rng = np.random.default_rng(0)
    for shape in [(5, 7), (5, 7, 3), (4, 3, 4)]:
        a = rng.integers(0, 256, shape).astype(np.uint8)
        np.testing.assert_array_equal(iio.imread(encode_png(a), extension=".png"), a)
    with pytest.raises(ValueError, match="image"):
        encode_png(np.zeros((2, 2, 2)))


def test_textured_obj(tmp_path, textured):
    v, tri, uv, uvt, tex = textured
    v = np.concatenate([v, [[99.0, 99.0, 99.0]]]).astype(np.float32)  # an unused vertex
    obj, mtl, png = write_textured_obj(tmp_path / "mesh.obj", v, texture=tex, triangles=tri,
                                       uv=uv, uv_triangles=uvt)
    assert (obj.name, mtl.name, png.name) == ("mesh.obj", "mesh.mtl", "texture.png")
    mesh = read_obj(obj)
    assert mesh.mtllib == "mesh.mtl" and mesh.material_names == ("face",)
    assert len(mesh.vertices) == 8  # the unused vertex is dropped
    np.testing.assert_allclose(mesh.vertices[mesh.triangles], v[tri], atol=1e-5)
    np.testing.assert_allclose(mesh.uv[mesh.uv_triangles], uv[uvt], atol=1e-6)
    lines = mtl.read_text().splitlines()
    assert "newmtl face" in lines and "map_Kd texture.png" in lines
    np.testing.assert_array_equal(iio.imread(png), np.round(tex * 255).astype(np.uint8))
    assert not list(tmp_path.glob("*.tmp*"))
