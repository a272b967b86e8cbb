"""Data-parallel training (vae_lib.distributed) against the single-process Trainer.

A real `torchrun --nproc_per_node=2` on the CPU (gloo) trains one epoch on 2,000 images with a
global batch of 128 (each process 64 rows); vae_lib.runs.train_vae trains the same configuration in
one process. The parameters must agree to 1e-4. They are not bitwise equal because the gradient is
summed in a different order: each process sums its 64 rows, gloo adds the two halves, whereas one
process sums 128 rows at once; float32 rounding (about 1e-7 relative) then flows through 16 Adam
steps, whose normalised updates of size lr = 1e-3 can amplify it where a gradient is near zero.
Adam's step is at most ~lr per parameter per step, so 1e-4 is far below what a wrong shard, a
wrong loss scaling or different noise would give (each changes parameters by ~1e-3 per step).

Checkpoints: 2 processes resumed after epoch 1 of 2 end bitwise equal to 2 processes that were not
interrupted (same numbers in the same order). One process resumed from that checkpoint ends within
the same 1e-4 (only the summation order differs), which is why the number of processes is not part
of a checkpoint's configuration. `--compile` on one process against eager: same noise (eps is drawn
outside the compiled module), so only fused kernels' rounding differs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae_lib.distributed import main, shard
from vae_lib.model import VAE, VAEConfig
from vae_lib.runs import train_vae
from vae_lib.train import TrainConfig, seed_everything

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, BATCH, SEED = 2000, 128, 3
MODEL = VAEConfig(hidden_dims=(200,), z_dim=10, activation="relu")
TOLERANCE = 1e-4
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
# The small configuration of the checkpoint and compile tests (seconds per launch).
SMALL = ["--hidden-dims", "64", "--z-dim", "4", "--seed", str(SEED), "--device", "cpu", "--quiet"]


def torchrun(*args: str, cwd: Path, nproc: int = 2, module: tuple[str, ...] = ("-m", "vae_lib.distributed")):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *module, *args]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("size,world", [(128, 2), (80, 2), (81, 2), (7, 3), (1, 2)], ids=str)
def test_shards_partition_the_batch(size, world):
    parts = [shard(256, 256 + size, r, world) for r in range(world)]
    assert parts[0][0] == 256 and parts[-1][1] == 256 + size
    assert all(a[1] == b[0] for a, b in zip(parts[:-1], parts[1:]))
    sizes = [hi - lo for lo, hi in parts]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.slow
def test_torchrun_two_processes_match_one(mnist, tmp_path):
    out = tmp_path / "ddp"
    proc = torchrun("--epochs", "1", "--batch-size", str(BATCH), "--seed", str(SEED), "--n-train", str(N_TRAIN),
                    "--hidden-dims", "200", "--z-dim", "10", "--device", "cpu", "--quiet", "--out", str(out),
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = torch.load(out / "model.pt", weights_only=True)

    run = train_vae(MODEL, TrainConfig(epochs=1, batch_size=BATCH, seed=SEED, progress=False), "dynamic",
                    n_train=N_TRAIN, data=mnist, device="cpu", use_cache=False)
    one = run.model.state_dict()
    assert ddp.keys() == one.keys()
    diff = max((ddp[k] - one[k]).abs().max().item() for k in one)
    seed_everything(SEED)
    init = VAE(MODEL).state_dict()
    moved = max((one[k] - init[k]).abs().max().item() for k in one)
    print(f"max |DDP(2) - single process| over parameters: {diff:.2e} (tolerance {TOLERANCE:g}); "
          f"training moved them by up to {moved:.2e}")
    assert diff < TOLERANCE
    # The tolerance is tight compared with what training does to the parameters.
    assert moved > 100 * TOLERANCE


@pytest.mark.slow
def test_resumed_run_ends_with_the_parameters_of_an_uninterrupted_one(tmp_path):
    flags = [*SMALL, "--n-train", "1000"]
    checkpoint = tmp_path / "ckpt.pt"

    def launch(*args: str) -> None:
        proc = torchrun(*flags, *args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    launch("--epochs", "2", "--out", "straight")
    launch("--epochs", "1", "--checkpoint", str(checkpoint))  # as if stopped after epoch 1
    shutil.copy(checkpoint, tmp_path / "after_epoch_1.pt")
    launch("--epochs", "2", "--checkpoint", str(checkpoint), "--out", "resumed")
    straight = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    assert max_diff(straight, resumed) == 0.0
    history = [json.loads((tmp_path / d / "run.json").read_text())["history"] for d in ("straight", "resumed")]
    assert history[0] == history[1] and len(history[0]["train_elbo"]) == 2
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2

    # The checkpoint of 2 processes resumed on 1: the same run up to summation order.
    main([*flags, "--epochs", "2", "--checkpoint", str(tmp_path / "after_epoch_1.pt"), "--out", str(tmp_path / "one")])
    one = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    diff = max_diff(straight, one)
    print(f"2 processes resumed on 1: max |difference| {diff:.2e} (tolerance {TOLERANCE:g})")
    assert diff < TOLERANCE


def test_checkpoint_from_another_configuration_is_refused(tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    flags = [*SMALL, "--n-train", "256", "--epochs", "1", "--checkpoint", str(checkpoint)]
    main(flags)
    with pytest.raises(SystemExit, match=r"another configuration \(model\.config\.z_dim: checkpoint 4, this run 5; "
                                         r"train\.lr: checkpoint 0\.001, this run 0\.002\)\. Use the configuration"):
        main([*flags, "--epochs", "2", "--z-dim", "5", "--lr", "2e-3"])
    with pytest.raises(SystemExit, match=r"another configuration \(n_train: checkpoint 256, this run 300\)"):
        main([*flags, "--epochs", "2", "--n-train", "300"])
    with pytest.raises(SystemExit, match=r"binarization: checkpoint 'dynamic', this run 'static'"):
        main([*flags, "--epochs", "2", "--binarization", "static"])
    # Settings that change only rounding are not part of the configuration.
    summary = main([*flags, "--epochs", "2", "--threads", "1"])
    assert summary["resumed_after_epoch"] == 1 and len(summary["history"]["train_elbo"]) == 2


def test_corrupt_checkpoint_is_refused_clearly(tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match=r"cannot read checkpoint .*ckpt\.pt: it is corrupt.*Delete it") as err:
        main([*SMALL, "--n-train", "256", "--epochs", "1", "--checkpoint", str(checkpoint)])
    assert "\n" not in str(err.value)
    assert checkpoint.read_bytes() == b"not a checkpoint", "a bad checkpoint is reported, not overwritten"


@pytest.mark.slow
def test_processes_that_see_different_checkpoints_stop_with_a_clear_error(tmp_path):
    """As when --checkpoint is not on a filesystem every machine shares: rank 1 finds no file."""
    main([*SMALL, "--n-train", "256", "--epochs", "1", "--checkpoint", str(tmp_path / "ckpt.pt")])
    launcher = tmp_path / "rank1_elsewhere.py"
    launcher.write_text(
        "import os, sys\nfrom vae_lib.distributed import main\nargv = sys.argv[1:]\n"
        "if os.environ['RANK'] == '1':\n    argv[argv.index('--checkpoint') + 1] = 'elsewhere.pt'\nmain(argv)\n")
    proc = torchrun(*SMALL, "--n-train", "256", "--epochs", "2", "--checkpoint", "ckpt.pt",
                    cwd=tmp_path, module=(str(launcher),))
    assert proc.returncode != 0
    assert "the processes found different checkpoints at ckpt.pt (after epochs 0 to 1" in proc.stderr
    assert "filesystem that all machines share" in proc.stderr
    assert not (tmp_path / "elsewhere.pt").exists()


@pytest.mark.slow
def test_compile_matches_eager(tmp_path):
    flags = ["--hidden-dims", "200", "--z-dim", "10", "--seed", str(SEED), "--device", "cpu", "--quiet",
             "--n-train", "512", "--epochs", "1"]
    eager = main([*flags, "--out", str(tmp_path / "eager")])
    proc = subprocess.run([sys.executable, "-m", "vae_lib.distributed", *flags, "--compile",
                           "--out", str(tmp_path / "compiled")],
                          cwd=tmp_path, env={**ENV, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    compiled = json.loads((tmp_path / "compiled" / "run.json").read_text())
    assert compiled["config"]["compile"] is True
    train = (eager["history"]["train_elbo"][0], compiled["history"]["train_elbo"][0])
    test = (eager["test_elbo"], compiled["test_elbo"])
    diff = max_diff(torch.load(tmp_path / "eager" / "model.pt", weights_only=True),
                    torch.load(tmp_path / "compiled" / "model.pt", weights_only=True))
    print(f"eager vs compiled: train ELBO {train[0]:.6f} vs {train[1]:.6f}, test ELBO {test[0]:.6f} vs "
          f"{test[1]:.6f} nats; parameters differ by up to {diff:.2e}")
    assert all(map(math.isfinite, (*train, *test)))
    # Rounding only: float32 sums of ~500-nat terms agree to ~1e-4 nats; different noise or a
    # wrong gradient would move the ELBO by tenths of a nat or more, and parameters by ~1e-3.
    assert abs(train[0] - train[1]) < 1e-2 and abs(test[0] - test[1]) < 1e-2
    assert diff < TOLERANCE


@pytest.mark.parametrize("flags,message", [
    (["--n-train", "70000"], "--n-train 70000 is more than the 60000 training images"),
    (["--batch-size", "1"], "--batch-size 1 is the global batch and is smaller than the 2 processes"),
    (["--device", "gpu0"], "--device 'gpu0' is not a torch device; use cpu, cuda or cuda:INDEX"),
], ids=["n-train", "batch-below-processes", "device"])
def test_bad_inputs_name_the_problem_and_the_fix(flags, message, monkeypatch):
    if "--batch-size" in flags:
        monkeypatch.setenv("WORLD_SIZE", "2")  # refused before any process group is set up
    with pytest.raises(SystemExit, match=message):
        main([*SMALL, "--epochs", "1", *flags])


@pytest.mark.parametrize("flag", [["--lr", "0"], ["--epochs", "-1"], ["--z-dim", "0"], ["--hidden-dims", "64", "0"]],
                         ids=lambda f: " ".join(f))
def test_bad_flags_are_refused_by_the_parser(flag, capsys):
    with pytest.raises(SystemExit) as err:
        main(flag)
    assert err.value.code == 2
    assert f"argument {flag[0]}: expected" in capsys.readouterr().err
