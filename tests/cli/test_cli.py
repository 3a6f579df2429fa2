"""The ``jaxface`` command line: help, subcommand registry, ``models info``, the demo."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from jaxface.cli import SUBCOMMANDS, build_parser, main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as ex:
        main(["--help"])
    assert ex.value.code == 0
    out = capsys.readouterr().out
    for name in ("demo", "fit", "models", "bench"):
        assert name in SUBCOMMANDS and name in out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_fit_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    for flag in ("--landmarks", "--detector", "--model", "--video", "--out", "--resume"):
        assert flag in out
    args = build_parser().parse_args(["fit", "photos", "--out", "o"])
    assert (args.input, args.detector, args.model, args.video, args.resume) == (
        "photos", "mediapipe", "default", False, False)
    with pytest.raises(SystemExit):  # --out is required
        build_parser().parse_args(["fit", "photos"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fit", "photos", "--out", "o", "--detector", "opencv"])


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "missing.jpg"), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "jaxface fit: error:" in err and "missing.jpg" in err and "Traceback" not in err
    assert main(["fit", str(tmp_path), "--out", str(tmp_path / "o")]) == 1  # empty folder
    assert "no images" in capsys.readouterr().err
    assert main(["fit", str(tmp_path), "--video", "--out", str(tmp_path / "o")]) == 1
    assert "needs a video file" in capsys.readouterr().err


def test_models_info_default(capsys):
    assert main(["models", "info", "default"]) == 0
    out = capsys.readouterr().out
    assert "vertices:" in out and "ibug68 (68)" in out


def test_console_entry_point_runs():
    # `python -m jaxface` is the same entry point as the installed `jaxface` script
    res = subprocess.run([sys.executable, "-m", "jaxface", "--version"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("jaxface ")


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"input.png", "landmarks.png", "overlay.png", "mesh.obj", "result.json",
            "photometric.png", "texture.png", "textured.obj", "textured.glb", "frontal.png",
            "relit.png"} <= names
    res = json.loads((out / "result.json").read_text())
    assert len(res["landmarks2d"]) == 68 and res["landmark_rmse_px"] < 10.0
    assert np.asarray(res["sh"]).shape == (9, 3)
    assert 0.0 < res["photometric_error"] < 0.2


def test_bench_runs_each_script_with_timeout_and_extra_args(tmp_path, capsys):
    """``jaxface bench`` on stand-in benchmark scripts: results are tabled, per-benchmark
    ``--args`` arrive, a failing and a stuck benchmark are reported without stopping the rest."""
    d = tmp_path / "benchmarks"
    d.mkdir()
    ok = ("import json, sys\n"
          "out = sys.argv[sys.argv.index('--out') + 1]\n"
          "json.dump({'results': [{'case': 'a', 'argv': ' '.join(sys.argv[3:]), 'ms': 1.5}]},"
          " open(out, 'w'))\n")
    (d / "bench_alpha.py").write_text(ok)
    (d / "bench_broken.py").write_text("raise SystemExit(3)\n")
    (d / "bench_stuck.py").write_text("import time\ntime.sleep(60)\n")
    out = tmp_path / "out"
    rc = main(["bench", "--dir", str(d), "--out", str(out), "--timeout", "5", "--quick",
               "--args", "alpha=--x 1 --y", "stuck=--z"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "failed: broken, stuck" in captured.err and "killed after 5 s" in captured.err
    res = json.loads((out / "alpha.json").read_text())["results"][0]
    assert res["argv"] == "--quick --x 1 --y"
    assert "alpha" in captured.out and "ms=1.5" in captured.out
    assert main(["bench", "--dir", str(d), "--args", "oops"]) == 1
    assert "NAME=ARGS" in capsys.readouterr().err


def test_bench_optional_dependencies():
    from jaxface.cli.bench import _has, optional_arguments

    lmk = optional_arguments("fit_landmarks")
    assert ("--no-eos" in lmk) != _has("eos") and ("--no-dlib" in lmk) != _has("dlib")
    assert (optional_arguments("detect_fit") is None) == (not (_has("mediapipe")
                                                               and _has("dlib")))
    assert optional_arguments("render") == []
