"""`jaxface train` / `jaxface predict` / `jaxface fit --init` end to end (a tiny network trained
for a few steps: these check the plumbing; accuracy is benchmarks/bench_encoder.py's job)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from jaxface.cli import main
from jaxface.detect import write_pts
from jaxface.eval.datasets import load_aflw2000
from jaxface.nets import CheckpointError, load_encoder

KEYS = {"landmarks2d", "rotation", "translation", "camera", "identity", "expression",
        "landmark_rmse_px", "input", "landmarks_source", "observed_landmarks"}


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    """Two AFLW photos with .pts, and a tiny self-supervised run trained on them by the CLI."""
    photos = tmp_path_factory.mktemp("photos")
    for s in load_aflw2000(data_dir / "aflw2000-3d-subset")[:2]:
        shutil.copy(s.image_path, photos / f"{s.name}.jpg")
        write_pts(photos / f"{s.name}.pts", s.landmarks2d)
    cfg = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    cfg.write_text(f'regime = "self"\ndata = "{photos}"\nimage_size = 48\n'
                   'widths = [8, 12, 16]\nhidden = 32\nbatch_size = 2\nsteps = 3\n'
                   'checkpoint_every = 2\nw_parameter = 0.0\nw_vertex = 0.0\n'
                   'w_landmark = 1.0\nwarmup_steps = 1\nlog_every = 1\n')
    out = tmp_path_factory.mktemp("run")
    rc = main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"])
    return photos, out, rc


def test_train_cli_writes_a_run(run):
    _, out, rc = run
    assert rc == 0
    assert (out / "config.json").is_file() and (out / "encoder.npz").is_file()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["2", "3"]


def test_checkpoint_forms_agree(run):
    _, out, _ = run
    a, meta = load_encoder(out)
    b, _ = load_encoder(out / "encoder.npz")
    x = np.random.default_rng(0).uniform(size=(2, 48, 48, 3)).astype(np.float32)
    assert meta["step"] == 3
    np.testing.assert_allclose(a(x), b(x), atol=2e-2)  # float16 export


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_encoder(tmp_path / "nope")
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a jaxface encoder export"):
        load_encoder(tmp_path / "x.npz")
    with pytest.raises(CheckpointError, match="not a training run"):
        load_encoder(tmp_path)


def test_predict_and_fit_init(run, tmp_path):
    photos, ckpt, _ = run
    out = tmp_path / "pred"
    rc = main(["predict", str(photos), "--checkpoint", str(ckpt / "encoder.npz"),
               "--landmarks", str(photos), "--out", str(out)])
    assert rc == 0
    stems = sorted(p.stem for p in photos.glob("*.jpg"))
    for stem in stems:
        r = json.loads((out / stem / "result.json").read_text())
        assert KEYS <= set(r) and r["iterations"] == 0
        assert np.isfinite(r["landmark_rmse_px"])
        assert (out / stem / "mesh.obj").is_file() and (out / stem / "overlay.png").is_file()
    assert json.loads((out / "failures.json").read_text()) == {}

    fit_out = tmp_path / "fit"
    one = photos / f"{stems[0]}.jpg"
    rc = main(["fit", str(one), "--landmarks", str(photos / f"{stems[0]}.pts"),
               "--init", str(ckpt), "--out", str(fit_out)])
    assert rc == 0
    r = json.loads((fit_out / stems[0] / "result.json").read_text())
    assert r["init"] == str(ckpt) and r["iterations"] > 0
    assert r["landmark_rmse_px"] < 10.0  # the fit converges from the network's start

    rc = main(["predict", str(one), "--checkpoint", str(tmp_path / "missing"),
               "--landmarks", str(photos / f"{stems[0]}.pts"), "--out", str(tmp_path / "x")])
    assert rc == 1


def test_fit_and_render_dataset_from_fit_outputs(run, tmp_path):
    """Fit & Render: `jaxface fit` results become training targets in the crop's camera."""
    import jax

    from jaxface.models import load_default
    from jaxface.nets import TrainConfig, crop_landmarks, load_fit_dataset, make_decoder, train
    from jaxface.nets.decoder import prediction_landmarks

    photos, _, _ = run
    fit_out = tmp_path / "fits"
    assert main(["fit", str(photos), "--landmarks", str(photos), "--out", str(fit_out)]) == 0
    model = load_default()
    dec = make_decoder(model, 48)
    ds = load_fit_dataset(dec, fit_out)
    assert ds.size == 2
    np.testing.assert_array_equal(ds.data.target_mask[0], [1, 1, 1, 1, 0, 0])
    for i, stem in enumerate(sorted(p.name for p in fit_out.iterdir() if p.is_dir())):
        r = json.loads((fit_out / stem / "result.json").read_text())
        tgt = jax.tree.map(lambda a, i=i: a[i], ds.data.target)
        # the fitted face, seen through the crop's camera, lands on the cropped landmarks
        # (the inner 51: the fit slid the jawline's 17 along the silhouette)
        np.testing.assert_allclose(prediction_landmarks(dec, tgt)[17:],
                                   crop_landmarks(np.asarray(r["landmarks2d"]), ds.boxes[i],
                                                  48)[17:], atol=0.05)
    cfg = TrainConfig(regime="fit", data=str(fit_out), image_size=48, widths=(8, 12, 16),
                      hidden=32, batch_size=2, steps=2, warmup_steps=1, log_every=1)
    res = train(cfg, None, progress=False, model=model)
    assert all(np.isfinite(m["loss"]) and m["parameter"] > 0 for m in res.metrics)
