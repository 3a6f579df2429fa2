"""Model cache: checksum-verified add, conversion, load_model by name/path/'default'."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from jaxface.errors import DataNotFoundError, ModelFormatError
from jaxface.models.registry import (
    ChecksumError,
    add_model,
    guess_format,
    jaxface_home,
    list_models,
    load_any,
    load_model,
)
from tests.models import fixtures as fx


def _sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("JAXFACE_HOME", str(h))
    return h


def test_home_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("JAXFACE_HOME", raising=False)
    assert jaxface_home().parts[-2:] == (".cache", "jaxface")
    monkeypatch.setenv("JAXFACE_HOME", str(tmp_path))
    assert jaxface_home() == tmp_path


def test_add_then_load_by_name(tmp_path, home, rng):
    gt = fx.write_bfm2017_h5(tmp_path / "model2017-1_bfm_nomouth.h5")
    src = tmp_path / "model2017-1_bfm_nomouth.h5"
    out = add_model("bfm2017", src.as_uri(), _sha(src).upper())  # file:// URL, upper-case hex
    assert out == home / "models" / "bfm2017.npz" and out.is_file()
    assert (home / "sources" / "bfm2017" / src.name).read_bytes() == src.read_bytes()
    man = json.loads((home / "models" / "bfm2017.json").read_text())
    assert man["sha256"] == _sha(src) and man["format"] == "bfm2017"
    m = load_model("bfm2017")
    np.testing.assert_allclose(np.asarray(m.identity_std), gt["identity_std"], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(m.mean), gt["mean"], atol=1e-3)
    assert list(list_models()) == ["bfm2017"]
    # by path (any format) and 'default'
    assert load_model(src).n_vertices == m.n_vertices
    assert load_model("default").n_vertices == 17202
    with pytest.raises(FileExistsError):
        add_model("bfm2017", src, _sha(src))
    add_model("bfm2017", src, _sha(src), overwrite=True)  # plain path


def test_checksum_mismatch_stores_nothing(tmp_path, home):
    fx.write_sfm_bin(tmp_path / "sfm.bin", n_vertices=None)
    with pytest.raises(ChecksumError, match="mismatch"):
        add_model("sfm", tmp_path / "sfm.bin", "0" * 64)
    assert not (home / "models" / "sfm.npz").exists()
    assert not any(p.name.startswith(".") for p in home.iterdir())  # temp files removed
    with pytest.raises(ValueError, match="64 hexadecimal"):
        add_model("sfm", tmp_path / "sfm.bin", "abc")
    with pytest.raises(ValueError, match="model name"):
        add_model("Bad Name", tmp_path / "sfm.bin", _sha(tmp_path / "sfm.bin"))
    with pytest.raises(DataNotFoundError):
        add_model("sfm", tmp_path / "missing.bin", "0" * 64)
    with pytest.raises(ValueError, match="scheme"):
        add_model("sfm", "ftp://example.org/sfm.bin", "0" * 64)


def test_wrong_format_is_refused_and_not_cached(tmp_path, home):
    fx.write_bfm2009_mat(tmp_path / "m.mat")
    with pytest.raises(ModelFormatError):
        add_model("flame", tmp_path / "m.mat", _sha(tmp_path / "m.mat"), format="flame")
    assert not (home / "models" / "flame.npz").exists()
    assert not (home / "sources" / "flame").exists()


def test_load_model_unknown_name(home):
    with pytest.raises(DataNotFoundError, match="jaxface models add"):
        load_model("bfm2009")


def test_guess_format_and_load_any(tmp_path):
    fx.write_bfm2009_mat(tmp_path / "a.mat")
    fx.write_deep3d_mat(tmp_path / "b.mat")
    fx.write_flame_pkl(tmp_path / "c.pkl")
    fx.write_sfm_bin(tmp_path / "d.bin", n_vertices=None)
    assert [guess_format(tmp_path / n) for n in ("a.mat", "b.mat", "c.pkl", "d.bin")] == [
        "bfm2009", "deep3d", "flame", "sfm"]
    assert load_any(tmp_path / "c.pkl").articulation is not None
    # FLAME: landmarks = static embedding, contours = the dynamic (jawline) embedding
    n_faces = load_any(tmp_path / "c.pkl").n_triangles
    fx.write_flame_static_embedding(tmp_path / "s.pkl", n_faces)
    fx.write_flame_dynamic_embedding_npy(tmp_path / "dyn.npy", n_faces)
    m = load_any(tmp_path / "c.pkl", landmarks=tmp_path / "s.pkl", contours=tmp_path / "dyn.npy")
    assert len(m.landmarks["ibug68"]) == 68 and m.contours["ibug68"].candidates.shape[0] == 17
    with pytest.raises(ValueError, match="unknown model format"):
        load_any(tmp_path / "a.mat", "bfm1999")
    with pytest.raises(ValueError, match="takes no"):
        load_any(tmp_path / "b.mat", "deep3d", contours=tmp_path / "x.json")
    (tmp_path / "x.xyz").write_text("?")
    with pytest.raises(ModelFormatError, match="--format"):
        guess_format(tmp_path / "x.xyz")
