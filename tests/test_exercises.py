"""The exercise checkers accept correct answers and name each typical mistake."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vae_lib import exercises
from vae_lib.exercises import (CheckResult, check_bernoulli_log_likelihood, check_elbo, check_gaussian_kl,
                               check_reparametrize)
from vae_lib.losses import bernoulli_log_likelihood, gaussian_kl


# ---- Gaussian KL --------------------------------------------------------------------------

def kl_kingma(mu, logvar):  # Kingma & Welling's form: -1/2 sum(1 + log sigma^2 - mu^2 - sigma^2)
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=-1)


def kl_float32(mu, logvar):
    return gaussian_kl(mu.float(), logvar.float())


@pytest.mark.parametrize("fn", [gaussian_kl, kl_kingma, kl_float32], ids=["reference", "kingma-form", "float32"])
def test_kl_checker_accepts_correct_answers(fn, capsys):
    result = check_gaussian_kl(fn)
    assert isinstance(result, CheckResult) and result.passed and bool(result)
    assert "correct" in capsys.readouterr().out


KL_MISTAKES = {
    "missing-half": (lambda mu, lv: (mu**2 + lv.exp() - lv - 1).sum(-1), "exactly twice the expected value"),
    "wrong-sign": (lambda mu, lv: 0.5 * (1 + lv - mu**2 - lv.exp()).sum(-1), "opposite sign"),
    "logvar-as-log-sigma": (lambda mu, lv: 0.5 * (mu**2 + (2 * lv).exp() - 2 * lv - 1).sum(-1),
                            "treated logvar as log sigma"),
    "logvar-as-log-sigma-and-no-half": (lambda mu, lv: (mu**2 + (2 * lv).exp() - 2 * lv - 1).sum(-1),
                                        "twice the expected value and treats logvar as log sigma"),
    "mean-over-latent": (lambda mu, lv: 0.5 * (mu**2 + lv.exp() - lv - 1).mean(-1), "mean over the latent dimensions"),
    "sum-over-batch": (lambda mu, lv: 0.5 * (mu**2 + lv.exp() - lv - 1).sum(), "summed the KL over the batch"),
    "mean-over-batch": (lambda mu, lv: 0.5 * (mu**2 + lv.exp() - lv - 1).sum(-1).mean(), "averaged the KL over the batch"),
    "no-sum": (lambda mu, lv: 0.5 * (mu**2 + lv.exp() - lv - 1), "one value per latent dimension (these terms are right"),
    "missing-minus-one": (lambda mu, lv: 0.5 * (mu**2 + lv.exp() - lv).sum(-1), "constant -1"),
    "missing-mu2": (lambda mu, lv: 0.5 * (lv.exp() - lv - 1).sum(-1), "mu^2 term is missing"),
    "logvar-sign": (lambda mu, lv: 0.5 * (mu**2 + lv.exp() + lv - 1).sum(-1), "log-variance term has the wrong sign"),
    "sigma-for-sigma2": (lambda mu, lv: 0.5 * (mu**2 + (0.5 * lv).exp() - lv - 1).sum(-1), "sigma (exp(logvar / 2))"),
    "numpy": (lambda mu, lv: kl_kingma(mu, lv).numpy(), "return a torch.Tensor"),
    "raises": (lambda mu, lv: mu @ lv, "raised RuntimeError"),
    "other": (lambda mu, lv: kl_kingma(mu, lv) + 0.3 * mu[..., 0], "wrong values, e.g. image"),
}


@pytest.mark.parametrize("name", KL_MISTAKES)
def test_kl_checker_names_each_mistake(name, capsys):
    fn, expected_phrase = KL_MISTAKES[name]
    result = check_gaussian_kl(fn)
    assert not result.passed
    assert expected_phrase in result.message, result.message
    printed = capsys.readouterr().out
    assert printed.startswith("✘ gaussian_kl:") and expected_phrase in printed


def test_checkers_are_quiet_when_asked(capsys):
    assert check_gaussian_kl(gaussian_kl, verbose=False).passed
    assert capsys.readouterr().out == ""


# ---- reparametrisation --------------------------------------------------------------------

def reparam_ok(mu, logvar):
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def reparam_rsample(mu, logvar):
    return torch.distributions.Normal(mu, (0.5 * logvar).exp()).rsample()


@pytest.mark.parametrize("fn", [reparam_ok, reparam_rsample], ids=["formula", "rsample"])
def test_reparametrize_checker_accepts_correct_answers(fn):
    assert check_reparametrize(fn, verbose=False).passed


REPARAM_MISTAKES = {
    "sigma2": (lambda mu, lv: mu + torch.exp(lv) * torch.randn_like(mu), "sigma^2 = exp(logvar), the variance"),
    "no-noise": (lambda mu, lv: mu + 0 * lv, "the noise is missing"),
    "unscaled": (lambda mu, lv: mu + torch.randn_like(mu), "not scaled at all"),
    "logvar-as-sigma": (lambda mu, lv: mu + lv * torch.randn_like(mu), "used logvar itself as sigma"),
    "divided": (lambda mu, lv: mu + torch.randn_like(mu) / torch.exp(0.5 * lv), "divided eps by sigma"),
    "uniform": (lambda mu, lv: mu + torch.exp(0.5 * lv) * torch.rand_like(mu), "uniform"),
    "no-mu": (lambda mu, lv: torch.exp(0.5 * lv) * torch.randn_like(mu), "centred on 0"),
    "not-reparametrised": (lambda mu, lv: torch.distributions.Normal(mu, (0.5 * lv).exp()).sample(), "no gradient"),
    "one-eps": (lambda mu, lv: mu + torch.exp(0.5 * lv) * torch.randn(()), "every z is the same"),
    "fixed-seed": (lambda mu, lv: mu + torch.exp(0.5 * lv) * torch.randn(mu.shape, dtype=mu.dtype,
                                                                           generator=torch.Generator().manual_seed(0)),
                   "two calls returned the same z"),
    "wrong-shape": (lambda mu, lv: (mu + torch.exp(0.5 * lv) * torch.randn_like(mu))[:, :1], "shape of mu"),
}


def test_checkers_leave_the_readers_random_stream_alone():
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    check_reparametrize(reparam_ok, verbose=False)
    assert torch.equal(torch.random.get_rng_state(), before)


# ---- Bernoulli log-likelihood -------------------------------------------------------------

def bern_manual_logsigmoid(logits, x):
    return (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).sum(-1)


@pytest.mark.parametrize("fn", [bernoulli_log_likelihood, bern_manual_logsigmoid], ids=["reference", "logsigmoid"])
def test_bernoulli_checker_accepts_correct_answers(fn):
    assert check_bernoulli_log_likelihood(fn, verbose=False).passed


def _naive(logits, x):
    p = torch.sigmoid(logits)
    return (x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(-1)


BERN_MISTAKES = {
    "sign": (lambda l, x: F.binary_cross_entropy_with_logits(l, x, reduction="none").sum(-1), "wrong sign"),
    "swapped": (lambda l, x: (torch.sigmoid(l) * torch.log(x) + (1 - torch.sigmoid(l)) * torch.log(1 - x)).sum(-1),
                "x and p are swapped"),
    "swapped-arguments": (lambda l, x: -F.binary_cross_entropy_with_logits(x, l, reduction="none").sum(-1),
                          "swapped the arguments"),
    "probabilities-to-bce": (lambda l, x: -F.binary_cross_entropy(l, x, reduction="none").sum(-1),
                             "pass the logits where probabilities are expected"),
    "double-sigmoid": (lambda l, x: -F.binary_cross_entropy_with_logits(torch.sigmoid(l), x, reduction="none").sum(-1),
                       "sigmoid is applied twice"),
    "log-of-logits": (lambda l, x: (x * torch.log(l) + (1 - x) * torch.log(1 - l)).sum(-1), "log of the logits"),
    "mean-over-pixels": (lambda l, x: -F.binary_cross_entropy_with_logits(l, x, reduction="none").mean(-1),
                         "averaged over the pixels instead of summing"),
    "bce-mean": (lambda l, x: F.binary_cross_entropy_with_logits(l, x), "mean binary cross-entropy"),
    "sum-over-batch": (lambda l, x: -F.binary_cross_entropy_with_logits(l, x, reduction="sum"), "summed over the batch"),
    "no-sum": (lambda l, x: -F.binary_cross_entropy_with_logits(l, x, reduction="none"), "one value per pixel"),
    "missing-term": (lambda l, x: (x * F.logsigmoid(l)).sum(-1), "(1 - x) log(1 - p) term is missing"),
    "unstable": (_naive, "breaks for confident logits"),
}


# ---- ELBO ---------------------------------------------------------------------------------

def elbo_ok(model, x):
    out = model(x)
    return bernoulli_log_likelihood(out.logits, x) - gaussian_kl(out.mu, out.logvar)


def elbo_two_draws(model, x):
    # Right on average, but draws its noise differently from the reference (a throwaway draw first).
    torch.randn(1)
    return elbo_ok(model, x)


@pytest.mark.parametrize("fn", [elbo_ok, elbo_two_draws], ids=["model-forward", "different-noise"])
def test_elbo_checker_accepts_correct_answers(fn):
    result = check_elbo(fn, verbose=False)
    assert result.passed, result.message


def _recon_kl(model, x):
    out = model(x)
    return bernoulli_log_likelihood(out.logits, x), gaussian_kl(out.mu, out.logvar)


ELBO_MISTAKES = {
    "loss": (lambda m, x: -elbo_ok(m, x), "wrong sign"),
    "kl-added": (lambda m, x: sum(_recon_kl(m, x)), "KL is added instead of subtracted"),
    "no-kl": (lambda m, x: _recon_kl(m, x)[0], "KL term is missing"),
    "batch-mean": (lambda m, x: elbo_ok(m, x).mean(), "averaged the ELBO over the batch"),
    "training-loss": (lambda m, x: -elbo_ok(m, x).mean(), "the training loss"),
    "doubled-kl": (lambda m, x: _recon_kl(m, x)[0] - 2 * _recon_kl(m, x)[1], "wrong values: your average over 500 draws"),
}


# Each checker against each wrong answer of its table (the KL checker's test above also checks
# what it prints).
QUIET_CASES = {f"{kind}-{name}": (checker, *table[name])
               for kind, checker, table in (("reparametrize", check_reparametrize, REPARAM_MISTAKES),
                                            ("bernoulli", check_bernoulli_log_likelihood, BERN_MISTAKES),
                                            ("elbo", check_elbo, ELBO_MISTAKES))
               for name in table}


@pytest.mark.parametrize("case", QUIET_CASES)
def test_checker_names_each_mistake(case):
    checker, fn, expected_phrase = QUIET_CASES[case]
    result = checker(fn, verbose=False)
    assert not result.passed
    assert expected_phrase in result.message, result.message


def test_the_wrong_answers_really_differ_from_the_reference():
    # Guards the checkers' premise: on their inputs, no two diagnoses coincide within tolerance.
    mu, logvar = exercises._kl_inputs()
    expected = gaussian_kl(mu, logvar)
    wrong = [fn(mu, logvar) for name, (fn, _) in KL_MISTAKES.items() if name not in ("numpy", "raises")]
    for value in wrong:
        assert value.shape != expected.shape or not torch.allclose(value, expected, rtol=exercises.RTOL, atol=exercises.ATOL)
    assert math.isclose(exercises.RTOL, 1e-4)
