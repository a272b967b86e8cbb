"""A device-agnostic training loop over tensors that already sit on the device.

Introduced in book/first_vae.md and read line by line in book/training.md. The trainer knows
nothing about VAEs: it is given a model, a loss function `loss_fn(model, x) -> (loss, metrics)`
whose metrics are per-example tensors, and the training and test tensors. The data never leaves
the device: each epoch draws one permutation and slices batches out of the tensor.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import math
import os
import random
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from . import fused

# Autocast dtypes by TrainConfig.precision; None means no autocast.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
# Learning-rate schedules by TrainConfig.lr_schedule (see TrainConfig.lr_at).
LR_SCHEDULES = ("constant", "burda")


@dataclass(frozen=True)
class TrainConfig:
    """How to optimise. Fields that change the result enter `fingerprint()`; `epochs` does not,
    so a run can be resumed for more epochs."""

    # Enough for the 784-400-20 model to pass most of its ELBO gain on MNIST in CPU minutes.
    epochs: int = 10
    # 128: the batch of Kingma & Welling's experiments and pytorch/examples.
    batch_size: int = 128
    # Adam's usual 1e-3 is stable for this model with ELBO averaged over the batch.
    lr: float = 1e-3
    # Fixes initialisation, shuffling, binarization and reparametrisation noise.
    seed: int = 0
    # Show a progress bar; off in tests and smoke builds to keep logs short.
    progress: bool = True
    # Steps between progress-bar refreshes: each refresh reads the loss back from the device.
    log_every: int = 50
    # "bf16" runs the forward pass under bfloat16 autocast (matmuls in bf16, weights and Adam in
    # float32). Off by default: float32 is exact enough everywhere, bf16 pays only on hardware
    # with bf16 matmul units (GPUs since A100, CPUs with AMX/avx512_bf16). See book/gpu.md.
    precision: str = "fp32"
    # torch.compile the loss (forward + backward fused into fewer kernels). Off by default: the
    # first steps pay tens of seconds of compilation, which only long runs win back.
    compile: bool = False
    # On CPUs, treat float32 numbers below 1.2e-38 (denormals) as 0 while training. Adam's moments
    # for border pixels that are almost never on decay into that range, and x86 arithmetic on
    # denormals is slow: without the flush, steps get 15% slower after the first epoch (the
    # 784-400-20 model on bench/results/cpu.json's machine). Results agree to float32 rounding.
    flush_denormal: bool = True
    # "constant": lr throughout. "burda": the schedule of Burda et al. (2015), section 5: stage
    # i = 0..7 runs 3**i of their 3,280 epochs at lr * 10**(-i/7), here compressed to `epochs`.
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "log_every"):
            if int(getattr(self, name)) < (0 if name == "epochs" else 1):
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"TrainConfig.lr_schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")

    def fingerprint(self) -> dict:
        fp = {"batch_size": self.batch_size, "lr": self.lr, "seed": self.seed}
        # Only non-default speed settings enter, so runs cached before they existed keep their key.
        if self.precision != "fp32":
            fp["precision"] = self.precision
        if self.compile:
            fp["compile"] = True
        if not self.flush_denormal:
            fp["flush_denormal"] = False
        if self.lr_schedule != "constant":
            # A compressed schedule depends on the length of the run, so epochs enter too.
            fp["lr_schedule"] = self.lr_schedule
            fp["epochs"] = self.epochs
        return fp

    def lr_at(self, epoch: int) -> float:
        """The learning rate of epoch `epoch` (0-based)."""
        if self.lr_schedule == "constant":
            return self.lr
        # Burda et al.: stage i covers a fraction 3**i / 3280 of the run; an epoch belongs to the
        # stage that contains its middle.
        middle = (epoch + 0.5) / max(1, self.epochs) * 3280
        stage, end = 0, 1
        while middle >= end and stage < 7:
            stage += 1
            end += 3 ** stage
        return self.lr * 10 ** (-stage / 7)



def make_adam(params, lr: float) -> torch.optim.Adam:
    """Adam with the fused implementation (one kernel per parameter) where this torch has it.

    For the 784-400-20 model on a CPU the fused step took a third of the time of the default
    per-tensor loop (0.5 vs 1.5 ms, one thread) and agreed with it to within float32 rounding
    (6e-8 after 100 steps). A torch without a fused Adam for the device falls back to the default.
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def denormals_flushed() -> float:
    """The fraction of a multi-threaded CPU multiply that flushes denormal float32 numbers to 0:
    1.0 when every intra-op thread flushes, 0.0 when none does."""
    tiny = torch.ones(1 << 21, dtype=torch.int32).view(torch.float32)  # 1.4e-45, the smallest denormal
    return float(((tiny * 1.0) == 0).float().mean())


_OPENMP_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@functools.cache
def _libgomp():
    """GNU OpenMP as loaded by torch (its intra-op thread pool), or None where it is not found.
    Looked up once per process: torch loads it at import and never unloads it."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    found = re.search(r"(/\S*/libgomp[^/\s]*\.so[^/\s]*)$", maps, re.MULTILINE)
    if not found:
        return None
    lib = ctypes.CDLL(found.group(1))  # already loaded: the same library, the same thread pool
    lib.GOMP_parallel.argtypes = [_OPENMP_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    lib.GOMP_parallel.restype = None
    return lib


def set_flush_denormal(on: bool) -> None:
    """torch.set_flush_denormal on this thread *and* on every thread of torch's OpenMP pool.

    The setting lives in each thread's floating-point control register, and torch sets it only on
    the calling thread; the pool's threads, once started, keep what they had, so half of every
    parallel kernel would still run slowly. Here one OpenMP parallel region (GOMP_parallel, the
    entry point `#pragma omp parallel` compiles to) runs the call on each pool thread. Where GNU
    OpenMP is not found (macOS, Windows) only the calling thread changes.
    """
    torch.set_flush_denormal(on)
    lib = _libgomp()
    if lib is not None:
        callback = _OPENMP_CALLBACK(lambda _: torch.set_flush_denormal(on))
        lib.GOMP_parallel(callback, None, torch.get_num_threads(), 0)


@contextmanager
def flush_denormals(enabled: bool = True):
    """Inside the block, CPU arithmetic treats denormal numbers (|x| < 1.2e-38 in float32) as 0,
    on every intra-op thread; the previous setting comes back afterwards."""
    if not enabled:
        yield
        return
    before = denormals_flushed() == 1.0
    set_flush_denormal(True)
    try:
        yield
    finally:
        set_flush_denormal(before)


class NonFiniteLossError(FloatingPointError):
    """Raised when the loss becomes NaN or inf; names where, and the checkpoint to go back to."""


class CheckpointMismatchError(ValueError):
    """The checkpoint was written for another model or training configuration."""


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a fresh CPU generator with that seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def atomic_torch_save(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _model_fingerprint(model: torch.nn.Module) -> dict:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        return {"class": type(model).__name__, "config": config.to_dict()}
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    return {"class": type(model).__name__, "shapes": shapes}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def fingerprint_hash(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def read_checkpoint(path: Path, device: torch.device, fingerprint: dict) -> dict:
    """The checkpoint at path, loaded onto device, if it was written for this configuration;
    otherwise CheckpointMismatchError naming what is wrong (corrupt file, or the differing fields)
    and the fix. Used by Trainer.load_checkpoint and vae_lib.distributed."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"it holds a {type(state).__name__}, not a dict")
    except Exception as err:
        # torch's own message suggests weights_only=False, which we never do: keep one line.
        first_line = type(err).__name__ + (f": {str(err).strip().splitlines()[0]}" if str(err).strip() else "")
        raise CheckpointMismatchError(
            f"cannot read checkpoint {path}: it is corrupt or not a vae_lib checkpoint "
            f"(torch.load said: {first_line}). Delete it to start afresh, or pass the path "
            "of an intact checkpoint") from err
    mine = json.dumps(fingerprint, sort_keys=True)
    if state.get("fingerprint") != mine:
        try:
            theirs = _flatten(json.loads(state.get("fingerprint") or "{}"))
        except (TypeError, ValueError):
            theirs = {}
        ours = _flatten(json.loads(mine))
        diffs = "; ".join(f"{k}: checkpoint {theirs.get(k)!r}, this run {ours.get(k)!r}"
                          for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k))
        raise CheckpointMismatchError(
            f"checkpoint {path} was written for another configuration ({diffs}). Use the "
            "configuration it was written with, or another checkpoint path")
    return state


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: dict[str, list[float]]  # e.g. history["train_elbo"][epoch], means per example
    epochs_run: int  # epochs trained in this call (0 when everything came from a checkpoint)


class Trainer:
    """Adam on minibatches sliced from device tensors, with per-epoch history and checkpoints.

    Checkpoints are written atomically at the end of every epoch and hold the model, the optimizer,
    the history and every random-number state, so an interrupted run resumed from its checkpoint
    ends with exactly the parameters of an uninterrupted one.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: Callable,
        config: TrainConfig = TrainConfig(),
        checkpoint_path: str | Path | None = None,
        epoch_transform: Callable | None = None,
        callbacks: list[Callable] | None = None,
    ):
        self.model = model
        self.loss_fn = loss_fn
        self.config = config
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        # epoch_transform(x_train, generator) -> x used for one epoch (e.g. dynamic binarization).
        self.epoch_transform = epoch_transform
        # callback(trainer) runs after every epoch, once the history is updated (e.g. snapshots).
        self.callbacks = list(callbacks or [])
        self.device = next(model.parameters()).device
        self.optimizer = make_adam(model.parameters(), config.lr)
        # For the book's VAE with ELBOLoss and Adam, compile=True compiles the whole step: forward,
        # a hand-written backward and Adam's update in one function (vae_lib.fused).
        self._fused_step = (fused.FusedStep.build(model, loss_fn, self.optimizer, PRECISIONS[config.precision])
                            if config.compile else None)
        # Otherwise one training step calls the loss, compiled if asked (evaluation stays eager).
        # Static shapes: the last, smaller batch of an epoch costs one more compilation instead of
        # a dynamic-shape graph (whose random-number calls torch 2.x cannot trace on the CPU).
        compile_loss = config.compile and self._fused_step is None
        self._train_loss = torch.compile(loss_fn, dynamic=False) if compile_loss else loss_fn
        self.history: dict[str, list[float]] = {}
        self.epoch = 0
        # Shuffling and binarization draw from a generator on the data's device; the model's
        # reparametrisation noise comes from torch's global generator (seeded too).
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed)
        self._global_rng_state = None

    # -- checkpoints -------------------------------------------------------------------------
    def fingerprint(self) -> dict:
        return {"model": _model_fingerprint(self.model), "train": self.config.fingerprint(),
                "loss": type(self.loss_fn).__name__}

    def state_dict(self) -> dict:
        return {
            "fingerprint": json.dumps(self.fingerprint(), sort_keys=True),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        path = Path(path or self.checkpoint_path)
        atomic_torch_save(self.state_dict(), path)
        return path

    def load_checkpoint(self, path: str | Path | None = None) -> None:
        path = Path(path or self.checkpoint_path)
        state = read_checkpoint(path, self.device, self.fingerprint())
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.epoch = int(state["epoch"])
        # Generator states are CPU byte tensors whatever the device; map_location moved them.
        self.generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])

    # -- the loop ----------------------------------------------------------------------------
    def _check_data(self, x: torch.Tensor, name: str) -> None:
        if x.ndim != 2:
            raise ValueError(f"{name} must be a 2-D tensor (N, features), got shape {tuple(x.shape)}")
        if x.device != self.device:
            raise ValueError(f"{name} is on {x.device} but the model is on {self.device}; move it with .to()")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf values; clean the data before training")
        check = getattr(self.loss_fn, "check_data", None)
        if check is not None:
            check(x)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
        """Mean of every metric over x (in eval mode, no gradients, float32).

        The noise evaluation draws is taken from a forked random state, so evaluating (or not)
        never changes the training run: a run with a test set ends with the same parameters as one
        without, and a data-parallel run (vae_lib.distributed) can match it.
        """
        was_training = self.model.training
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            for start in range(0, x.shape[0], batch_size):
                _, metrics = self.loss_fn(self.model, x[start:start + batch_size])
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0) + v.detach().float().sum()
        self.model.train(was_training)
        return {k: float(v) / x.shape[0] for k, v in sums.items()}

    def _raise_non_finite(self, step: int) -> None:
        last = self.checkpoint_path if self.checkpoint_path and self.checkpoint_path.exists() else None
        where = f"the last good checkpoint is {last} (epoch {self.epoch})" if last else "no checkpoint was written"
        raise NonFiniteLossError(
            f"loss became NaN or inf at epoch {self.epoch + 1}, step {step}; {where}. "
            "Check the data and resume from the checkpoint, or lower the learning rate and train "
            "with a new checkpoint path (the learning rate is part of a checkpoint's configuration)"
        )

    def fit(self, x_train: torch.Tensor, x_test: torch.Tensor | None = None, resume: bool = True) -> TrainResult:
        """Train until `config.epochs` epochs are done, resuming from the checkpoint if there is one."""
        self._check_data(x_train, "x_train")
        if x_test is not None:
            self._check_data(x_test, "x_test")
        if resume and self.checkpoint_path and self.checkpoint_path.exists():
            self.load_checkpoint()
        elif self.epoch == 0:
            torch.manual_seed(self.config.seed)
        start_epoch = self.epoch
        self.model.train()
        with flush_denormals(self.config.flush_denormal and self.device.type == "cpu"):
            while self.epoch < self.config.epochs:
                self._epoch(x_train, x_test)
        return TrainResult(self.model, self.history, self.epoch - start_epoch)

    def _epoch(self, x_train: torch.Tensor, x_test: torch.Tensor | None) -> None:
        """One epoch: draw its data, take every step, record the history, checkpoint, callbacks."""
        n, bs = x_train.shape[0], self.config.batch_size
        steps = math.ceil(n / bs)
        amp_dtype = PRECISIONS[self.config.precision]
        if hasattr(self.loss_fn, "set_epoch"):
            self.loss_fn.set_epoch(self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr_at(self.epoch)
        x_epoch = self.epoch_transform(x_train, self.generator) if self.epoch_transform else x_train
        order = torch.randperm(n, device=self.device, generator=self.generator)
        # One gather per epoch instead of one per batch: every batch is then a contiguous view,
        # and no small indexing kernel (a thread-pool round trip on CPUs) runs per step.
        x_epoch = x_epoch[order]
        sums: torch.Tensor | None = None  # (n_metrics,) running sums, kept on the device
        names: list[str] = []
        bar = tqdm(total=steps, desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
                   disable=not self.config.progress,
                   # Earlier epochs' bars vanish; the last one stays as the run's record.
                   leave=self.epoch + 1 == self.config.epochs)
        for step in range(steps):
            batch = x_epoch[step * bs:(step + 1) * bs]
            if self._fused_step is not None:
                loss, metrics = self._fused_step(batch)  # forward, backward and Adam in one call
            else:
                with torch.autocast(self.device.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    loss, metrics = self._train_loss(self.model, batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
            # One stacked reduction instead of one per metric: fewer small kernels per step.
            names = list(metrics)
            batch_sums = torch.stack([v.detach().float() for v in metrics.values()]).sum(-1)
            sums = batch_sums if sums is None else sums + batch_sums
            # Reading the loss back synchronises with the device: only every log_every steps
            # on accelerators, every step on the CPU where it costs nothing.
            if self.device.type == "cpu" or (step + 1) % self.config.log_every == 0 or step + 1 == steps:
                value = float(loss.detach())
                if not math.isfinite(value):
                    bar.close()
                    self._raise_non_finite(step + 1)
                if (step + 1) % self.config.log_every == 0 or step + 1 == steps:
                    bar.set_postfix(loss=f"{value:.2f}")
            bar.update(1)
        bar.close()
        for k, v in zip(names, sums.tolist() if sums is not None else []):
            self.history.setdefault(f"train_{k}", []).append(v / n)
        if x_test is not None:
            for k, v in self.evaluate(x_test).items():
                self.history.setdefault(f"test_{k}", []).append(v)
        self.epoch += 1
        if self.checkpoint_path:
            self.save_checkpoint()
        for callback in self.callbacks:
            callback(self)
