"""``jaxface fit`` end to end on real photos (in-process, so the fit compiles once per run).

All the photos here are AFLW2000-3D's 450x450 images, so every fit and overlay reuses one
compiled program.
"""

from __future__ import annotations

import json
import shutil

import imageio.v3 as iio
import numpy as np
import pytest

from jaxface.cli import main
from jaxface.cli._common import ImageReadError, check_image, read_image
from jaxface.cli.fit import LandmarkInputError, check_landmarks
from jaxface.detect import read_pts, write_pts
from tests.detect import labelled

KEYS = {"landmarks2d", "rotation", "translation", "camera", "identity", "expression",
        "landmark_rmse_px", "input", "landmarks_source", "observed_landmarks"}
NAMES = ("image00050", "image02283")


@pytest.fixture(scope="module")
def folder_run(data_dir, tmp_path_factory):
    """A folder of two real photos and one corrupt file, fitted with the default detector."""
    src = tmp_path_factory.mktemp("photos")
    for name in NAMES:
        shutil.copy(data_dir / f"aflw2000-3d-subset/{name}.jpg", src)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (src / "notes.txt").write_text("not an image; ignored")
    out = tmp_path_factory.mktemp("fit-out")
    rc = main(["fit", str(src), "--out", str(out)])
    return src, out, rc


def _load(out, stem):
    return json.loads((out / stem / "result.json").read_text())


def test_folder_writes_results_and_records_failures(folder_run, data_dir):
    src, out, rc = folder_run
    assert rc == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == list(NAMES)
    failures = json.loads((out / "failures.json").read_text())
    assert list(failures) == [str(src / "broken.jpg")]
    assert "cannot read image" in failures[str(src / "broken.jpg")]
    gts = labelled.aflw_reannotated(data_dir)
    for name in NAMES:
        res = _load(out, name)
        assert KEYS <= set(res)
        lm = np.asarray(res["landmarks2d"])
        assert lm.shape == (68, 2)
        assert np.asarray(res["rotation"]).shape == (3, 3)
        assert len(res["translation"]) == 3 and res["translation"][2] > 0  # in front, mm
        assert set(res["camera"]) == {"fx", "fy", "cx", "cy"}
        assert res["landmarks_source"] == "detector:mediapipe"
        # the fitted model's landmarks land on the annotated face
        assert labelled.nme_box(lm, gts[name]) < 6.0
        assert res["landmark_rmse_px"] < 8.0
        over = iio.imread(out / name / "overlay.png")
        assert over.shape == (450, 450, 3)
        obj = (out / name / "mesh.obj").read_text().splitlines()
        verts = np.array([[float(t) for t in ln.split()[1:4]] for ln in obj
                          if ln.startswith("v ")])
        assert verts.shape[0] > 1000 and 200 < np.median(verts[:, 2]) < 5000  # camera frame, mm


def test_resume_skips_finished_images(folder_run, capsys):
    src, out, _ = folder_run
    before = {n: (out / n / "result.json").stat().st_mtime_ns for n in NAMES}
    (out / NAMES[1] / "result.json").unlink()  # as if the run had stopped before it
    assert main(["fit", str(src), "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "1 fitted, 1 skipped" in err and "1 failed" in err
    assert (out / NAMES[0] / "result.json").stat().st_mtime_ns == before[NAMES[0]]
    assert (out / NAMES[1] / "result.json").is_file()


def _pts_input(data_dir, tmp_path, name):
    """An AFLW photo's re-annotated landmarks, their .pts file in ``tmp_path``, the photo."""
    gt = labelled.aflw_reannotated(data_dir)[name]
    pts = tmp_path / f"{name}.pts"
    write_pts(pts, gt)
    return gt, pts, data_dir / f"aflw2000-3d-subset/{name}.jpg"


def test_landmarks_from_pts_file(data_dir, tmp_path):
    name = "image03614"
    gt, pts, image = _pts_input(data_dir, tmp_path, name)
    out = tmp_path / "out"
    assert main(["fit", str(image), "--landmarks", str(pts), "--out", str(out)]) == 0
    res = _load(out, name)
    assert res["landmarks_source"] == f"file:{pts}"
    np.testing.assert_allclose(res["observed_landmarks"], read_pts(pts), atol=1e-3)
    assert labelled.nme_box(np.asarray(res["landmarks2d"]), gt) < 5.0
    assert json.loads((out / "failures.json").read_text()) == {}


def test_bad_landmarks_are_failures_and_exit_1(data_dir, tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for name in ("image00050", "image02283", "image03614"):
        shutil.copy(data_dir / f"aflw2000-3d-subset/{name}.jpg", src)
    lms = tmp_path / "lms"
    lms.mkdir()
    write_pts(lms / "image00050.pts", np.zeros((5, 2)) + 100)  # wrong count
    write_pts(lms / "image02283.pts", np.full((68, 2), np.nan))  # all missing
    out = tmp_path / "out"
    assert main(["fit", str(src), "--landmarks", str(lms), "--out", str(out)]) == 1
    failures = json.loads((out / "failures.json").read_text())
    assert "68 x 2" in failures[str(src / "image00050.jpg")]
    assert "finite" in failures[str(src / "image02283.jpg")]
    assert "no landmark file" in failures[str(src / "image03614.jpg")]
    # one .pts for a folder is refused before anything runs
    assert main(["fit", str(src), "--landmarks", str(lms / "image00050.pts"),
                 "--out", str(out)]) == 1


def test_video_frames(data_dir, tmp_path):
    frame = iio.imread(data_dir / "aflw2000-3d-subset/image00050.jpg")
    video = tmp_path / "clip.mp4"
    iio.imwrite(video, np.stack([frame, frame[:, ::-1]]), plugin="pyav", codec="libx264", fps=5)
    out = tmp_path / "out"
    assert main(["fit", str(video), "--video", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["clip_000000", "clip_000001"]
    a, b = _load(out, "clip_000000"), _load(out, "clip_000001")
    assert (a["frame"], b["frame"]) == (0, 1)
    # the second frame is the mirror image: the nose tip (iBUG 30) mirrors too
    xa, xb = a["landmarks2d"][30][0], b["landmarks2d"][30][0]
    assert abs((450 - xa) - xb) < 8.0


def test_image_kinds_are_converted(tmp_path):
    grey16 = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16)
    img = check_image(grey16, "g16")
    assert img.shape == (48, 64, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img[..., 0], grey16 / 65535.0, atol=1e-6)
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 1] = 255
    np.testing.assert_allclose(check_image(rgba, "rgba")[0, 0], [0, 1, 0])
    iio.imwrite(tmp_path / "g16.png", grey16)
    np.testing.assert_allclose(read_image(tmp_path / "g16.png"), img, atol=1e-6)
    with pytest.raises(ImageReadError, match="tiny.*too small"):
        check_image(np.zeros((4, 4, 3), np.uint8), "tiny")
    with pytest.raises(ImageReadError, match="odd.*shape"):
        check_image(np.zeros((10, 10, 2), np.uint8), "odd")
    with pytest.raises(ImageReadError, match="nan.*NaN"):
        check_image(np.full((10, 10, 3), np.nan, np.float32), "nan")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")


def test_check_landmarks_messages():
    good = np.stack(np.meshgrid(np.linspace(100, 200, 17), np.linspace(100, 200, 4)),
                    -1).reshape(-1, 2)[:68]
    np.testing.assert_allclose(check_landmarks(good, (300, 300), 68, "a"), good, rtol=1e-6)
    part = good.copy()
    part[:10] = np.nan  # missing landmarks are allowed
    assert np.isnan(check_landmarks(part, (300, 300), 68, "a")[0, 0])
    with pytest.raises(LandmarkInputError, match="x.jpg.*outside the 300x300 image"):
        check_landmarks(good + 1000, (300, 300), 68, "x.jpg")
    with pytest.raises(LandmarkInputError, match="too small"):
        check_landmarks(100 + good / 50, (300, 300), 68, "x.jpg")
    with pytest.raises(LandmarkInputError, match="68 x 2"):
        check_landmarks(good.T, (300, 300), 68, "x.jpg")


def test_missing_model_file_is_a_one_line_error(tmp_path, capsys):
    img = tmp_path / "a.png"
    iio.imwrite(img, np.zeros((32, 32, 3), np.uint8))
    assert main(["fit", str(img), "--model", str(tmp_path / "m.npz"), "--out",
                 str(tmp_path / "o")]) == 1
    assert "m.npz" in capsys.readouterr().err


@pytest.mark.slow
def test_video_is_fitted_jointly(data_dir, tmp_path):
    """A clip of a photo panning sideways: one identity, frames in order, steady motion."""
    import os

    n = 3 if os.environ.get("JAXFACE_SLOW") == "reduced" else 6
    img = iio.imread(data_dir / "aflw2000-3d-subset/image00050.jpg")[:448, :448]
    frames = np.stack([np.roll(img, 4 * i, axis=1) for i in range(n)])
    clip = tmp_path / "clip.mp4"
    iio.imwrite(clip, frames, plugin="pyav", codec="libx264", fps=10)
    out = tmp_path / "out"
    assert main(["fit", str(clip), "--video", "--out", str(out)]) == 0
    res = [_load(out, f"clip_{i:06d}") for i in range(n)]
    assert [r["frame"] for r in res] == list(range(n))
    assert all(r["identity"] == res[0]["identity"] for r in res)
    tx = np.array([r["translation"][0] for r in res])
    # the picture moves right by 4 px per frame: the face must move right, steadily
    assert np.all(np.diff(tx) > 0)
    assert np.ptp(np.diff(tx)) < 0.5 * np.mean(np.diff(tx))


def test_photometric_fit_with_free_albedo(data_dir, tmp_path):
    """``jaxface fit --photometric --free-albedo``: the photometric keys in result.json, the
    albedo kind, and an overlay whose face is the rendered fit."""
    name = "image02283"
    gt, pts, image = _pts_input(data_dir, tmp_path, name)
    out = tmp_path / "out"
    assert main(["fit", str(image), "--landmarks", str(pts), "--photometric", "--free-albedo",
                 "--out", str(out)]) == 0
    res = _load(out, name)
    assert res["albedo"]["kind"] == "harmonics+free"
    assert np.asarray(res["sh"]).shape == (9, 3)
    assert 0.0 < res["photometric_error"] < 0.12
    assert res["photometric"]["landmark_rmse_px"] < 8.0
    png = iio.imread(out / name / "photometric.png")
    photo = iio.imread(image)
    assert png.shape == photo.shape
    # the face is re-rendered (it matches the photo closely: ~4 % of the pixels differ by
    # more than 30 levels) and the photo is kept around it
    diff = np.abs(png.astype(float) - photo.astype(float)).sum(-1) > 30
    assert 0.005 < diff.mean() < 0.3
    assert not diff[:20].any() and not diff[-20:].any()
