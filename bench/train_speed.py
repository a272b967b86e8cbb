"""How fast does vae_lib train the 784-400-20 VAE, against the recipe readers know and the machine?

One run times, on one device:

(a) the recipe: torchvision's MNIST dataset with a per-sample `transforms.ToTensor()`, a
    `DataLoader` (batch 128, shuffled; one worker with pinned memory on CUDA, none on the CPU, as in
    pytorch/examples), the 784-400-20 ReLU VAE with a sigmoid output and summed
    `binary_cross_entropy`, Adam 1e-3 with its default implementation, `loss.item()` every step;
(b) vae_lib's Trainer on the same model size and batch: the whole training set as one tensor on
    the device, dynamic binarization on the device from random bytes, fused Adam, denormals
    flushed on CPUs; in float32, with bfloat16 matrix products, and with torch.compile, which
    for this model compiles the whole step (vae_lib.fused: forward, hand-written gradient, Adam); and two ablations that undo one CPU-side change each (fp32-no-flush,
    fp32-float-binarize), so the JSON says what each bought;
(c) the machine's own matmul rate for exactly the model's GEMMs (forward and backward of a batch
    of 128 through 784-400-(2x20)-20-400-784), measured between the timed runs, so the trainer's
    share of it can be stated: FLOPs of the model's GEMMs per epoch / epoch time / GEMM rate.

Every variant trains for `--warmup` epochs that are not timed (torch.compile compiles there) and
then `--epochs` timed epochs; the medians are reported. `--steps N` times partial epochs of N steps
and scales them to a full epoch (60,000 images = 469 steps), saying so in the JSON. Results are
written atomically to bench/results/<device>.json. Run `python bench/train_speed.py --help`.

Two clocks are stored: wall time, and the CPU time of this process. On a machine shared with
other jobs, wall time also measures the neighbours (a 2-core machine with 8 runnable processes
gives each a fraction of a core), while CPU time counts only the work done here; with one thread
(`--threads 1`) it is the time the run would take alone. The CPU headline uses CPU time, the GPU
headline wall time (`--clock` overrides).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vae_lib.book import default_device
from vae_lib.data import atomic_write_bytes, binarization_transform, binarize_sample, load_mnist, mnist_datasets
from vae_lib.losses import ELBOLoss
from vae_lib.model import VAE, VAEConfig
from vae_lib.runs import binarized_test_set
from vae_lib.train import TrainConfig, Trainer, seed_everything

BATCH = 128
X_DIM, HIDDEN, Z_DIM = 784, 400, 20
# (in, out) of every Linear layer: the encoder's mu and logvar come from one 400 -> 40 layer.
LAYERS = [(X_DIM, HIDDEN), (HIDDEN, 2 * Z_DIM), (Z_DIM, HIDDEN), (HIDDEN, X_DIM)]
# Why the CPU headline uses CPU time: see the module docstring.
CLOCK_NOTE = ("'cpu' = seconds of CPU time used by this process (all its threads), 'wall' = elapsed "
              "seconds; on a machine shared with other jobs wall time measures the neighbours too")
RESULTS = Path(__file__).resolve().parent / "results"
# The goals of issue 6, checked and stored with the numbers.
GOALS = {"cpu": {"speedup_vs_recipe": 3.0, "fraction_of_gemm_rate": 0.70},
         "cuda": {"speedup_vs_recipe": 20.0, "epoch_s": 0.25}}


class RecipeVAE(nn.Module):
    """The tutorial model, written here for comparison: separate mu and logvar layers, sigmoid
    output. Not the book's model (which returns logits); same sizes and FLOPs."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(X_DIM, HIDDEN)
        self.enc_mu = nn.Linear(HIDDEN, Z_DIM)
        self.enc_logvar = nn.Linear(HIDDEN, Z_DIM)
        self.dec = nn.Linear(Z_DIM, HIDDEN)
        self.dec_out = nn.Linear(HIDDEN, X_DIM)

    def forward(self, x):
        h = F.relu(self.enc(x.view(-1, X_DIM)))
        mu, logvar = self.enc_mu(h), self.enc_logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return torch.sigmoid(self.dec_out(F.relu(self.dec(z)))), mu, logvar


def recipe_loss(x_hat, x, mu, logvar):
    bce = F.binary_cross_entropy(x_hat, x.view(-1, X_DIM), reduction="sum")
    return bce + 0.5 * torch.sum(mu.pow(2) + logvar.exp() - logvar - 1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_recipe(device, epochs: int, warmup: int, steps: int | None) -> dict:
    from torchvision import transforms

    train, _ = mnist_datasets()
    train.transform = transforms.ToTensor()
    kwargs = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    loader = torch.utils.data.DataLoader(train, batch_size=BATCH, shuffle=True, **kwargs)
    torch.manual_seed(0)
    model = RecipeVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    per_epoch = len(loader)
    times, cpu_times = [], []
    for epoch in range(warmup + epochs):
        sync(device)
        start, cpu_start, done = time.perf_counter(), time.process_time(), 0
        for x, _ in loader:
            x = x.to(device)
            optimizer.zero_grad()
            x_hat, mu, logvar = model(x)
            loss = recipe_loss(x_hat, x, mu, logvar)
            loss.backward()
            optimizer.step()
            loss.item()
            done += 1
            if steps and done == steps:
                break
        sync(device)
        if epoch >= warmup:
            times.append((time.perf_counter() - start) * per_epoch / done)
            cpu_times.append((time.process_time() - cpu_start) * per_epoch / done)
    return {"epoch_s": times, "median_s": statistics.median(times), "epoch_cpu_s": cpu_times,
            "median_cpu_s": statistics.median(cpu_times), "steps_timed": done}


def time_trainer(device, data, epochs: int, warmup: int, steps: int | None, float_binarization: bool = False,
                 **config) -> dict:
    n_train = steps * BATCH if steps else data.x_train.shape[0]
    x_train, transform = binarization_transform(data.x_train[:n_train], "dynamic")
    if float_binarization:  # the ablation: one float32 uniform per pixel instead of random bytes
        transform = binarize_sample
    seed_everything(0)
    model = VAE(VAEConfig(hidden_dims=(HIDDEN,), z_dim=Z_DIM, activation="relu")).to(device)
    stamps: list[tuple[float, float]] = []

    def stamp(trainer):
        sync(device)
        stamps.append((time.perf_counter(), time.process_time()))

    cfg = TrainConfig(epochs=warmup + epochs, batch_size=BATCH, lr=1e-3, seed=0, progress=False, **config)
    trainer = Trainer(model, ELBOLoss(), cfg, epoch_transform=transform, callbacks=[stamp])
    sync(device)
    start = (time.perf_counter(), time.process_time())
    trainer.fit(x_train)
    edges = [start, *stamps]
    scale = math.ceil(data.x_train.shape[0] / BATCH) / math.ceil(n_train / BATCH)
    all_times = [(b[0] - a[0]) * scale for a, b in zip(edges[:-1], edges[1:])]
    cpu_times = [(b[1] - a[1]) * scale for a, b in zip(edges[:-1], edges[1:])][warmup:]
    times = all_times[warmup:]
    test = trainer.evaluate(binarized_test_set(data))
    if float_binarization:
        config = {**config, "binarization": "binarize_sample (one float32 uniform per pixel)"}
    return {"config": config, "epoch_s": times, "median_s": statistics.median(times),
            "epoch_cpu_s": cpu_times, "median_cpu_s": statistics.median(cpu_times),
            "warmup_epoch_s": all_times[:warmup], "test_elbo_after": test["elbo"],
            "epochs_trained": warmup + epochs}


def gemm_flops_per_epoch(n: int = 60_000) -> float:
    """FLOPs of the model's matrix products in one epoch: per layer and example 2*in*out forward,
    the same for the weight gradient, the same again for the input gradient except in the first
    layer (no gradient with respect to the data). Elementwise work is not counted."""
    per_example = sum(2 * i * o * (2 if k == 0 else 3) for k, (i, o) in enumerate(LAYERS))
    return float(per_example * n)


def gemm_rate(device, dtype, seconds: float = 1.0) -> tuple[float, float]:
    """FLOP/s of the model's GEMMs at batch 128 in `dtype`, median of 5 timed blocks: per second
    of wall time, and per second of this process's CPU time."""
    g = torch.Generator(device=device).manual_seed(0)
    mats = []
    for i, o in LAYERS:
        mk = lambda *s: torch.randn(*s, generator=g, device=device).to(dtype)  # noqa: E731
        mats.append((mk(BATCH, i), mk(o, i), mk(BATCH, o)))

    def once():
        for k, (x, w, gy) in enumerate(mats):
            torch.mm(x, w.t())  # forward (B, out)
            torch.mm(gy.t(), x)  # weight gradient (out, in)
            if k:
                torch.mm(gy, w)  # input gradient (B, in)

    flops = gemm_flops_per_epoch(BATCH)
    for _ in range(10):
        once()
    sync(device)
    t = time.perf_counter()
    once()
    sync(device)
    reps = max(5, int(seconds / 5 / max(time.perf_counter() - t, 1e-6)))
    rates, cpu_rates = [], []
    for _ in range(5):
        sync(device)
        t, c = time.perf_counter(), time.process_time()
        for _ in range(reps):
            once()
        sync(device)
        rates.append(flops * reps / (time.perf_counter() - t))
        cpu_rates.append(flops * reps / max(time.process_time() - c, 1e-9))
    return statistics.median(rates), statistics.median(cpu_rates)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_slug(device: torch.device) -> str:
    if device.type == "cpu":
        return "cpu"
    return f"{device.type}-" + re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: vae_lib's default device)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs before them (compilation happens here)")
    parser.add_argument("--steps", type=int, default=None, help="time partial epochs of this many steps, scaled to 469")
    parser.add_argument("--variants", default="fp32,bf16,compile,bf16+compile,fp32-no-flush,fp32-float-binarize",
                        help="trainer variants, comma-separated: fp32, bf16, compile, bf16+compile, and two "
                             "ablations of fp32: fp32-no-flush (denormals not flushed), fp32-float-binarize "
                             "(one float32 uniform per pixel instead of random bytes)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default=None,
                        help="clock of the headline numbers: wall, or this process's CPU time "
                             "(default: cpu on a CPU, wall on a GPU; both are always stored)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/<device>.json)")
    args = parser.parse_args(argv)

    device = torch.device(args.device) if args.device else default_device()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_mnist(device)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    wall = time.perf_counter()

    # The last two undo one CPU-side change each, to show what it bought: denormals flushed while
    # training (TrainConfig.flush_denormal) and the random-byte binarization (DynamicBinarization).
    variants = {"fp32": {}, "bf16": {"precision": "bf16"}, "compile": {"compile": True},
                "bf16+compile": {"precision": "bf16", "compile": True},
                "fp32-no-flush": {"flush_denormal": False},
                "fp32-float-binarize": {"float_binarization": True}}
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(wanted) - set(variants))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(variants)}")

    rates = {"fp32": [], "bf16": []}

    def measure_rates():
        rates["fp32"].append(gemm_rate(device, torch.float32))
        rates["bf16"].append(gemm_rate(device, torch.bfloat16))

    measure_rates()
    print(f"device {device} ({device_name(device)}), {torch.get_num_threads()} threads, torch {torch.__version__}")
    recipe = time_recipe(device, args.epochs, args.warmup, args.steps)
    print(f"recipe (DataLoader + ToTensor): median {recipe['median_s']:.3f} s/epoch")
    measure_rates()
    trainer = {}
    for name in wanted:
        trainer[name] = time_trainer(device, data, args.epochs, args.warmup, args.steps, **variants[name])
        measure_rates()
        print(f"vae_lib Trainer [{name}]: median {trainer[name]['median_s']:.3f} s/epoch, "
              f"test ELBO after {trainer[name]['epochs_trained']} epochs {trainer[name]['test_elbo_after']:.2f} nats")

    flops = gemm_flops_per_epoch(data.x_train.shape[0])
    kind = "cuda" if device.type == "cuda" else "cpu"
    clock = args.clock or ("wall" if kind == "cuda" else "cpu")
    # rate[clock][dtype]: median over the measurements taken between the timed runs.
    rate = {c: {k: statistics.median(v[i] for v in samples) for k, samples in rates.items()}
            for i, c in enumerate(("wall", "cpu"))}
    key = {"wall": "median_s", "cpu": "median_cpu_s"}
    for name, r in trainer.items():
        dtype = "bf16" if "bf16" in name else "fp32"
        r["gemm_rate_dtype"] = dtype
        for c in ("wall", "cpu"):
            r[c] = {"speedup_vs_recipe": recipe[key[c]] / r[key[c]],
                    "gemm_flops_per_s": flops / r[key[c]],
                    "fraction_of_gemm_rate": flops / r[key[c]] / rate[c][dtype]}
        h = r[clock]
        print(f"  {name:13s} {h['speedup_vs_recipe']:6.1f}x the recipe, {h['gemm_flops_per_s'] / 1e9:7.1f} GFLOP/s "
              f"= {100 * h['fraction_of_gemm_rate']:5.1f}% of the measured {dtype} GEMM rate "
              f"({rate[clock][dtype] / 1e9:.1f} GFLOP/s) [{clock} clock]")
    default_name = "fp32" if "fp32" in trainer else next(iter(trainer))
    ablations = {"fp32-no-flush", "fp32-float-binarize"}
    best_name = min((k for k in trainer if k not in ablations), key=lambda k: trainer[k][key[clock]],
                    default=next(iter(trainer)))
    default, best = trainer[default_name][clock], trainer[best_name][clock]
    goals = GOALS[kind]
    met = {f"speedup_vs_recipe (default {default_name})": default["speedup_vs_recipe"] >= goals["speedup_vs_recipe"],
           f"speedup_vs_recipe (best {best_name})": best["speedup_vs_recipe"] >= goals["speedup_vs_recipe"]}
    if kind == "cpu":
        met[f"fraction_of_gemm_rate (default {default_name})"] = default["fraction_of_gemm_rate"] >= goals["fraction_of_gemm_rate"]
        met[f"fraction_of_gemm_rate (best {best_name})"] = best["fraction_of_gemm_rate"] >= goals["fraction_of_gemm_rate"]
    else:
        met[f"epoch_s (best {best_name})"] = trainer[best_name]["median_s"] <= goals["epoch_s"]
    result = {
        "device": str(device), "device_name": device_name(device), "device_slug": device_slug(device),
        "torch": torch.__version__, "python": sys.version.split()[0], "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_average_before": load_before,
        "load_average_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "timing": (f"partial epochs of {args.steps} steps scaled to a full epoch" if args.steps
                   else "full epochs of 60,000 images") + f"; {args.warmup} untimed warm-up epoch(s), "
                  f"median of {args.epochs} timed; training only (no test pass)",
        "batch_size": BATCH, "model": "784-400-20 ReLU, Bernoulli decoder",
        "clock": clock, "clock_note": CLOCK_NOTE,
        "gemm_flops_per_epoch": flops, "gemm_rate_flops_per_s": rate,
        "gemm_rate_samples": {k: [list(x) for x in v] for k, v in rates.items()},
        "recipe": recipe, "trainer": trainer, "best_variant": best_name,
        "goals": goals, "goals_met": met, "bench_wall_s": time.perf_counter() - wall,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    out = Path(args.out) if args.out else RESULTS / f"{device_slug(device)}.json"
    atomic_write_bytes(out, (json.dumps(result, indent=1) + "\n").encode())
    print(f"goals ({kind}): {goals}; met: {met}")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
