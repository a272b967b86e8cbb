"""Train a VAE on MNIST once per configuration and reuse the result: a checksummed run cache.

Introduced in book/first_vae.md. A run is identified by the hash of everything that changes its
result (model and training configuration, binarization, loss weights, training-set size,
the library's cache version). Its files live in `<cache>/runs/<hash>/`: `model.pt` (the state
dict), `run.json` (configuration, history, device, wall time and model.pt's sha256) and, while
training, `checkpoint.pt`, so an interrupted build resumes where it stopped. A cached model whose
checksum does not match is retrained, never silently used (vae_lib.cache).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .book import default_device
from .cache import cache_dir, load_checked, save_checked
from .data import MNISTTensors, binarization_transform, binarize_fixed, load_mnist
from .losses import ELBOLoss
from .model import VAE, VAEConfig
from .train import TrainConfig, Trainer, fingerprint_hash, seed_everything

# Bump when a change to the training code changes results, so old cached runs are not reused.
# 2: fused Adam, and evaluation noise drawn from a forked random state (vae_lib.train).
# 3: run.json records the weights' checksum as "sha256", like every entry of vae_lib.cache.
# 4: dynamic binarization from random bytes (data.DynamicBinarization), denormals flushed on CPUs.
CACHE_VERSION = 4
# The test set is binarized once with this seed everywhere in the book, so numbers compare.
TEST_BINARIZATION_SEED = 1234


@dataclass
class Run:
    model: VAE
    history: dict[str, list[float]]
    info: dict  # what run.json holds: config, device, wall_time_s, cached (bool), ...


def binarized_test_set(data: MNISTTensors) -> torch.Tensor:
    """The test images binarized once with the book's fixed seed (TEST_BINARIZATION_SEED)."""
    return binarize_fixed(data.x_test, TEST_BINARIZATION_SEED)


def run_fingerprint(model_config: VAEConfig, train_config: TrainConfig, binarization: str,
                    beta: float, warmup_epochs: int, n_train: int, n_test: int | None = None,
                    likelihood: str = "bernoulli") -> dict:
    fp = {
        "cache_version": CACHE_VERSION,
        "model": model_config.to_dict(),
        "train": {**train_config.fingerprint(), "epochs": train_config.epochs},
        "binarization": binarization,
        "beta": beta,
        "warmup_epochs": warmup_epochs,
        "n_train": n_train,
        "test_binarization_seed": TEST_BINARIZATION_SEED,
    }
    # Only runs that evaluate on part of the test set carry n_test, so older hashes stay valid.
    if n_test is not None:
        fp["n_test"] = n_test
    # Only a non-default likelihood enters the fingerprint, so runs cached before the option
    # existed keep their hashes.
    if likelihood != "bernoulli":
        fp["likelihood"] = likelihood
    return fp


def _load_cached(folder: Path, model_config: VAEConfig, device) -> Run | None:
    entry = load_checked(folder / "model.pt", folder / "run.json", map_location=device)
    if entry is None:
        return None
    state_dict, info = entry
    model = VAE(model_config).to(device)
    model.load_state_dict(state_dict)
    return Run(model, info["history"], {**info, "cached": True})


def train_vae(
    model_config: VAEConfig = VAEConfig(),
    train_config: TrainConfig = TrainConfig(),
    binarization: str = "dynamic",
    beta: float = 1.0,
    warmup_epochs: int = 0,
    n_train: int | None = None,
    data: MNISTTensors | None = None,
    device: torch.device | str | None = None,
    use_cache: bool = True,
    n_test: int | None = None,
    likelihood: str = "bernoulli",
    callbacks: list | None = None,
) -> Run:
    """Train (or load from the cache) a VAE on MNIST; history holds train/test ELBO, recon and KL.

    Training images are binarized as `binarization` says (see data.binarization_transform); the
    test images always with the fixed seed TEST_BINARIZATION_SEED. `n_train` uses the first
    n_train training images (smoke builds); `n_test` evaluates the per-epoch test curves on the
    first n_test of those binarized test images only (long runs on small subsets, where scoring
    all 10,000 every epoch would cost more than the training). The model is returned in eval mode.
    `likelihood` is the decoder's observation model (losses.LIKELIHOODS; "continuous_bernoulli" in
    book/beyond.md). `callbacks` are handed to the Trainer (callback(trainer) after every epoch);
    they run only when the model is trained, not when it comes from the cache, so pass
    use_cache=False when they must run (vae_lib.latent.latent_snapshots caches their results).
    """
    device = torch.device(device) if device is not None else default_device()
    data = data if data is not None else load_mnist(device)
    data = data.to(device)
    n_train = n_train or data.x_train.shape[0]
    if n_test is not None and not 1 <= n_test <= data.x_test.shape[0]:
        raise ValueError(f"n_test must be between 1 and {data.x_test.shape[0]}, got {n_test}; "
                         "pass None to use the whole test set")
    fp = run_fingerprint(model_config, train_config, binarization, beta, warmup_epochs, n_train, n_test, likelihood)
    folder = cache_dir() / "runs" / fingerprint_hash(fp)
    if use_cache:
        cached = _load_cached(folder, model_config, device)
        if cached is not None:
            cached.model.eval()
            return cached

    seed_everything(train_config.seed)
    model = VAE(model_config).to(device)
    x_train, epoch_transform = binarization_transform(data.x_train[:n_train], binarization, train_config.seed)
    trainer = Trainer(model, ELBOLoss(beta, warmup_epochs, likelihood), train_config,
                      checkpoint_path=folder / "checkpoint.pt" if use_cache else None,
                      epoch_transform=epoch_transform, callbacks=callbacks)
    start = time.perf_counter()
    result = trainer.fit(x_train, binarized_test_set(data)[:n_test])
    info = {"fingerprint": fp, "history": result.history, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "wall_time_s": time.perf_counter() - start, "torch": torch.__version__}
    if use_cache:
        info = save_checked(model.state_dict(), folder / "model.pt", folder / "run.json", info)
        (folder / "checkpoint.pt").unlink(missing_ok=True)
    model.eval()
    return Run(model, result.history, {**info, "cached": False})


# The models the chapters share, trained once per build and reused through the cache. Smoke
# builds (VAE_BOOK_SMOKE=1) train them on 2,000 images for one epoch.
BOOK_MODELS = {
    # The classic 784-400-20 model: reconstructions, evaluation, amortization.
    "z20": VAEConfig(hidden_dims=(400,), z_dim=20, activation="relu"),
    # Two latent dimensions, so the latent space can be drawn and explored.
    "z2": VAEConfig(hidden_dims=(400,), z_dim=2, activation="relu"),
}
BOOK_EPOCHS = 10


def book_model(name: str, data: MNISTTensors | None = None, device=None) -> Run:
    """One of the book's shared models (BOOK_MODELS), trained with dynamic binarization and
    seed 0 for BOOK_EPOCHS epochs, from the cache when it was trained before."""
    from .book import pick

    if name not in BOOK_MODELS:
        raise KeyError(f"unknown book model {name!r}; choose one of {sorted(BOOK_MODELS)}")
    config = TrainConfig(epochs=pick(BOOK_EPOCHS, 1), batch_size=128, lr=1e-3, seed=0, progress=False)
    return train_vae(BOOK_MODELS[name], config, "dynamic", n_train=pick(None, 2000), data=data, device=device)
