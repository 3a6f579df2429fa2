"""``jaxface models info|convert|add|list`` on local fixture files."""

from __future__ import annotations

import hashlib

import numpy as np

from jaxface.cli import main
from jaxface.models.morphable import load_npz, vertices
from tests.models import fixtures as fx


def test_convert_flame_and_info(tmp_path, capsys, rng):
    fx.write_flame_pkl(tmp_path / "generic_model.pkl")
    out = tmp_path / "flame.npz"
    assert main(["models", "convert", str(tmp_path / "generic_model.pkl"), "--format", "flame",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "5 joints" in text and "36 pose correctives" in text
    m = load_npz(out)
    assert m.articulation is not None and m.n_expression == 100
    pose = 0.2 * rng.normal(size=(5, 3))
    assert np.asarray(vertices(m, None, None, pose)).shape == (m.n_vertices, 3)
    assert main(["models", "info", str(out)]) == 0  # default format: auto -> npz
    assert "identity:    300 modes" in capsys.readouterr().out
    assert main(["models", "info", str(tmp_path / "generic_model.pkl"), "--format",
                 "flame"]) == 0
    assert "articulation: 5 joints" in capsys.readouterr().out


def test_convert_sfm_with_eos_mapping(tmp_path, capsys, data_dir):
    fx.write_sfm_bin(tmp_path / "sfm_shape_3448.bin")
    eos = data_dir / "eos-landmark-mappings"
    out = tmp_path / "sfm.npz"
    assert main(["models", "convert", str(tmp_path / "sfm_shape_3448.bin"), "--format", "sfm",
                 "--out", str(out), "--landmarks", str(eos / "ibug_to_sfm.txt"),
                 "--contours", str(eos / "sfm_model_contours.json"),
                 "--basis-dtype", "float16"]) == 0
    assert "ibug68 (66 of 68 defined)" in capsys.readouterr().out
    m = load_npz(out)
    assert len(m.landmarks["ibug68"]) == 68 and "ibug68" in m.contours


def test_add_list_and_info_by_name(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JAXFACE_HOME", str(tmp_path / "home"))
    fx.write_bfm2009_mat(tmp_path / "01_MorphableModel.mat")
    src = tmp_path / "01_MorphableModel.mat"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert main(["models", "add", "bfm2009", src.as_uri(), "--sha256", digest]) == 0
    assert "verified" in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    assert "bfm2009" in capsys.readouterr().out
    assert main(["models", "info", "bfm2009"]) == 0
    assert "albedo:      4 modes + mean" in capsys.readouterr().out
    # checksum mismatch and bad input: one-line errors, exit code 1
    assert main(["models", "add", "other", str(src), "--sha256", "f" * 64]) == 1
    err = capsys.readouterr().err
    assert "mismatch" in err and "Traceback" not in err
    assert main(["models", "convert", str(src), "--format", "sfm", "--out",
                 str(tmp_path / "x.npz")]) == 1
    assert "error" in capsys.readouterr().err
    assert main(["models", "info", "no-such-model"]) == 1
    assert "jaxface models add" in capsys.readouterr().err
