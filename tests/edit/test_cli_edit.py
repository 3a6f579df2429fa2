"""``jaxface edit`` on a result folder written like ``jaxface fit``'s."""

from __future__ import annotations

import json
import struct

import imageio.v3 as iio
import numpy as np
import pytest

from jaxface.cli import main
from jaxface.edit import load_fit
from jaxface.viz import to_uint8
from tests.edit import synth


@pytest.fixture(scope="module")
def result_dir(tmp_path_factory):
    model = synth.default_model()
    mean = np.asarray(model.mean, np.float64).reshape(-1, 3)
    fit = synth.make_fit(model, yaw=0.3)
    image = synth.photo(model, fit, synth.pattern(mean))
    d = tmp_path_factory.mktemp("fit") / "photo"
    d.mkdir()
    iio.imwrite(d.parent / "photo.png", to_uint8(image))
    cam = fit.camera
    payload = {"model": model.name, "image_size": list(synth.SIZE), "input": "photo.png",
               "identity": fit.identity.tolist(), "expression": fit.expression.tolist(),
               "rotation": fit.rotation.tolist(), "translation": fit.translation.tolist(),
               "camera": {"fx": float(cam.fx), "fy": float(cam.fy), "cx": float(cam.cx),
                          "cy": float(cam.cy)}}
    (d / "result.json").write_text(json.dumps(payload))
    return d


def test_load_fit(result_dir, tmp_path):
    fit, payload = load_fit(result_dir)
    assert fit.rotation.shape == (3, 3) and fit.sh is None
    assert payload["input"] == "photo.png"
    # a photometric result's keys are read too
    photometric = json.loads((result_dir / "result.json").read_text())
    photometric.update(sh=np.eye(9, 3).tolist(),
                       albedo={"kind": "harmonics", "coefficients": [0.1, 0.2],
                               "mean_rgb": [0.7, 0.5, 0.4]})
    (tmp_path / "p.json").write_text(json.dumps(photometric))
    pfit, _ = load_fit(tmp_path / "p.json")
    np.testing.assert_allclose(pfit.sh, np.eye(9, 3))
    np.testing.assert_allclose(pfit.albedo, [0.7, 0.5, 0.4])
    bad = tmp_path / "result.json"
    bad.write_text(json.dumps({"identity": [0.0]}))
    with pytest.raises(Exception, match="malformed"):
        load_fit(bad)
    with pytest.raises(FileNotFoundError):
        load_fit(tmp_path / "nope")


def test_cli_texture_and_relight(result_dir, tmp_path):
    out = tmp_path / "out"
    # the photo is found next to the result folder (jaxface fit's OUT/<stem>/ layout)
    assert main(["edit", "texture", str(result_dir), "--out", str(out),
                 "--texture-size", "32"]) == 0
    for name in ("texture.png", "texture_visibility.png", "textured.obj", "textured.mtl",
                 "textured.glb"):
        assert (out / name).is_file(), name
    assert iio.imread(out / "texture.png").shape == (32, 32, 3)
    data = (out / "textured.glb").read_bytes()
    assert struct.unpack_from("<III", data, 0) == (0x46546C67, 2, len(data))
    assert main(["edit", "relight", str(result_dir / "result.json"), "--out", str(out),
                 "--light", "left"]) == 0
    relit = iio.imread(out / "relit.png")
    photo = iio.imread(result_dir.parent / "photo.png")
    assert relit.shape == photo.shape
    assert np.any(relit != photo)
    assert not list(out.glob("*.tmp*"))


def test_cli_errors_write_nothing(result_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["edit", "expression", str(result_dir), "--out", str(out),
                 "--set", "notAShape=1"]) == 1
    assert "no expression 'notAShape'" in capsys.readouterr().err
    assert main(["edit", "expression", str(result_dir), "--out", str(out),
                 "--set", "jawOpen"]) == 1
    assert "NAME=WEIGHT" in capsys.readouterr().err
    small = tmp_path / "small.png"
    iio.imwrite(small, np.zeros((40, 40, 3), np.uint8))
    assert main(["edit", "frontalize", str(result_dir), "--out", str(out),
                 "--image", str(small)]) == 1
    assert "image_size" in capsys.readouterr().err
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "result.json").write_text((result_dir / "result.json").read_text()
                                        .replace("photo.png", "missing.png"))
    assert main(["edit", "relight", str(lonely), "--out", str(out)]) == 1
    assert "--image" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
