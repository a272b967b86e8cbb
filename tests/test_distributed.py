"""Data-parallel training (vae_lib.distributed) against the single-process Trainer.

A real `torchrun --nproc_per_node=2` on the CPU (gloo) trains one epoch on 2,000 images with a
global batch of 128 (each process 64 rows); vae_lib.runs.train_vae trains the same configuration in
one process. The parameters must agree to 1e-4. They are not bitwise equal because the gradient is
summed in a different order: each process sums its 64 rows, gloo adds the two halves, whereas one
process sums 128 rows at once; float32 rounding (about 1e-7 relative) then flows through 16 Adam
steps, whose normalised updates of size lr = 1e-3 can amplify it where a gradient is near zero.
Adam's step is at most ~lr per parameter per step, so 1e-4 is far below what a wrong shard, a
wrong loss scaling or different noise would give (each changes parameters by ~1e-3 per step).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae_lib.distributed import shard
from vae_lib.model import VAE, VAEConfig
from vae_lib.runs import train_vae
from vae_lib.train import TrainConfig, seed_everything

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, BATCH, SEED = 2000, 128, 3
MODEL = VAEConfig(hidden_dims=(200,), z_dim=10, activation="relu")
TOLERANCE = 1e-4


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
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "vae_lib.distributed", "--epochs", "1", "--batch-size", str(BATCH), "--seed", str(SEED),
           "--n-train", str(N_TRAIN), "--hidden-dims", "200", "--z-dim", "10", "--device", "cpu",
           "--quiet", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
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
