"""Data-parallel training of the book's VAE over several processes with torchrun.

Introduced in book/gpu.md. Run it with

    torchrun --nproc_per_node=N -m vae_lib.distributed --epochs 10 --out runs/ddp

(`python -m vae_lib.distributed` alone runs one process). Every rank holds the whole training set
as one tensor on its device, draws the same binarization and the same permutation each epoch (same
generator, same seed) and takes its slice of every global batch: rank r of W gets rows
[r*b/W, (r+1)*b/W) of each batch of b. DistributedDataParallel averages the gradients, and the loss
is scaled so that the average equals the gradient of the global batch's mean -ELBO. The
reparametrisation noise is drawn for the whole global batch on every rank (same seed) and sliced,
so a run on W processes follows the single-process vae_lib.train.Trainer with the same global
batch up to floating-point reduction order (tests/test_distributed.py). Backend: NCCL on GPUs,
gloo on CPUs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from .data import atomic_write_bytes, binarization_transform, load_mnist
from .losses import bernoulli_log_likelihood, gaussian_kl
from .model import VAE, VAEConfig
from .runs import binarized_test_set
from .train import PRECISIONS, atomic_torch_save, make_adam, seed_everything


class ELBOWithNoise(torch.nn.Module):
    """Per-image ELBO terms of a VAE with the noise eps given from outside (shape (B, z_dim)).

    DDP hooks into a module's forward; wrapping the whole loss computation in one module lets the
    caller supply the global batch's slice of eps, which VAE.forward would draw itself.
    """

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.vae.encode(x)  # (B, z_dim) each
        z = mu + torch.exp(0.5 * logvar) * eps  # Kingma & Welling (2013), eq. (10)
        recon = bernoulli_log_likelihood(self.vae.decode(z), x, validate=False)
        return recon, gaussian_kl(mu, logvar)


def shard(start: int, stop: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [start, stop) of one global batch split into `world` nearly equal contiguous parts;
    returns rank's part. Sizes differ by at most one when the batch does not divide evenly."""
    size = stop - start
    return start + rank * size // world, start + (rank + 1) * size // world


def train_distributed(args: argparse.Namespace) -> dict:
    """The training loop of vae_lib.train.Trainer.fit, data-parallel. Returns the run's summary."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if args.device:
        device = torch.device(args.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        data = load_mnist(device)
        n = args.n_train or data.x_train.shape[0]
        x_train, transform = binarization_transform(data.x_train[:n], args.binarization, args.seed)
        # As vae_lib.runs.train_vae and Trainer do, so one process reproduces their run exactly.
        seed_everything(args.seed)
        vae = VAE(VAEConfig(hidden_dims=tuple(args.hidden_dims), z_dim=args.z_dim, activation=args.activation)).to(device)
        net = ELBOWithNoise(vae)
        if world > 1:
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        optimizer = make_adam(vae.parameters(), args.lr)
        generator = torch.Generator(device=device)
        generator.manual_seed(args.seed)
        torch.manual_seed(args.seed)
        amp_dtype = PRECISIONS[args.precision]
        bs, steps = args.batch_size, math.ceil(n / args.batch_size)
        history: dict[str, list[float]] = {"train_elbo": []}
        start_time = time.perf_counter()
        for epoch in range(args.epochs):
            x_epoch = transform(x_train, generator) if transform else x_train
            x_epoch = x_epoch[torch.randperm(n, device=device, generator=generator)]  # as Trainer.fit
            elbo_sum = torch.zeros((), device=device)
            for step in range(steps):
                g0, g1 = step * bs, min((step + 1) * bs, n)
                lo, hi = shard(g0, g1, rank, world)
                # Every rank draws the noise of the whole global batch: same stream, same numbers.
                eps = torch.randn((g1 - g0, args.z_dim), device=device)[lo - g0:hi - g0]
                x = x_epoch[lo:hi]
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    recon, kl = net(x, eps)
                elbo = (recon - kl).float()
                # DDP averages gradients over ranks; scaling by world / global batch makes that
                # average the gradient of the global batch's mean -ELBO, also for unequal shards.
                loss = -elbo.sum() * (world / (g1 - g0))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                elbo_sum += elbo.detach().sum()
            if world > 1:
                dist.all_reduce(elbo_sum)
            history["train_elbo"].append(float(elbo_sum) / n)
            if not math.isfinite(history["train_elbo"][-1]):
                raise FloatingPointError(f"the ELBO became NaN or inf in epoch {epoch + 1}; lower --lr")
            if rank == 0 and args.progress:
                print(f"epoch {epoch + 1}/{args.epochs}: train ELBO {history['train_elbo'][-1]:.2f} nats")
        wall = time.perf_counter() - start_time
        summary = {"world_size": world, "device": str(device), "backend": dist.get_backend() if world > 1 else None,
                   "config": {k: v for k, v in vars(args).items() if k != "out"}, "history": history,
                   "wall_time_s": wall, "torch": torch.__version__}
        if rank == 0:
            vae.eval()
            with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                x_test = binarized_test_set(data)
                recon, kl = ELBOWithNoise(vae)(x_test, torch.randn((len(x_test), args.z_dim), device=device))
                summary["test_elbo"] = float((recon - kl).mean())
            if args.out:
                out = Path(args.out)
                atomic_torch_save(vae.state_dict(), out / "model.pt")
                atomic_write_bytes(out / "run.json", (json.dumps(summary, indent=1) + "\n").encode())
                print(f"wrote {out / 'model.pt'} and {out / 'run.json'}")
        return summary
    finally:
        if world > 1:
            dist.destroy_process_group()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node=N -m vae_lib.distributed",
        description="Train the book's VAE on MNIST data-parallel (DistributedDataParallel).")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch, split over all processes")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=None, help="use the first N training images")
    parser.add_argument("--hidden-dims", type=int, nargs="+", default=[400])
    parser.add_argument("--z-dim", type=int, default=20)
    parser.add_argument("--activation", choices=("relu", "tanh"), default="relu")
    parser.add_argument("--binarization", choices=("dynamic", "static", "threshold", "none"), default="dynamic")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if CUDA is available, else cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process on CPUs (torchrun sets OMP_NUM_THREADS=1)")
    parser.add_argument("--out", default=None, help="folder for model.pt and run.json (written by rank 0)")
    parser.add_argument("--quiet", dest="progress", action="store_false", help="no per-epoch lines")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.epochs < 0:
        raise SystemExit("--batch-size must be >= 1 and --epochs >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    return train_distributed(args)


if __name__ == "__main__":
    main()
