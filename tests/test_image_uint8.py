"""jaxface._image.to_uint8: the one float/uint8 -> uint8 conversion behind viz, detect and gltf."""

import zlib

import numpy as np
import pytest

from jaxface._image import to_uint8
from jaxface.detect.base import as_uint8
from jaxface.mesh.gltf import encode_png
from jaxface.viz import to_uint8 as viz_to_uint8


def _levels() -> np.ndarray:
    """Every k/255, the half-way points between them, and values outside [0, 1]."""
    k = np.arange(256)
    return np.concatenate([k / 255.0, (k + 0.5) / 255.0, [-0.3, -1e-9, 1.0 + 1e-9, 1.7]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_values_round_half_even_in_input_precision(dtype):
    x = _levels().astype(dtype)
    expected = np.clip(np.round(x * dtype(255.0)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(to_uint8(x), expected)
    np.testing.assert_array_equal(to_uint8(np.arange(256) / dtype(255.0)), np.arange(256))


def test_uint8_passthrough_and_other_dtypes():
    a = np.random.default_rng(0).integers(0, 256, (4, 5, 3)).astype(np.uint8)
    assert to_uint8(a) is a  # "keep": no copy
    np.testing.assert_array_equal(to_uint8(a, "rgb"), a)
    np.testing.assert_array_equal(to_uint8(np.array([0.5, 1 / 255], np.float16)), [128, 1])
    np.testing.assert_array_equal(to_uint8(np.array([True, False])), [255, 0])
    np.testing.assert_array_equal(to_uint8(np.array([0, 1, 3])), [0, 255, 255])


def test_non_finite():
    x = np.array([np.nan, np.inf, -np.inf, 0.5], np.float32)
    np.testing.assert_array_equal(to_uint8(x), [0, 255, 0, 128])


def test_layouts():
    rng = np.random.default_rng(1)
    grey = rng.random((4, 5)).astype(np.float32)
    rgba = rng.random((4, 5, 4)).astype(np.float32)
    g8 = to_uint8(grey)
    assert g8.shape == (4, 5)
    assert to_uint8(grey, "hwc").shape == (4, 5, 1)
    for g in (grey, grey[..., None]):
        out = to_uint8(g, "rgb")
        assert out.shape == (4, 5, 3) and out.flags.c_contiguous
        np.testing.assert_array_equal(out, np.repeat(g8[..., None], 3, -1))
    out = to_uint8(rgba, "rgb")
    assert out.shape == (4, 5, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, to_uint8(rgba)[..., :3])
    out = to_uint8(rgba[:, ::-1], "hwc")
    assert out.shape == (4, 5, 4) and out.flags.c_contiguous
    with pytest.raises(ValueError, match="HxWx3"):
        to_uint8(np.zeros((4, 5, 2)), "rgb")
    with pytest.raises(ValueError, match="image must be"):
        to_uint8(np.zeros((4, 5, 2)), "hwc")
    with pytest.raises(ValueError, match="image must be"):
        to_uint8(np.zeros((3, 4, 5, 3)), "hwc")
    with pytest.raises(ValueError, match="layout"):
        to_uint8(grey, "bgr")


def test_callers_share_it():
    img = np.random.default_rng(2).random((6, 7, 4)).astype(np.float32)
    assert viz_to_uint8 is to_uint8
    np.testing.assert_array_equal(as_uint8(img), to_uint8(img[..., :3]))
    # the PNG encoder writes exactly these bytes (rows of filter type 0)
    png = encode_png(img)
    start = png.index(b"IDAT") + 4
    length = int.from_bytes(png[start - 8:start - 4], "big")
    raw = zlib.decompress(png[start:start + length])
    rows = np.frombuffer(raw, np.uint8).reshape(6, 1 + 7 * 4)
    np.testing.assert_array_equal(rows[:, 1:].reshape(6, 7, 4), to_uint8(img))
