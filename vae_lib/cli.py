"""The command line: `python -m vae_lib train | evaluate | sample` (or `vae-lib ...`).

Train the book's VAE on MNIST and save it with its configuration, then evaluate it (ELBO and
the importance-weighted bound L_K on the binarized test set) or draw samples into a PNG. The
same code the chapters call: `runs.train_vae` (with its cache), `evaluate.log_likelihood`,
`plots.image_grid`. Documented in docs/cli.md; `--help` on each command lists every flag.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

DEFAULT_MODEL = "vae.pt"
# The kinds data.binarization_transform accepts.
BINARIZATIONS = ("dynamic", "static", "threshold", "none")


def _int_at_least(minimum: int):
    """An argparse type: an integer >= minimum, with an error message that says so."""
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    parse.__name__ = "positive integer" if minimum == 1 else f"integer >= {minimum}"
    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer sizes such as 400 or 200,200, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive integers, got {text!r}")
    return dims


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is None/False or the help already says it."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vae_lib",
        description="Train, evaluate and sample the VAE of the book 'Variational Auto-Encoders, by running code'.",
        epilog="Run `python -m vae_lib <command> --help` for the flags of each command.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,sample}")

    train = commands.add_parser(
        "train", help="train a VAE on MNIST and save it with its configuration",
        description="Train a VAE on binarized MNIST (runs.train_vae) and save it, with its configuration and "
                    "training history, to --out. Results are cached by configuration under "
                    "$VAE_LIB_CACHE/runs (default ~/.cache/vae_lib/runs), so the same command a second time "
                    "loads the model instead of training it again.",
        formatter_class=_HelpFormatter)
    model = train.add_argument_group("model")
    model.add_argument("--z-dim", type=_positive_int, default=20, help="number of latent dimensions")
    model.add_argument("--hidden-dims", type=_dims, default=(400,), metavar="N[,N...]",
                       help="hidden layer sizes of the encoder, comma-separated; the decoder mirrors them "
                            "(default: 400)")
    model.add_argument("--activation", choices=["relu", "tanh"], default="relu", help="activation between layers")
    opt = train.add_argument_group("training")
    opt.add_argument("--epochs", type=_non_negative_int, default=10, help="passes over the training images")
    opt.add_argument("--batch-size", type=_positive_int, default=128, help="images per gradient step")
    opt.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    opt.add_argument("--seed", type=int, default=0,
                     help="random seed: initialisation, shuffling, binarization and sampling noise")
    opt.add_argument("--binarization", choices=list(BINARIZATIONS), default="dynamic",
                     help="how training images become 0/1 pixels: a fresh Bernoulli sample every epoch "
                          "(dynamic), one fixed sample (static), pixel > 0.5 (threshold), or grey levels (none)")
    opt.add_argument("--beta", type=float, default=1.0, help="weight of the KL term (beta-VAE); 1 is the ELBO")
    opt.add_argument("--warmup-epochs", type=_non_negative_int, default=0,
                     help="ramp the KL weight linearly from 0 to --beta over this many epochs (0: no warm-up)")
    opt.add_argument("--n-train", type=_positive_int, default=None,
                     help="train on the first N training images only (default: all 60,000)")
    run = train.add_argument_group("run")
    run.add_argument("--device", default=None,
                     help="torch device, e.g. cpu, cuda, cuda:1, mps (default: $VAE_LIB_DEVICE, else CUDA, MPS or CPU)")
    run.add_argument("--out", type=Path, default=Path(DEFAULT_MODEL), help="where to save the trained model")
    run.add_argument("--no-cache", action="store_true",
                     help="train afresh and leave the run cache alone (neither read nor written)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = commands.add_parser(
        "evaluate", help="ELBO and importance-weighted bound L_K of a saved model on the test set",
        description="Evaluate a saved model on MNIST's test images, binarized once with the book's fixed seed: "
                    "the one-sample ELBO and the importance-weighted bound L_K (Burda et al. 2015), each as "
                    "mean +- standard error over images, in nats. L_K is a lower bound on log p(x) that "
                    "tightens as K grows (K = 5000 is the usual estimate of the log-likelihood; it is slow on a CPU).",
        formatter_class=_HelpFormatter)
    evaluate.add_argument("model", type=Path, nargs="?", default=Path(DEFAULT_MODEL), help="saved model file")
    evaluate.add_argument("--k", type=_positive_int, default=100, help="importance samples K per image for L_K")
    evaluate.add_argument("--n-test", type=_positive_int, default=10_000, help="evaluate on the first N test images")
    evaluate.add_argument("--seed", type=int, default=0, help="random seed of the ELBO and importance samples")
    evaluate.add_argument("--batch-size", type=_positive_int, default=100, help="test images per batch")
    evaluate.add_argument("--device", default=None, help="torch device (default: as for train)")
    evaluate.add_argument("--json", action="store_true", help="print the results as one JSON object")

    sample = commands.add_parser(
        "sample", help="decode z ~ N(0, I) into a PNG grid of digits",
        description="Draw latent codes from the prior N(0, I), decode them with a saved model, and write the "
                    "images as one PNG grid. By default each pixel shows the decoder's probability p (the mean "
                    "of p(x|z)); --binary draws black-and-white pixels x ~ Bernoulli(p) instead.",
        formatter_class=_HelpFormatter)
    sample.add_argument("model", type=Path, nargs="?", default=Path(DEFAULT_MODEL), help="saved model file")
    sample.add_argument("--n", type=_positive_int, default=64, help="number of samples")
    sample.add_argument("--n-cols", type=_positive_int, default=8, help="images per row of the grid")
    sample.add_argument("--seed", type=int, default=0, help="random seed of the latent codes")
    sample.add_argument("--binary", action="store_true", help="sample 0/1 pixels instead of showing probabilities")
    sample.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG file to write")
    sample.add_argument("--device", default=None, help="torch device (default: as for train)")
    return parser


def _device(name: str | None):
    import torch

    from .book import default_device

    return torch.device(name) if name else default_device()


def cmd_train(args: argparse.Namespace) -> int:
    from .model import VAEConfig
    from .runs import train_vae
    from .saving import save_model
    from .train import TrainConfig

    model_config = VAEConfig(hidden_dims=args.hidden_dims, z_dim=args.z_dim, activation=args.activation)
    train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                               progress=not args.quiet)
    device = _device(args.device)
    run = train_vae(model_config, train_config, binarization=args.binarization, beta=args.beta,
                    warmup_epochs=args.warmup_epochs, n_train=args.n_train, device=device,
                    use_cache=not args.no_cache)
    metadata = {
        "train_config": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed},
        "binarization": args.binarization, "beta": args.beta, "warmup_epochs": args.warmup_epochs,
        "n_train": args.n_train, "history": run.history,
        "device": run.info.get("device"), "wall_time_s": run.info.get("wall_time_s"),
    }
    save_model(run.model, args.out, metadata)
    h = run.history
    source = "loaded from the run cache" if run.info.get("cached") else f"trained in {run.info['wall_time_s']:.1f} s on {device}"
    print(f"{source}; saved to {args.out}")
    if h.get("test_elbo"):
        print(f"final test ELBO {h['test_elbo'][-1]:.2f} nats = reconstruction {h['test_recon'][-1]:.2f} - KL {h['test_kl'][-1]:.2f}")
    return 0


def _mean_se(values) -> tuple[float, float]:
    n = values.numel()
    return float(values.mean()), float(values.std() / math.sqrt(n)) if n > 1 else float("nan")


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from .data import load_mnist
    from .evaluate import elbo_per_image, log_likelihood
    from .runs import TEST_BINARIZATION_SEED, binarized_test_set
    from .saving import load_model

    device = _device(args.device)
    saved = load_model(args.model, device)  # before loading MNIST: a wrong path fails fast
    data = load_mnist(device)
    x_test = binarized_test_set(data)[:args.n_test]
    torch.manual_seed(args.seed)
    elbo = elbo_per_image(saved.model, x_test, batch_size=args.batch_size)["elbo"]
    lk = log_likelihood(saved.model, x_test, k=args.k, seed=args.seed, batch_size=args.batch_size)
    (elbo_mean, elbo_se), (lk_mean, lk_se) = _mean_se(elbo), _mean_se(lk)
    result = {"model": str(args.model), "model_config": saved.model.config.to_dict(), "n_test": int(x_test.shape[0]),
              "k": args.k, "seed": args.seed, "elbo": elbo_mean, "elbo_se": elbo_se, "lk": lk_mean, "lk_se": lk_se}
    if args.json:
        print(json.dumps(result))
        return 0
    c = saved.model.config
    print(f"model {args.model}: z_dim={c.z_dim}, hidden_dims={list(c.hidden_dims)}, {c.activation}")
    print(f"{x_test.shape[0]} test images, binarized with the book's fixed seed {TEST_BINARIZATION_SEED}")
    print(f"ELBO (one sample)  {elbo_mean:9.2f} +- {elbo_se:.2f} nats per image")
    print(f"L_K  (K = {args.k:<5d})  {lk_mean:9.2f} +- {lk_se:.2f} nats per image (a lower bound on log p(x))")
    print(f"L_K - ELBO         {lk_mean - elbo_mean:9.2f} nats")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt
    import torch

    from .plots import image_grid
    from .saving import load_model

    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {args.out}")
    device = _device(args.device)
    saved = load_model(args.model, device)
    g = torch.Generator(device=device).manual_seed(args.seed)
    probs = saved.model.sample(args.n, generator=g)
    images = torch.bernoulli(probs, generator=g) if args.binary else probs
    fig, _ = image_grid(images, n_cols=args.n_cols)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, prefix=f".{args.out.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
        os.chmod(tmp, 0o644)  # mkstemp creates files readable by their owner only
        os.replace(tmp, args.out)
    finally:
        Path(tmp).unlink(missing_ok=True)
        plt.close(fig)
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m vae_lib` and of the `vae-lib` script; returns the exit status."""
    from .data import MNISTUnavailableError
    from .saving import ModelFileError

    parser = build_parser()
    args = parser.parse_args(argv)
    command = {"train": cmd_train, "evaluate": cmd_evaluate, "sample": cmd_sample}[args.command]
    try:
        return command(args)
    except (FileNotFoundError, ModelFileError, MNISTUnavailableError, ValueError) as err:
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
