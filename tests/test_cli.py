"""`python -m vae_lib train | evaluate | sample`, run as a user would: in a subprocess, on real
MNIST, with a tiny budget (one epoch on 500 images)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae_lib.cli import build_parser, main
from vae_lib.data import load_mnist
from vae_lib.evaluate import log_likelihood
from vae_lib.runs import binarized_test_set
from vae_lib.saving import ModelFileError, load_model, save_model

ROOT = Path(__file__).resolve().parents[1]
TRAIN_FLAGS = ["--epochs", "1", "--n-train", "500", "--z-dim", "4", "--hidden-dims", "64,32",
               "--activation", "tanh", "--seed", "3", "--quiet"]


def vae_lib_cli(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VAE_LIB_CACHE": str(cache), "VAE_LIB_DEVICE": "cpu"}
    return subprocess.run([sys.executable, "-m", "vae_lib", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def trained(workdir: Path) -> Path:
    proc = vae_lib_cli("train", *TRAIN_FLAGS, "--out", "models/tiny.pt", cwd=workdir, cache=workdir / "cache")
    assert proc.returncode == 0, proc.stderr
    assert "trained in" in proc.stdout and "saved to models/tiny.pt" in proc.stdout
    return workdir / "models" / "tiny.pt"


@pytest.mark.slow
def test_train_saves_the_model_with_its_configuration(trained: Path):
    saved = load_model(trained)
    c = saved.model.config
    assert (c.z_dim, c.hidden_dims, c.activation) == (4, (64, 32), "tanh")
    assert saved.metadata["n_train"] == 500 and saved.metadata["train_config"]["seed"] == 3
    assert len(saved.metadata["history"]["test_elbo"]) == 1
    assert not saved.model.training


@pytest.mark.slow
def test_train_twice_loads_from_the_run_cache(trained: Path, workdir: Path):
    proc = vae_lib_cli("train", *TRAIN_FLAGS, "--out", "again.pt", cwd=workdir, cache=workdir / "cache")
    assert proc.returncode == 0, proc.stderr
    assert "loaded from the run cache" in proc.stdout
    first, second = load_model(trained).model.state_dict(), load_model(workdir / "again.pt").model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow
def test_evaluate_reports_elbo_and_lk(trained: Path, workdir: Path):
    proc = vae_lib_cli("evaluate", str(trained), "--k", "8", "--n-test", "100", "--seed", "1", "--json",
                       cwd=workdir, cache=workdir / "cache")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n_test"] == 100 and result["k"] == 8
    # The same numbers as the library computes in this process (same seed, same images).
    model = load_model(trained).model
    x = binarized_test_set(load_mnist("cpu"))[:100]
    expected_lk = log_likelihood(model, x, k=8, seed=1).mean().item()
    assert result["lk"] == pytest.approx(expected_lk, rel=1e-5)
    # L_8 >= L_1 in expectation; the two estimates share images, so allow 5 standard errors.
    assert result["lk"] > result["elbo"] - 5 * (result["elbo_se"] ** 2 + result["lk_se"] ** 2) ** 0.5
    assert result["elbo"] < 0 and result["lk"] < 0


@pytest.mark.slow
def test_evaluate_prints_a_readable_table(trained: Path, capsys):
    assert main(["evaluate", str(trained), "--k", "2", "--n-test", "50", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "ELBO (one sample)" in out and "L_K  (K = 2" in out and "50 test images" in out


@pytest.mark.slow
@pytest.mark.parametrize("binary", [False, True], ids=["probabilities", "binary"])
def test_sample_writes_a_png_grid(trained: Path, workdir: Path, binary: bool):
    import matplotlib.image

    out = workdir / f"samples_{binary}.png"
    flags = ["--binary"] if binary else []
    proc = vae_lib_cli("sample", str(trained), "--n", "12", "--n-cols", "4", "--out", str(out), *flags,
                       cwd=workdir, cache=workdir / "cache")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out)
    height, width = image.shape[:2]
    assert width > height  # 4 columns by 3 rows of square digits
    assert image.std() > 0.05  # not a blank canvas


def test_every_flag_is_documented():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == {"train", "evaluate", "sample"}
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help and action.help.strip(), f"{name} {action.option_strings or action.dest} has no help"
    train_flags = {opt for a in subparsers.choices["train"]._actions for opt in a.option_strings}
    for flag in ("--z-dim", "--hidden-dims", "--activation", "--epochs", "--batch-size", "--lr", "--seed",
                 "--binarization", "--beta", "--warmup-epochs", "--n-train", "--device", "--out", "--no-cache"):
        assert flag in train_flags


def test_help_runs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--warmup-epochs" in out and "(default: 20)" in out
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2 and "train,evaluate,sample" in capsys.readouterr().err


def test_bad_flag_values_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--hidden-dims", "400,0"])
    assert exit_info.value.code == 2 and "layer sizes must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--k", "0"])
    assert exit_info.value.code == 2 and "positive integer" in capsys.readouterr().err


def test_missing_and_corrupt_model_files_give_clear_errors(tmp_path: Path, capsys):
    # As a subprocess: the user sees one line on stderr and exit status 1, no traceback.
    proc = vae_lib_cli("evaluate", "missing.pt", cwd=tmp_path, cache=tmp_path)
    assert proc.returncode == 1 and "no saved model at missing.pt" in proc.stderr
    assert "Traceback" not in proc.stderr
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    assert main(["sample", str(tmp_path / "garbage.pt")]) == 1
    assert "corrupt" in capsys.readouterr().err


def test_load_model_explains_foreign_files(tmp_path: Path, tiny_vae):
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": tiny_vae.state_dict(), "optimizer": {}}, checkpoint)
    with pytest.raises(ModelFileError, match="training checkpoint"):
        load_model(checkpoint)
    path = save_model(tiny_vae, tmp_path / "tiny.pt", {"note": "float64 test model"})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelFileError, match="corrupt, truncated"):
        load_model(truncated)
    saved = load_model(path)
    assert saved.metadata == {"note": "float64 test model"}
    x = torch.rand(3, tiny_vae.config.x_dim, dtype=torch.float64)
    assert torch.allclose(saved.model.double().encode(x)[0], tiny_vae.encode(x)[0])
