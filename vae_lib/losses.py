"""Log-likelihoods, the Gaussian KL, the ELBO and the importance-weighted bound L_K.

Reductions are stated in each docstring. Per-image quantities are summed over pixels and over
latent dimensions; nothing here averages over the batch except `ELBOLoss`, which says so.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)


def check_bernoulli_targets(x: torch.Tensor) -> None:
    """Raise ValueError unless every entry of x is a finite number in [0, 1].

    Introduced in book/bernoulli_decoder.md.
    """
    if not torch.is_floating_point(x):
        raise TypeError(f"Bernoulli targets must be a floating tensor, got dtype {x.dtype}; use x.float()")
    if not torch.isfinite(x).all():
        raise ValueError(
            "Bernoulli targets contain NaN or inf; clean the data (e.g. torch.nan_to_num) before training"
        )
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"Bernoulli targets must lie in [0, 1], got values in [{lo:g}, {hi:g}]; scale pixels "
            "to [0, 1] (x / 255) and binarize them (vae_lib.data.binarize_*)"
        )


def bernoulli_log_likelihood(
    logits: torch.Tensor, x: torch.Tensor, validate: bool = True
) -> torch.Tensor:
    """log p_theta(x|z) = sum_d [x_d log p_d + (1 - x_d) log(1 - p_d)] with p = sigmoid(logits).

    Reduction: summed over the last (pixel) dimension; one value per image, shape logits.shape[:-1].
    Computed from logits with `binary_cross_entropy_with_logits`, which stays finite where
    log(sigmoid(logits)) underflows. `logits` may carry extra leading sample dimensions that
    broadcast against x. Introduced in book/bernoulli_decoder.md.
    """
    if logits.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"logits and targets disagree in the pixel dimension: {tuple(logits.shape)} vs "
            f"{tuple(x.shape)}"
        )
    if validate:
        check_bernoulli_targets(x)
    x = x.expand_as(logits) if x.shape != logits.shape else x
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


# Below this |logit| the log normaliser uses its Taylor series: the closed form divides two
# quantities that both vanish at logit 0 (p = 1/2). The series' first omitted terms,
# 127 logit^8 / 4838400 and logit^7 / 1209600, stay below 1e-13 here; above the cutoff the closed
# forms are accurate to a few ulps (checked against torch.distributions in the tests).
_CB_TAYLOR_CUTOFF = 0.1


def continuous_bernoulli_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(lambda) of the continuous Bernoulli with lambda = sigmoid(logits), elementwise.

    Loaiza-Ganem & Cunningham (2019), eq. (7): C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda),
    with C(1/2) = 2. In terms of the logit eta this is C = eta / tanh(eta / 2), computed as
    log|eta| - log(1 - e^{-|eta|}) + log(1 + e^{-|eta|}) (no overflow, no cancellation for large
    |eta|) and, for |eta| < 0.1, by the series log 2 + eta^2/12 - 7 eta^4/1440 + 31 eta^6/90720.
    log C >= log 2 > 0.
    Introduced in book/beyond.md.
    """
    a = logits.abs()
    small = a < _CB_TAYLOR_CUTOFF
    # Feed the closed form a harmless value where the series is used, so neither branch makes
    # NaN values or NaN gradients (torch.where differentiates both branches).
    a_safe = torch.where(small, torch.ones_like(a), a)
    exact = torch.log(a_safe) - torch.log(-torch.expm1(-a_safe)) + torch.log1p(torch.exp(-a_safe))
    eta2 = logits.pow(2)
    series = math.log(2.0) + eta2 / 12.0 - 7.0 * eta2.pow(2) / 1440.0 + 31.0 * eta2.pow(3) / 90720.0
    return torch.where(small, series, exact)


def continuous_bernoulli_log_likelihood(
    logits: torch.Tensor, x: torch.Tensor, validate: bool = True
) -> torch.Tensor:
    """log p_theta(x|z) for continuous-Bernoulli pixels, a normalised density on [0, 1]^D.

    sum_d [x_d log lambda_d + (1 - x_d) log(1 - lambda_d) + log C(lambda_d)], lambda = sigmoid(logits)
    (Loaiza-Ganem & Cunningham 2019, eq. 7). It is the Bernoulli expression plus the log
    normaliser, which the Bernoulli "likelihood" of grey levels lacks. Reduction: summed over the
    last (pixel) dimension; one value per image, shape logits.shape[:-1]; extra leading sample
    dimensions of `logits` broadcast against x. Introduced in book/beyond.md.
    """
    return bernoulli_log_likelihood(logits, x, validate) + continuous_bernoulli_log_norm(logits).sum(-1)


def continuous_bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """E[x] under the continuous Bernoulli, elementwise: lambda / (2 lambda - 1) + 1 / (2 artanh(1 - 2 lambda)).

    Loaiza-Ganem & Cunningham (2019), section 3. Unlike the Bernoulli, the mean is not lambda:
    with eta = logit(lambda) it is sigmoid(eta) / tanh(eta / 2) - 1 / eta, which we evaluate by
    its series 1/2 + eta/12 - eta^3/720 + eta^5/30240 for |eta| < 0.1. Introduced in book/beyond.md.
    """
    small = logits.abs() < _CB_TAYLOR_CUTOFF
    safe = torch.where(small, torch.ones_like(logits), logits)
    exact = torch.sigmoid(safe) / torch.tanh(0.5 * safe) - 1.0 / safe
    series = 0.5 + logits / 12.0 - logits.pow(3) / 720.0 + logits.pow(5) / 30240.0
    return torch.where(small, series, exact)


# The observation models a decoder's logits can parametrise, by the name ELBOLoss and train_vae take.
LIKELIHOODS = {
    "bernoulli": bernoulli_log_likelihood,
    "continuous_bernoulli": continuous_bernoulli_log_likelihood,
}


def get_log_likelihood(likelihood: str):
    """The log-likelihood function called `likelihood` (a key of LIKELIHOODS)."""
    try:
        return LIKELIHOODS[likelihood]
    except KeyError:
        raise ValueError(
            f"unknown likelihood {likelihood!r}; use one of {sorted(LIKELIHOODS)}"
        ) from None


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL( N(mu, diag(exp(logvar))) || N(0, I) ) = 1/2 sum_j (mu_j^2 + sigma_j^2 - log sigma_j^2 - 1).

    Kingma & Welling (2013), Appendix B. Reduction: summed over the last (latent) dimension; one
    value per image. Introduced in book/gaussian_kl.md.
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must have the same shape, got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(-1)


def gaussian_kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """The terms of `gaussian_kl` before the sum over latent dimensions: shape (..., z_dim)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)


def diag_gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last dimension."""
    return -0.5 * (LOG_2PI + z.pow(2)).sum(-1)


def elbo_terms(model, x: torch.Tensor, validate: bool = True, likelihood: str = "bernoulli") -> dict[str, torch.Tensor]:
    """One-sample ELBO estimate and its two parts, per image (shape (B,)).

    elbo = recon - kl with recon = log p_theta(x|z), z ~ q_phi(z|x) reparametrised, and kl the
    closed-form KL(q_phi(z|x) || p(z)). All in nats, summed over pixels / latent dimensions.
    `likelihood` names the observation model (LIKELIHOODS; "continuous_bernoulli" from
    book/beyond.md). Introduced in book/first_vae.md.
    """
    log_lik = get_log_likelihood(likelihood)
    out = model(x)
    recon = log_lik(out.logits, x, validate=validate)
    kl = gaussian_kl(out.mu, out.logvar)
    return {"elbo": recon - kl, "recon": recon, "kl": kl}


class ELBOLoss:
    """Training loss: minus the ELBO, **averaged over the batch** (summed over pixels per image).

    `beta` weights the KL term (beta-VAE); `warmup_epochs` > 0 ramps that weight linearly from 0
    to beta over the first epochs (KL annealing). The trainer calls `set_epoch` and `check_data`.
    The returned metrics are the unweighted ELBO, reconstruction and KL per image, so curves stay
    comparable across beta. `likelihood` picks the observation model: "bernoulli" (the default)
    or "continuous_bernoulli" (book/beyond.md). Introduced in book/first_vae.md.
    """

    def __init__(self, beta: float = 1.0, warmup_epochs: int = 0, likelihood: str = "bernoulli"):
        get_log_likelihood(likelihood)  # fail here, with the list of names, not at the first batch
        self.likelihood = likelihood
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.beta = float(beta)
        self.warmup_epochs = int(warmup_epochs)
        self.kl_weight = self.beta if self.warmup_epochs == 0 else 0.0

    def set_epoch(self, epoch: int) -> None:
        if self.warmup_epochs:
            self.kl_weight = self.beta * min(1.0, epoch / self.warmup_epochs)

    def check_data(self, x: torch.Tensor) -> None:
        # Validate the whole tensor once per fit instead of every batch (a device sync each time).
        check_bernoulli_targets(x)

    def __call__(self, model, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = elbo_terms(model, x, validate=False, likelihood=self.likelihood)
        loss = -(terms["recon"] - self.kl_weight * terms["kl"]).mean()
        return loss, terms


def log_importance_weights(model, x: torch.Tensor, k: int, generator: torch.Generator | None = None,
                           likelihood: str = "bernoulli",
                           q: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """log w_k = log p_theta(x|z_k) + log p(z_k) - log q(z_k), z_k ~ q: shape (k, B).

    The proposal q is the encoder's q_phi(z|x), or any diagonal Gaussian given as q = (mu, logvar),
    each (B, z_dim) (e.g. the per-image posteriors of book/amortization.md).
    """
    log_lik = get_log_likelihood(likelihood)
    mu, logvar = model.encode(x) if q is None else q  # (B, z_dim)
    eps = torch.randn((k, *mu.shape), dtype=mu.dtype, device=mu.device, generator=generator)
    z = mu + torch.exp(0.5 * logvar) * eps  # (k, B, z_dim)
    logits = model.decode(z)  # (k, B, x_dim)
    log_px_z = log_lik(logits, x, validate=False)
    return log_px_z + standard_normal_log_prob(z) - diag_gaussian_log_prob(z, mu, logvar)


def iwae_bound(
    model,
    x: torch.Tensor,
    k: int,
    generator: torch.Generator | None = None,
    max_elements: int = 2**24,
    likelihood: str = "bernoulli",
    q: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Importance-weighted bound L_K = log (1/K) sum_k w_k per image (Burda et al. 2015, eq. 8).

    Reduction: one value per image, shape (B,), in nats. L_1 is the ELBO estimator; L_K does not
    decrease with K and tends to log p_theta(x). The K samples are drawn in chunks whose decoder
    output holds at most `max_elements` numbers (2**24 floats = 64 MiB), and combined with a
    running logsumexp, so K = 5000 fits in a laptop's memory. `likelihood` as in ELBOLoss; `q` as
    in `log_importance_weights` (default: the encoder). Introduced in book/evaluation.md.
    """
    if k < 1:
        raise ValueError(f"K must be a positive integer, got {k}")
    check_bernoulli_targets(x)
    batch, x_dim = x.shape[0], x.shape[-1]
    chunk = max(1, min(k, max_elements // max(1, batch * x_dim)))
    running = None
    for start in range(0, k, chunk):
        lw = log_importance_weights(model, x, min(chunk, k - start), generator, likelihood, q)
        part = torch.logsumexp(lw, dim=0)
        running = part if running is None else torch.logaddexp(running, part)
    return running - math.log(k)
