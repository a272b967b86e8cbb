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
gloo on CPUs. As in the Trainer, CPU training flushes denormal floats (vae_lib.train.flush_denormals).

`--checkpoint PATH`: after every epoch rank 0 writes the model, Adam's state, the history and every
random-number state there (atomically), and a later launch with the same path resumes after the
last finished epoch, ending with exactly the parameters of an uninterrupted run on as many
processes. The checkpoint is refused if it was written for another configuration; the
configuration is what changes the numbers beyond floating-point rounding (`config_fingerprint`),
so the number of processes is not part of it: the global batch, the data order and the noise do
not depend on it, and a job that lost a machine can resume on fewer. On several machines the
path must be on a filesystem they share; processes that find different files stop with an error.

`--compile`: torch.compile the loss module's forward (and so its backward), as
TrainConfig.compile does in the Trainer; the module inside DDP is compiled, as the torch docs advise.
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

from .cli import BINARIZATIONS, _HelpFormatter, _non_negative_int, _positive_int
from .data import MNISTUnavailableError, atomic_write_bytes, binarization_transform, load_mnist
from .losses import bernoulli_log_likelihood, gaussian_kl
from .model import VAE, VAEConfig
from .runs import binarized_test_set
from .train import (PRECISIONS, CheckpointMismatchError, TrainConfig, _model_fingerprint, atomic_torch_save,
                    flush_denormals, make_adam, read_checkpoint, seed_everything)


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


def config_fingerprint(vae: VAE, args: argparse.Namespace, n_train: int, device: torch.device) -> dict:
    """What a checkpoint must have been written with to be resumed: everything that changes the
    numbers beyond floating-point rounding. Model, global batch, lr, seed, precision as in the
    Trainer (TrainConfig.fingerprint); binarization and n_train, which the Trainer is handed as
    data; the device type, because CPU and CUDA generators draw different streams (and their
    states do not load into each other). Left out, as rounding only: the number of processes,
    --compile, --threads."""
    train = TrainConfig(batch_size=args.batch_size, lr=args.lr, seed=args.seed, precision=args.precision)
    return {"model": _model_fingerprint(vae), "train": train.fingerprint(), "binarization": args.binarization,
            "n_train": n_train, "device_type": device.type}


def _agree_on_start(start: int, error: Exception | None, path: Path, device: torch.device) -> None:
    """Raise on every rank if any rank could not read the checkpoint or found another epoch in it
    (a path that is not on a filesystem all machines share); otherwise DDP would hang or diverge."""
    flags = torch.tensor([start, -start, error is not None], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    latest, earliest, failed = flags[0].item(), -flags[1].item(), flags[2].item()
    if error is not None:
        raise error
    if failed:
        raise CheckpointMismatchError(f"another process could not read checkpoint {path}; its error says why")
    if latest != earliest:
        raise CheckpointMismatchError(
            f"the processes found different checkpoints at {path} (after epochs {earliest} to {latest}; "
            "no file counts as 0): every process must read the same file, so put --checkpoint on a "
            "filesystem that all machines share")


def train_distributed(args: argparse.Namespace) -> dict:
    """The training loop of vae_lib.train.Trainer.fit, data-parallel. Returns the run's summary."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if args.device:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise ValueError(f"--device {args.device!r} is not a torch device; use cpu, cuda or cuda:INDEX") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device} asks for CUDA, which this torch cannot use here; use --device cpu")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)  # one GPU per process, as without --device
    elif torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if args.batch_size < world:
        raise ValueError(f"--batch-size {args.batch_size} is the global batch and is smaller than the {world} "
                         f"processes, so some would get no images; use --batch-size {world} or more")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        data = load_mnist(device)
        n = args.n_train or data.x_train.shape[0]
        if n > data.x_train.shape[0]:
            raise ValueError(f"--n-train {n} is more than the {data.x_train.shape[0]} training images; "
                             "pass a smaller number, or leave it out to use them all")
        x_train, transform = binarization_transform(data.x_train[:n], args.binarization, args.seed)
        # As vae_lib.runs.train_vae and Trainer do, so one process reproduces their run exactly.
        seed_everything(args.seed)
        vae = VAE(VAEConfig(hidden_dims=tuple(args.hidden_dims), z_dim=args.z_dim, activation=args.activation)).to(device)
        fingerprint = config_fingerprint(vae, args, n, device)
        checkpoint = Path(args.checkpoint) if args.checkpoint else None
        state, error = None, None
        if checkpoint is not None and checkpoint.exists():
            try:
                state = read_checkpoint(checkpoint, device, fingerprint)
            except CheckpointMismatchError as err:
                error = err
        start_epoch = int(state["epoch"]) if state else 0
        if world > 1 and checkpoint is not None:
            _agree_on_start(start_epoch, error, checkpoint, device)
        elif error is not None:
            raise error
        if state:
            vae.load_state_dict(state["model"])
        net = ELBOWithNoise(vae)
        if args.compile:
            # Static shapes, as TrainConfig.compile: the last, smaller batch compiles once more.
            # The module DDP wraps is compiled, not DDP itself, as the torch docs advise ("Where
            # to apply torch.compile?"); in place, so the state dict keeps its keys.
            net.compile(dynamic=False)
        if world > 1:
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        optimizer = make_adam(vae.parameters(), args.lr)
        generator = torch.Generator(device=device)
        generator.manual_seed(args.seed)
        torch.manual_seed(args.seed)
        history: dict[str, list[float]] = {"train_elbo": []}
        if state:
            optimizer.load_state_dict(state["optimizer"])
            history = {k: list(v) for k, v in state["history"].items()}
            # Every rank drew the same numbers from its generators, so rank 0's states fit all.
            generator.set_state(state["generator"].cpu())
            torch.set_rng_state(state["torch_rng"].cpu())
            if device.type == "cuda" and state["cuda_rng"] is not None:
                torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
            if rank == 0 and args.progress:
                print(f"resuming from {checkpoint} after epoch {start_epoch}" + (
                    "" if start_epoch < args.epochs else f"; --epochs {args.epochs} are done, raise it to train more"))
        amp_dtype = PRECISIONS[args.precision]
        bs, steps = args.batch_size, math.ceil(n / args.batch_size)
        start_time = time.perf_counter()
        summary = {"world_size": world, "device": str(device), "backend": dist.get_backend() if world > 1 else None,
                   "config": {k: v for k, v in vars(args).items() if k != "out"}, "resumed_after_epoch": start_epoch,
                   "history": history, "torch": torch.__version__}
        with flush_denormals(device.type == "cpu"):
            for epoch in range(start_epoch, args.epochs):
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
                    last = (f"the last good checkpoint is {checkpoint} (epoch {epoch})"
                            if checkpoint is not None and checkpoint.exists() else "no checkpoint was written")
                    raise FloatingPointError(
                        f"the ELBO became NaN or inf in epoch {epoch + 1}; {last}. Lower --lr (with another "
                        "--checkpoint path: lr is part of a checkpoint's configuration)")
                if checkpoint is not None:
                    if rank == 0:
                        atomic_torch_save({
                            "fingerprint": json.dumps(fingerprint, sort_keys=True), "epoch": epoch + 1,
                            "model": vae.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
                            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                            "world_size": world,  # a record only: a run may resume on another number
                        }, checkpoint)
                    # The others wait until the file is complete, so a job stopped from here on
                    # leaves a checkpoint of an epoch that every rank finished.
                    if world > 1:
                        dist.barrier(**({"device_ids": [device.index]} if device.type == "cuda" else {}))
                if rank == 0 and args.progress:
                    print(f"epoch {epoch + 1}/{args.epochs}: train ELBO {history['train_elbo'][-1]:.2f} nats")
            summary["wall_time_s"] = time.perf_counter() - start_time
            if rank == 0:
                vae.eval()
                with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    x_test = binarized_test_set(data)
                    recon, kl = ELBOWithNoise(vae)(x_test, torch.randn((len(x_test), args.z_dim), device=device))
                    summary["test_elbo"] = float((recon - kl).mean())
        if rank == 0 and args.out:
            out = Path(args.out)
            atomic_torch_save(vae.state_dict(), out / "model.pt")
            atomic_write_bytes(out / "run.json", (json.dumps(summary, indent=1) + "\n").encode())
            print(f"wrote {out / 'model.pt'} and {out / 'run.json'}")
        return summary
    finally:
        if world > 1:
            dist.destroy_process_group()


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node=N -m vae_lib.distributed",
        description="Train the book's VAE on MNIST data-parallel (DistributedDataParallel).",
        formatter_class=_HelpFormatter)
    parser.add_argument("--epochs", type=_non_negative_int, default=10, metavar="N",
                        help="train until this many epochs are done (counting those in --checkpoint)")
    parser.add_argument("--batch-size", type=_positive_int, default=128, metavar="N",
                        help="global batch, split over all processes")
    parser.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0,
                        help="initialisation, shuffling, binarization and reparametrisation noise")
    parser.add_argument("--n-train", type=_positive_int, default=None, metavar="N",
                        help="use the first N training images (default: all 60,000)")
    parser.add_argument("--hidden-dims", type=_positive_int, nargs="+", default=[400], metavar="N",
                        help="hidden layer sizes of the encoder; the decoder mirrors them")
    parser.add_argument("--z-dim", type=_positive_int, default=20, metavar="N", help="latent dimensions")
    parser.add_argument("--activation", choices=("relu", "tanh"), default="relu", help="activation between layers")
    parser.add_argument("--binarization", choices=BINARIZATIONS, default="dynamic",
                        help="fresh Bernoulli sample each epoch, one fixed sample, pixel > 0.5, or grey levels")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                        help="bf16: forward pass under bfloat16 autocast (weights and Adam stay float32)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the loss's forward and backward (pays off only on long runs)")
    parser.add_argument("--device", default=None,
                        help="cpu, or cuda (each process takes GPU LOCAL_RANK); default: cuda if available, else cpu")
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="torch threads per process on CPUs (torchrun sets OMP_NUM_THREADS=1)")
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="written by rank 0 after every epoch; resumed from when it exists. Several "
                             "machines: a path on a filesystem that all of them share")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for model.pt and run.json (written by rank 0)")
    parser.add_argument("--quiet", dest="progress", action="store_false",
                        help="no per-epoch lines (by default rank 0 prints one per epoch)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return train_distributed(args)
    except (ValueError, MNISTUnavailableError, FloatingPointError) as err:  # CheckpointMismatchError included
        raise SystemExit(f"vae_lib.distributed: error: {err}") from err


if __name__ == "__main__":
    main()
