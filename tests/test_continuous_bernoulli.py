"""The continuous Bernoulli likelihood (book/beyond.md) against torch.distributions and calculus,
and the `likelihood` option of ELBOLoss / train_vae."""

from __future__ import annotations

import math

import pytest
import torch

from vae_lib.losses import (
    ELBOLoss,
    bernoulli_log_likelihood,
    continuous_bernoulli_log_likelihood,
    continuous_bernoulli_log_norm,
    continuous_bernoulli_mean,
    elbo_terms,
    iwae_bound,
)
from vae_lib.model import VAEConfig
from vae_lib.runs import run_fingerprint
from vae_lib.train import TrainConfig, fingerprint_hash

# Logits around the Taylor cutoff (0.1), at 0, and out to where torch's own implementation is
# still exact to 1e-12 in float64 (it forms 1 - sigmoid(logit), which loses digits for large
# positive logits: 2e-9 off at logit 20). Larger logits are checked against the asymptote below.
LOGITS = torch.tensor([-12.0, -7.5, -2.0, -0.5, -0.1001, -0.1, -0.0999, -0.03, -1e-6, 0.0,
                       1e-6, 0.05, 0.0999, 0.1, 0.1001, 0.7, 3.0, 9.0, 12.0], dtype=torch.float64)


@pytest.mark.parametrize("shape", [(19,), (3, 19), (2, 4, 19)], ids=["pixels", "batch", "samples-batch"])
def test_log_likelihood_matches_torch_distributions(shape):
    g = torch.Generator().manual_seed(0)
    logits = LOGITS[torch.randint(len(LOGITS), shape, generator=g)]
    x = torch.rand(shape, dtype=torch.float64, generator=g)
    x[..., 0] = 0.0  # the ends of [0, 1] are in the support
    x[..., 1] = 1.0
    ours = continuous_bernoulli_log_likelihood(logits, x)
    ref = torch.distributions.ContinuousBernoulli(logits=logits).log_prob(x).sum(-1)
    assert ours.shape == shape[:-1]
    # Both sides are exact to rounding in float64; the tolerance covers 19 summed terms.
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-9)


def test_log_norm_and_mean_match_torch_elementwise():
    dist = torch.distributions.ContinuousBernoulli(logits=LOGITS)
    x = torch.full_like(LOGITS, 0.25)
    ref_norm = dist.log_prob(x) - (0.25 * torch.log(dist.probs) + 0.75 * torch.log1p(-dist.probs))
    torch.testing.assert_close(continuous_bernoulli_log_norm(LOGITS), ref_norm, rtol=0, atol=1e-9)
    torch.testing.assert_close(continuous_bernoulli_mean(LOGITS), dist.mean, rtol=0, atol=1e-9)


@pytest.mark.parametrize("logit", [-6.0, -0.3, 0.0, 0.08, 2.5])
def test_density_integrates_to_one_and_mean_by_quadrature(logit):
    # Simpson's rule on 2001 points: error ~ h^4 f'''' < 1e-10 for these smooth densities.
    x = torch.linspace(0, 1, 2001, dtype=torch.float64)
    eta = torch.full_like(x, logit)
    density = continuous_bernoulli_log_likelihood(eta[:, None], x[:, None]).exp()
    w = torch.ones_like(x)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    w = w / (3 * (len(x) - 1))
    assert abs(float((w * density).sum()) - 1.0) < 1e-9
    mean = float((w * density * x).sum())
    assert abs(mean - float(continuous_bernoulli_mean(torch.tensor(logit, dtype=torch.float64)))) < 1e-9


def test_bernoulli_expression_is_not_normalised_on_grey_levels():
    # The Bernoulli "likelihood" of a grey level integrates to 1 / C(lambda) < 1 over [0, 1];
    # the continuous Bernoulli adds exactly log C(lambda).
    logits = torch.tensor([[1.3, -0.4]], dtype=torch.float64)
    x = torch.tensor([[0.2, 0.9]], dtype=torch.float64)
    diff = continuous_bernoulli_log_likelihood(logits, x) - bernoulli_log_likelihood(logits, x)
    torch.testing.assert_close(diff, continuous_bernoulli_log_norm(logits).sum(-1))
    assert bool((continuous_bernoulli_log_norm(logits) > math.log(2.0) - 1e-12).all())


def test_log_norm_large_logits_float64():
    # log C = log|eta| - log(1 - e^-|eta|) + log(1 + e^-|eta|) = log|eta| + 2 e^-|eta| + O(e^-3|eta|).
    eta = torch.tensor([-40.0, -20.0, 20.0, 40.0, 700.0], dtype=torch.float64)
    expected = torch.log(eta.abs()) + 2 * torch.exp(-eta.abs())
    torch.testing.assert_close(continuous_bernoulli_log_norm(eta), expected, rtol=0, atol=1e-15)


def test_log_norm_is_smooth_and_stable_in_float32():
    logits = torch.tensor([-200.0, -30.0, -0.1, -1e-7, 0.0, 1e-7, 0.0999, 0.1, 30.0, 200.0], requires_grad=True)
    value = continuous_bernoulli_log_norm(logits)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(logits.grad).all()
    # For large |eta|, C = |eta| / tanh(|eta|/2) -> |eta|, and d log C / d eta -> 1 / eta.
    torch.testing.assert_close(value[[0, -1]], torch.log(torch.tensor([200.0, 200.0])))
    # float32 agrees with float64 to float32 resolution on both sides of the cutoff (a few ulps
    # of values ~1 and ~5), and the derivative near 0 is eta / 6.
    reference = continuous_bernoulli_log_norm(logits.detach().double()).float()
    torch.testing.assert_close(value.detach(), reference, rtol=0, atol=2e-6)
    torch.testing.assert_close(logits.grad[[4, 5]], torch.tensor([0.0, 1e-7 / 6]), atol=1e-8, rtol=0)


def test_log_norm_gradient_gradcheck():
    logits = torch.tensor([-3.0, -0.12, -0.05, 0.0, 0.03, 0.2, 4.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(continuous_bernoulli_log_norm, (logits,))
    assert torch.autograd.gradcheck(continuous_bernoulli_mean, (logits,))


def test_elbo_loss_likelihood_option(tiny_vae):
    x = torch.rand(5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(3)
    cb = elbo_terms(tiny_vae, x, likelihood="continuous_bernoulli")
    torch.manual_seed(3)
    bern = elbo_terms(tiny_vae, x)
    torch.manual_seed(3)
    logits = tiny_vae(x).logits
    torch.testing.assert_close(cb["recon"] - bern["recon"], continuous_bernoulli_log_norm(logits).sum(-1))
    torch.testing.assert_close(cb["kl"], bern["kl"])
    torch.manual_seed(3)
    loss, terms = ELBOLoss(likelihood="continuous_bernoulli")(tiny_vae, x)
    torch.testing.assert_close(loss, -cb["elbo"].mean())
    with pytest.raises(ValueError, match="unknown likelihood 'gaussian'"):
        ELBOLoss(likelihood="gaussian")


def test_iwae_bound_with_continuous_bernoulli_k1_is_the_elbo(tiny_vae):
    # L_1 with the encoder's proposal is a one-sample ELBO whose KL is estimated by Monte Carlo:
    # averaged over many draws the two agree within their standard error.
    n = 4000
    x = torch.rand(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    xs = x.repeat(n, 1)  # n independent draws for each of the 3 images, in one batch
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        l1 = iwae_bound(tiny_vae, xs, 1, g, likelihood="continuous_bernoulli").view(n, 3)
        torch.manual_seed(0)
        elbos = elbo_terms(tiny_vae, xs, likelihood="continuous_bernoulli")["elbo"].view(n, 3)
    se = (l1.var(0) / n + elbos.var(0) / n).sqrt()
    # 4 standard errors: a false alarm has probability ~1e-4 per image for a seeded draw.
    assert bool(((l1.mean(0) - elbos.mean(0)).abs() < 4 * se).all())


def test_default_fingerprint_unchanged_and_likelihood_enters_it():
    args = (VAEConfig(), TrainConfig(), "dynamic", 1.0, 0, 60000)
    fp = run_fingerprint(*args)
    assert "likelihood" not in fp  # runs cached before the option keep their hash
    assert fingerprint_hash(run_fingerprint(*args, likelihood="bernoulli")) == fingerprint_hash(fp)
    assert fingerprint_hash(run_fingerprint(*args, likelihood="continuous_bernoulli")) != fingerprint_hash(fp)


def test_evaluate_passes_the_likelihood_through(tiny_vae):
    from vae_lib.evaluate import log_likelihood

    x = torch.rand(4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        cb = log_likelihood(tiny_vae, x, k=1, seed=7, likelihood="continuous_bernoulli")
        bern = log_likelihood(tiny_vae, x, k=1, seed=7)
        # The same seed draws the same z, so the two differ by the log normaliser at those z.
        mu, logvar = tiny_vae.encode(x)
        eps = torch.randn((1, *mu.shape), dtype=mu.dtype, generator=torch.Generator().manual_seed(7))
        logits = tiny_vae.decode(mu + torch.exp(0.5 * logvar) * eps)[0]
    torch.testing.assert_close(cb - bern, continuous_bernoulli_log_norm(logits).sum(-1))


@pytest.mark.slow
def test_train_vae_with_the_continuous_bernoulli(mnist, tmp_path, monkeypatch):
    from vae_lib.runs import train_vae

    monkeypatch.setenv("VAE_LIB_CACHE", str(tmp_path))
    config, train = VAEConfig(hidden_dims=(32,), z_dim=4), TrainConfig(epochs=1, batch_size=100, progress=False)
    cb = train_vae(config, train, "none", n_train=500, data=mnist, device="cpu", likelihood="continuous_bernoulli")
    bern = train_vae(config, train, "none", n_train=500, data=mnist, device="cpu")
    assert cb.info["fingerprint"]["likelihood"] == "continuous_bernoulli"
    assert "likelihood" not in bern.info["fingerprint"]
    # The Bernoulli expression is a log-probability, <= 0; the CB log-density adds at least
    # 784 log 2 = 543 nats to it, and already starts at about 0 for logits near 0.
    assert bern.history["train_recon"][0] < 0 < cb.history["train_recon"][0]
    assert train_vae(config, train, "none", n_train=500, data=mnist, device="cpu",
                     likelihood="continuous_bernoulli").info["cached"]
