"""vae_lib: the library behind the VAE book. Chapters import from here; see README.md."""

from .model import VAE, VAEConfig
from .train import TrainConfig, Trainer, seed_everything

__version__ = "0.1.0"
__all__ = ["VAE", "VAEConfig", "TrainConfig", "Trainer", "seed_everything", "__version__"]
