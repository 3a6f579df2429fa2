"""The training loop: the loss decreases, a killed run resumes bit-identically, configs and the
three regimes' data paths work."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxface.detect import write_pts
from jaxface.eval.datasets import load_aflw2000
from jaxface.models import load_default
from jaxface.nets import TrainConfig, load_config, load_landmark_dataset, make_decoder, train
from jaxface.nets.train import _Interrupted, _optimizer, build, make_step

TINY = dict(image_size=48, widths=(8, 12, 16), hidden=32, batch_size=4, warmup_steps=1,
            log_every=1)


@pytest.fixture(scope="module")
def model():
    return load_default()


@pytest.fixture(scope="module")
def photos(data_dir, tmp_path_factory):
    """Four real photos with their annotated landmarks as <stem>.jpg + <stem>.pts."""
    import shutil

    out = tmp_path_factory.mktemp("photos")
    for s in load_aflw2000(data_dir / "aflw2000-3d-subset")[:4]:
        shutil.copy(s.image_path, out / f"{s.name}.jpg")
        write_pts(out / f"{s.name}.pts", s.landmarks2d_reannotated
                  if s.landmarks2d_reannotated is not None else s.landmarks2d)
    return out


def test_loss_decreases_on_a_fixed_batch(model, photos):
    """A few steps on one batch of real crops (landmark loss through the decoder) lower it."""
    cfg = TrainConfig(regime="self", data=str(photos), steps=30, learning_rate=3e-3,
                      w_parameter=0.0, w_vertex=0.0, w_landmark=1.0, **TINY)
    enc, dec, _ = build(cfg, model)
    ds = load_landmark_dataset(dec, sorted(photos.glob("*.jpg")), sorted(photos.glob("*.pts")))
    batch = ds.data
    gd, params = nnx.split(enc)
    params = nnx.to_pure_dict(params)
    opt = _optimizer(cfg)
    state = {"params": params, "opt_state": opt.init(params), "step": jax.numpy.int32(0)}
    step = make_step(cfg, gd, opt)
    losses = []
    for _ in range(25):
        state, m = step(state, batch, dec)
        losses.append(float(m["loss"]))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses


def test_kill_and_resume_equals_uninterrupted(model, photos, tmp_path):
    cfg = TrainConfig(regime="self", data=str(photos), steps=6, checkpoint_every=2,
                      w_parameter=0.0, w_vertex=0.0, w_landmark=1.0, w_regularizer=1e-3,
                      **TINY)
    full = train(cfg, tmp_path / "a", progress=False, model=model)
    with pytest.raises(_Interrupted):
        train(cfg, tmp_path / "b", progress=False, model=model, _stop_after=3)
    # killed after step 3: the newest checkpoint is step 2; step 3's log line was written
    resumed = train(cfg, tmp_path / "b", progress=False, model=model)
    assert resumed.metrics[0]["step"] == 3
    a = jax.tree.leaves(full.state["params"])
    b = jax.tree.leaves(resumed.state["params"])
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))
    la = [json.loads(x) for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    assert (tmp_path / "b/encoder.npz").is_file()
    # another configuration in the same directory is refused
    with pytest.raises(ValueError, match="another configuration"):
        train(dataclasses.replace(cfg, seed=1), tmp_path / "b", progress=False, model=model)


def test_generate_and_render_steps(model, tmp_path):
    """Generate & Render: synthetic batches made in JAX each step, every loss term live."""
    cfg = TrainConfig(regime="generate", steps=2, w_photometric=0.5, w_regularizer=1e-3,
                      **TINY)
    res = train(cfg, None, progress=False, model=model)
    last = res.metrics[-1]
    for k in ("parameter", "vertex", "landmark", "photometric", "regularizer", "loss"):
        assert np.isfinite(last[k]), k
    assert last["photometric"] > 0


def test_config_file_and_errors(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('regime = "self"\ndata = "photos"\nsteps = 3\nwidths = [8, 16]\n')
    cfg = load_config(p)
    assert cfg.widths == (8, 16) and cfg.data == str((tmp_path / "photos").resolve())
    p.write_text("stepz = 3\n")
    with pytest.raises(ValueError, match="unknown training option"):
        load_config(p)
    with pytest.raises(ValueError, match="regime"):
        TrainConfig(regime="gan")
    with pytest.raises(ValueError, match="needs 'data'"):
        TrainConfig(regime="fit")


def test_dataset_errors(model, tmp_path):
    dec = make_decoder(model, 48)
    with pytest.raises(ValueError, match="landmark sets"):
        load_landmark_dataset(dec, [np.zeros((60, 60, 3))], [])
    with pytest.raises(ValueError, match="68, 2"):
        load_landmark_dataset(dec, [np.zeros((60, 60, 3))], [np.zeros((5, 2))])
    from jaxface.nets import load_fit_dataset

    with pytest.raises(FileNotFoundError, match="jaxface fit"):
        load_fit_dataset(dec, tmp_path)


def test_data_parallel_over_two_devices_matches_one(photos, tmp_path):
    """The batch is sharded over a device mesh: two (host-platform) devices give the same
    training trajectory as one, up to float reassociation in the gradient all-reduce."""
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import json, sys
        import jax, numpy as np
        from jaxface.nets import TrainConfig, train
        cfg = TrainConfig(regime="self", data={str(photos)!r}, steps=3, w_parameter=0.0,
                          w_vertex=0.0, w_landmark=1.0, image_size=48, widths=(8, 12, 16),
                          hidden=32, batch_size=4, warmup_steps=1, log_every=1)
        res = train(cfg, None, progress=False)
        print(json.dumps({{"devices": len(jax.devices()),
                          "loss": [m["loss"] for m in res.metrics]}}))
    """)
    out = {}
    for n in (1, 2):
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                            + f" --xla_force_host_platform_device_count={n}").strip()
        env["JAX_PLATFORMS"] = "cpu"
        r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        out[n] = json.loads(r.stdout.strip().splitlines()[-1])
    assert out[1]["devices"] == 1 and out[2]["devices"] == 2
    np.testing.assert_allclose(out[2]["loss"], out[1]["loss"], rtol=1e-4)


def test_sigkill_and_resume_equals_uninterrupted(model, photos, tmp_path):
    """`jaxface train` killed with SIGKILL mid-run, then run again: the resumed run ends with
    exactly the weights of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg_file = tmp_path / "tiny.toml"
    cfg_file.write_text(f'regime = "self"\ndata = "{photos}"\nimage_size = 48\n'
                        'widths = [8, 12, 16]\nhidden = 32\nbatch_size = 4\nsteps = 120\n'
                        'checkpoint_every = 3\nkeep_checkpoints = 2\nw_parameter = 0.0\n'
                        'w_vertex = 0.0\nw_landmark = 1.0\nwarmup_steps = 1\nlog_every = 1\n')
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "jaxface", "train", "--config",
                             str(cfg_file), "--out", str(run), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while not (run / "checkpoints" / "9").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() - t0 < 300, "no checkpoint after 300 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    cfg = load_config(cfg_file)
    resumed = train(cfg, run, progress=False, model=model)
    assert resumed.metrics[0]["step"] > 9
    full = train(cfg, None, progress=False, model=model)
    a = jax.tree.leaves(full.state["params"])
    b = jax.tree.leaves(resumed.state["params"])
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 121))
