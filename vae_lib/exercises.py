"""Checkers for the exercises: run a reader's function on test inputs and explain what is wrong.

For the chapters' exercises that ask the reader to write a piece of the VAE (the Gaussian KL
of book/gaussian_kl.md, the reparametrisation of book/gradients.md, the Bernoulli likelihood of
book/bernoulli_decoder.md, the ELBO of book/elbo.md). Each checker compares the reader's function with the reference in
`vae_lib` on fixed float64 inputs; when they disagree it recomputes the typical wrong answers
(a missing 1/2, sigma**2 for sigma, the sum over the batch, ...) and names the one that matches,
so the feedback says *what* went wrong rather than only *that* something did:

    >>> from vae_lib.exercises import check_gaussian_kl
    >>> def my_kl(mu, logvar):
    ...     return (mu**2 + logvar.exp() - logvar - 1).sum(-1)
    >>> check_gaussian_kl(my_kl)
    ✘ gaussian_kl: your KL is exactly twice the expected value: the closed form has a factor 1/2 ...

Every checker returns a `CheckResult` (true when passed) and prints its message unless
`verbose=False`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .losses import bernoulli_log_likelihood, elbo_terms, gaussian_kl
from .model import VAE, VAEConfig

# Relative and absolute tolerance for "the same number" in float64: loose enough for a float32
# implementation of the same formula (float32 keeps about 7 digits), tight enough that none of
# the wrong answers below comes within it on the test inputs.
RTOL, ATOL = 1e-4, 1e-5


@dataclass
class CheckResult:
    """The verdict of a checker: `passed`, and a message saying why."""

    name: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return f"{'✔' if self.passed else '✘'} {self.name}: {self.message}"

    def __repr__(self) -> str:
        return f"CheckResult(name={self.name!r}, passed={self.passed}, message={self.message!r})"


def _keep_rng_state(checker: Callable) -> Callable:
    """Seed inside the checker without touching the reader's random-number stream."""

    @functools.wraps(checker)
    def wrapped(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return checker(*args, **kwargs)

    return wrapped


def _result(name: str, passed: bool, message: str, verbose: bool) -> CheckResult:
    result = CheckResult(name, passed, message)
    if verbose:
        print(result)
    return result


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=RTOL, atol=ATOL))


def _call(fn: Callable, *args):
    """Run the reader's function; return (output, None) or (None, a message about the failure)."""
    try:
        out = fn(*args)
    except Exception as err:  # the reader's code may raise anything; report it, don't crash
        return None, f"your function raised {type(err).__name__}: {err}"
    if not isinstance(out, torch.Tensor):
        return None, (f"your function returned a {type(out).__name__}; return a torch.Tensor "
                      "(use torch operations, not math or numpy, so gradients can flow)")
    return out, None


def _diagnose(out: torch.Tensor, candidates: dict[str, torch.Tensor]) -> str | None:
    for message, value in candidates.items():
        if _close(out, value):
            return message
    return None


def _kl_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    # 5 images, 3 latent dimensions: z_dim > 1 separates "sum" from "mean" over dimensions, and
    # logvar of both signs separates logvar from log sigma.
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 3, generator=g, dtype=torch.float64)
    logvar = 1.5 * torch.randn(5, 3, generator=g, dtype=torch.float64)
    return mu, logvar


def check_gaussian_kl(student_fn: Callable, verbose: bool = True) -> CheckResult:
    """Check `student_fn(mu, logvar)` = KL(N(mu, diag(exp(logvar))) || N(0, I)) per image.

    Expected: shape (B,) for inputs (B, z_dim), summed over the latent dimensions (reference:
    `vae_lib.losses.gaussian_kl`, Kingma & Welling 2013, Appendix B).
    """
    name = "gaussian_kl"
    mu, logvar = _kl_inputs()
    out, problem = _call(student_fn, mu.clone(), logvar.clone())
    if problem:
        return _result(name, False, problem, verbose)
    expected = gaussian_kl(mu, logvar)  # (B,)
    if _close(out, expected):
        return _result(name, True, "correct: one KL per image, summed over the latent dimensions.", verbose)
    batch, z_dim = mu.shape
    per_dim = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)  # (B, z_dim)
    if out.shape == (batch, z_dim):
        hint = " (these terms are right; now sum them)" if _close(out, per_dim) else ""
        return _result(name, False, f"your function returns shape {tuple(out.shape)}, one value per latent "
                       f"dimension{hint}; sum over the last dimension: .sum(-1), so each image gets one KL.", verbose)
    if out.numel() == 1:
        scalar = out.reshape(())
        diagnosis = _diagnose(scalar, {
            "you summed the KL over the batch": expected.sum(),
            "you averaged the KL over the batch": expected.mean(),
            "you averaged over all entries (batch and latent dimensions)": per_dim.mean(),
        })
        lead = f"{diagnosis}. " if diagnosis else "your function returns a single number. "
        return _result(name, False, lead + "Return one KL per image, shape (B,): sum over the latent dimension "
                       "only (the loss averages over the batch later).", verbose)
    if out.shape != expected.shape:
        return _result(name, False, f"expected shape {tuple(expected.shape)} (one KL per image), got {tuple(out.shape)}.", verbose)
    sigma2_from_log_sigma = (2 * logvar).exp()
    diagnosis = _diagnose(out, {
        "your KL is exactly twice the expected value: the closed form has a factor 1/2 in front of "
        "the sum, 1/2 * sum(mu^2 + sigma^2 - log sigma^2 - 1)": 2 * expected,
        "your KL is the expected value with the opposite sign: KL(q || p) >= 0; check the sign in "
        "front of the sum (it is +1/2 * sum(mu^2 + sigma^2 - log sigma^2 - 1))": -expected,
        "you took the mean over the latent dimensions instead of the sum: the KL of independent "
        "dimensions is the sum of their KLs": expected / z_dim,
        "you treated logvar as log sigma: logvar is log sigma^2, so sigma^2 = exp(logvar), not "
        "exp(2 * logvar)": 0.5 * (mu.pow(2) + sigma2_from_log_sigma - 2 * logvar - 1).sum(-1),
        "your KL is twice the expected value and treats logvar as log sigma: sigma^2 = exp(logvar), "
        "and the closed form has a factor 1/2": (mu.pow(2) + sigma2_from_log_sigma - 2 * logvar - 1).sum(-1),
        "the constant -1 per latent dimension is missing: KL = 1/2 * sum(mu^2 + sigma^2 - log sigma^2 - 1), "
        "which is 0 when mu = 0 and sigma = 1": expected + 0.5 * z_dim,
        "the mu^2 term is missing: moving the mean away from 0 must cost KL": expected - 0.5 * mu.pow(2).sum(-1),
        "the log-variance term has the wrong sign: it is -log sigma^2 = -logvar": expected + logvar.sum(-1),
        "you used sigma (exp(logvar / 2)) where the formula has sigma^2 (exp(logvar))":
            0.5 * (mu.pow(2) + (0.5 * logvar).exp() - logvar - 1).sum(-1),
    })
    if diagnosis:
        return _result(name, False, diagnosis + ".", verbose)
    worst = int((out - expected).abs().argmax())
    return _result(name, False, f"wrong values, e.g. image {worst}: got {float(out[worst]):.4f}, expected "
                   f"{float(expected[worst]):.4f}. Check each term of 1/2 * sum_j (mu_j^2 + sigma_j^2 - log sigma_j^2 - 1) "
                   "with sigma_j^2 = exp(logvar_j).", verbose)


@_keep_rng_state
def check_reparametrize(student_fn: Callable, verbose: bool = True, n: int = 20_000) -> CheckResult:
    """Check `student_fn(mu, logvar)` draws z = mu + sigma * eps, sigma = exp(logvar / 2), eps ~ N(0, I),
    with gradients flowing to mu and logvar (Kingma & Welling 2013, eq. 10).

    Statistical check on n rows of the same (mu, logvar): the sample mean must be within 5
    standard errors (sigma / sqrt(n)) of mu and the sample standard deviation within 5 standard
    errors (about sigma / sqrt(2 n)) of sigma.
    """
    name = "reparametrize"
    torch.manual_seed(0)
    sigma_true = torch.tensor([2.0, 0.5], dtype=torch.float64)  # one above 1, one below 1
    mu = torch.tensor([1.0, -2.0], dtype=torch.float64).expand(n, 2).clone().requires_grad_(True)
    logvar = (2 * sigma_true.log()).expand(n, 2).clone().requires_grad_(True)
    z, problem = _call(student_fn, mu, logvar)
    if problem:
        return _result(name, False, problem, verbose)
    if z.shape != mu.shape:
        return _result(name, False, f"z must have the shape of mu, {tuple(mu.shape)}; got {tuple(z.shape)}. "
                       "Draw one eps per entry: torch.randn_like(mu).", verbose)
    zd = z.detach().double()
    mean, std = zd.mean(0), zd.std(0)
    mu0 = mu.detach()[0]
    if bool((std < 1e-12).all()):
        if torch.allclose(zd[0], mu0):
            msg = "z equals mu: the noise is missing. Add sigma * eps with eps = torch.randn_like(mu)."
        else:
            msg = "every z is the same: draw a fresh eps for every row, eps = torch.randn_like(mu)."
        return _result(name, False, msg, verbose)
    # The standard error of the mean uses the observed spread, so a wrong scale is not mistaken
    # for a wrong centre.
    se_mean = std / math.sqrt(n)
    se_std = sigma_true / math.sqrt(2 * n)
    mean_ok = bool(((mean - mu0).abs() < 5 * se_mean).all())
    std_ok = bool(((std - sigma_true).abs() < 5 * se_std).all())
    # What the implied eps looks like tells uniform noise from a wrong scale.
    eps_implied = (zd - mu0) / sigma_true
    if not (mean_ok and std_ok):
        uniform = bool(((eps_implied.mean(0) - 0.5).abs() < 0.02).all() and (eps_implied.min() >= -1e-9))
        if uniform:
            return _result(name, False, "your noise looks uniform on [0, 1] (torch.rand); the reparametrisation "
                           "needs eps ~ N(0, I): torch.randn_like(mu).", verbose)
        if not mean_ok and bool(((mean).abs() < 5 * se_mean).all()):
            return _result(name, False, "the samples are centred on 0, not on mu: z = mu + sigma * eps.", verbose)
        if not mean_ok:
            return _result(name, False, f"the samples' mean {mean.tolist()} is not mu = {mu0.tolist()} "
                           "(within 5 standard errors): z = mu + sigma * eps.", verbose)
        candidates = {
            "you scaled eps by sigma^2 = exp(logvar), the variance, instead of the standard deviation "
            "sigma = exp(logvar / 2) = exp(0.5 * logvar)": sigma_true.pow(2),
            "eps is not scaled at all: multiply it by sigma = exp(0.5 * logvar)": torch.ones(2, dtype=torch.float64),
            "you used logvar itself as sigma: sigma = exp(0.5 * logvar)": (2 * sigma_true.log()).abs(),
            "you divided eps by sigma instead of multiplying: z = mu + sigma * eps": 1 / sigma_true,
            "you scaled eps by sqrt(sigma) = exp(logvar / 4): sigma = exp(logvar / 2)": sigma_true.sqrt(),
        }
        for message, scale in candidates.items():
            if bool(((std - scale).abs() < 5 * scale / math.sqrt(2 * n)).all()):
                return _result(name, False, message + ".", verbose)
        return _result(name, False, f"the samples' standard deviations {[round(v, 3) for v in std.tolist()]} "
                       f"should be sigma = {sigma_true.tolist()}: z = mu + exp(0.5 * logvar) * eps.", verbose)
    # Right distribution; now the gradients: dz/dmu = 1 and dz/dlogvar = 0.5 * sigma * eps = 0.5 * (z - mu).
    if not z.requires_grad:
        return _result(name, False, "z has the right distribution but no gradient: it was sampled without the "
                       "trick (e.g. Normal(...).sample() or torch.normal) or detached. Write z = mu + sigma * eps "
                       "so gradients reach mu and logvar.", verbose)
    grad_mu, grad_logvar = torch.autograd.grad(z.sum(), (mu, logvar), allow_unused=True)
    if grad_mu is None or grad_logvar is None:
        return _result(name, False, "no gradient reaches mu or logvar: build z from them with torch operations "
                       "(z = mu + torch.exp(0.5 * logvar) * eps), not from detached copies.", verbose)
    expected_grad_logvar = 0.5 * (zd - mu0)
    if not (torch.allclose(grad_mu, torch.ones_like(grad_mu))
            and torch.allclose(grad_logvar.double(), expected_grad_logvar, rtol=1e-4, atol=1e-6)):
        return _result(name, False, "z has the right distribution but its gradients are not those of "
                       "z = mu + sigma * eps (dz/dmu = 1, dz/dlogvar = (z - mu) / 2): eps must be drawn "
                       "independently of mu and logvar, then scaled and shifted.", verbose)
    z2, _ = _call(student_fn, mu, logvar)
    if z2 is not None and torch.equal(z2.detach(), z.detach()):
        return _result(name, False, "two calls returned the same z: draw fresh noise on every call "
                       "(no fixed seed or stored eps inside the function).", verbose)
    return _result(name, True, f"correct: mean {[round(v, 3) for v in mean.tolist()]} (mu = {mu0.tolist()}), "
                   f"std {[round(v, 3) for v in std.tolist()]} (sigma = {sigma_true.tolist()}), and the "
                   "gradients flow to mu and logvar.", verbose)


def check_bernoulli_log_likelihood(student_fn: Callable, verbose: bool = True) -> CheckResult:
    """Check `student_fn(logits, x)` = sum_d [x_d log p_d + (1 - x_d) log(1 - p_d)], p = sigmoid(logits),
    one value per image (reference: `vae_lib.losses.bernoulli_log_likelihood`).

    Tested on grey-level targets in (0, 1) (so swapped terms stay finite and show), then on
    binary targets with logits of +-60, where sigmoid followed by log underflows.
    """
    name = "bernoulli_log_likelihood"
    g = torch.Generator().manual_seed(0)
    batch, x_dim = 4, 6
    logits = 2.0 * torch.randn(batch, x_dim, generator=g, dtype=torch.float64)
    x = 0.1 + 0.8 * torch.rand(batch, x_dim, generator=g, dtype=torch.float64)
    out, problem = _call(student_fn, logits.clone(), x.clone())
    if problem:
        if "between 0 and 1" in problem or "all elements of input" in problem:
            problem += (". Your function seems to pass the logits where probabilities are expected (e.g. "
                        "F.binary_cross_entropy); the decoder returns logits: use "
                        "F.binary_cross_entropy_with_logits, or p = torch.sigmoid(logits).")
        return _result(name, False, problem, verbose)
    expected = bernoulli_log_likelihood(logits, x)  # (B,)
    if _close(out, expected):
        big = torch.tensor([[60.0, -60.0, 60.0], [-60.0, 60.0, 0.0]], dtype=torch.float64)
        xb = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]], dtype=torch.float64)
        out_big, problem = _call(student_fn, big, xb)
        ref_big = bernoulli_log_likelihood(big, xb)
        if problem or not bool(torch.isfinite(out_big).all()) or not _close(out_big, ref_big):
            got = problem or f"got {out_big.tolist()}, expected {[round(v, 2) for v in ref_big.tolist()]}"
            return _result(name, False, "right formula, but it breaks for confident logits (+-60): " + got +
                           ". sigmoid rounds to exactly 0 or 1 there and log gives -inf; compute from the "
                           "logits: -F.binary_cross_entropy_with_logits(logits, x, reduction='none').sum(-1), "
                           "or F.logsigmoid.", verbose)
        return _result(name, True, "correct, and stable for confident logits: one log-likelihood per image, "
                       "summed over pixels.", verbose)
    p = torch.sigmoid(logits)
    per_pixel = x * p.log() + (1 - x) * (1 - p).log()  # (B, x_dim)
    if out.shape == (batch, x_dim):
        hint = " (these terms are right; now sum them)" if _close(out, per_pixel) or _close(out, -per_pixel) else ""
        return _result(name, False, f"your function returns shape {tuple(out.shape)}, one value per pixel{hint}; "
                       "sum over the last (pixel) dimension: .sum(-1).", verbose)
    if out.numel() == 1:
        scalar = out.reshape(())
        diagnosis = _diagnose(scalar, {
            "you summed over the batch": expected.sum(),
            "you averaged over the batch": expected.mean(),
            "you averaged over all pixels of all images (reduction='mean')": per_pixel.mean(),
            "you returned the batch's summed binary cross-entropy (the negative log-likelihood)": -expected.sum(),
            "you returned the mean binary cross-entropy (reduction='mean'), the negative log-likelihood "
            "averaged over pixels and images": -per_pixel.mean(),
        })
        lead = f"{diagnosis}. " if diagnosis else "your function returns a single number. "
        return _result(name, False, lead + "Return one log-likelihood per image, shape (B,): sum over pixels "
                       "(reduction='none' then .sum(-1)).", verbose)
    if out.shape != expected.shape:
        return _result(name, False, f"expected shape {tuple(expected.shape)} (one value per image), got {tuple(out.shape)}.", verbose)
    pp = torch.sigmoid(p)  # sigmoid applied twice
    diagnosis = _diagnose(out, {
        "wrong sign: you returned the binary cross-entropy, which is minus the log-likelihood; a "
        "log-likelihood of binary pixels is <= 0": -expected,
        "x and p are swapped: the log-likelihood is x log p + (1 - x) log(1 - p), the log of the "
        "model's probability p, weighted by the data x": (p * x.log() + (1 - p) * (1 - x).log()).sum(-1),
        "you averaged over the pixels instead of summing: log p(x|z) of independent pixels is the sum "
        "of their log-probabilities": expected / x_dim,
        "sigmoid is applied twice: your function received logits and turned them into probabilities, "
        "then used a function that expects logits (binary_cross_entropy_with_logits) on them; pass the "
        "logits directly": (x * pp.log() + (1 - x) * (1 - pp).log()).sum(-1),
        "the (1 - x) log(1 - p) term is missing: pixels that are off (x = 0) carry information too":
            (x * p.log()).sum(-1),
        "you swapped the arguments of binary_cross_entropy_with_logits: the first is the logits "
        "(input), the second the data x (target)": -F.binary_cross_entropy_with_logits(x, logits, reduction="none").sum(-1),
    })
    if diagnosis:
        return _result(name, False, diagnosis + ".", verbose)
    if not bool(torch.isfinite(out).all()):
        return _result(name, False, "your function returned NaN or inf on ordinary inputs; did you take the log "
                       "of the logits? The decoder returns logits: p = sigmoid(logits), or better "
                       "-F.binary_cross_entropy_with_logits(logits, x, reduction='none').sum(-1).", verbose)
    return _result(name, False, f"wrong values: got {[round(v, 4) for v in out.tolist()]}, expected "
                   f"{[round(v, 4) for v in expected.tolist()]}. Check sum_d [x_d log p_d + (1 - x_d) log(1 - p_d)] "
                   "with p = sigmoid(logits).", verbose)


@_keep_rng_state
def check_elbo(student_fn: Callable, verbose: bool = True) -> CheckResult:
    """Check `student_fn(model, x)` returns the one-sample ELBO per image, shape (B,):
    log p_theta(x|z) - KL(q_phi(z|x) || p(z)), z = mu + sigma * eps drawn once.

    Compared with `vae_lib.losses.elbo_terms` under the same random seed, which gives the same
    eps whenever the function draws one eps of shape (B, z_dim) (model(x), or torch.randn_like(mu)).
    """
    name = "elbo"
    torch.manual_seed(0)
    model = VAE(VAEConfig(x_dim=12, hidden_dims=(16,), z_dim=3, activation="tanh")).double()
    with torch.no_grad():  # a wider posterior than at initialisation, so the KL term is not tiny
        model.encoder.head.bias.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
    x = torch.bernoulli(torch.full((6, 12), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(2))
    seed = 123
    torch.manual_seed(seed)
    out, problem = _call(student_fn, model, x)
    if problem:
        return _result(name, False, problem, verbose)
    torch.manual_seed(seed)
    terms = {k: v.detach() for k, v in elbo_terms(model, x).items()}
    out = out.detach()
    expected, recon, kl = terms["elbo"], terms["recon"], terms["kl"]
    if _close(out, expected):
        return _result(name, True, "correct: one ELBO per image, reconstruction minus KL.", verbose)
    if out.numel() == 1:
        diagnosis = _diagnose(out.reshape(()), {
            "you averaged the ELBO over the batch": expected.mean(),
            "you summed the ELBO over the batch": expected.sum(),
            "you returned the training loss, minus the ELBO averaged over the batch": -expected.mean(),
        })
        lead = f"{diagnosis}. " if diagnosis else "your function returns a single number. "
        return _result(name, False, lead + "Return one ELBO per image, shape (B,).", verbose)
    if out.shape != expected.shape:
        return _result(name, False, f"expected shape {tuple(expected.shape)} (one ELBO per image), got {tuple(out.shape)}.", verbose)
    diagnosis = _diagnose(out, {
        "wrong sign: you returned the loss, minus the ELBO; the ELBO is a lower bound on log p(x), "
        "reconstruction minus KL": -expected,
        "the KL is added instead of subtracted: ELBO = E_q[log p(x|z)] - KL(q || p)": recon + kl,
        "the KL term is missing: ELBO = E_q[log p(x|z)] - KL(q || p)": recon,
        "the reconstruction term is missing": -kl,
    })
    if diagnosis:
        return _result(name, False, diagnosis + ".", verbose)
    # Maybe right, with noise drawn differently: compare averages over many draws instead, by
    # calling the function once on the batch repeated n_rep times (each row gets its own z).
    n_rep = 500
    torch.manual_seed(1000)
    value, problem = _call(student_fn, model, x.repeat(n_rep, 1))
    if problem:
        return _result(name, False, problem, verbose)
    if value.shape != (n_rep * x.shape[0],):
        return _result(name, False, f"on a batch of {n_rep * x.shape[0]} images your function returned shape "
                       f"{tuple(value.shape)}; return one ELBO per image.", verbose)
    draws = value.detach().double().reshape(n_rep, x.shape[0])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(n_rep)
    with torch.no_grad():
        torch.manual_seed(7)
        ref_draws = elbo_terms(model, x.repeat(8 * n_rep, 1))["elbo"].reshape(8 * n_rep, x.shape[0])
    reference, ref_se = ref_draws.mean(0), ref_draws.std(0) / math.sqrt(8 * n_rep)
    # 5 combined standard errors: a correct answer fails with probability below 1e-5 per image.
    if bool(((mean - reference).abs() < 5 * (se.pow(2) + ref_se.pow(2)).sqrt()).all()):
        return _result(name, True, f"correct on average (your noise is drawn differently from the reference's, "
                       f"so averages over {n_rep} draws per image were compared, within 5 standard errors).", verbose)
    return _result(name, False, f"wrong values: your average over {n_rep} draws per image is "
                   f"{[round(v, 3) for v in mean.tolist()]}, expected {[round(v, 3) for v in reference.tolist()]}. "
                   "ELBO = log p(x|z) - KL(q(z|x) || p(z)) with one z = mu + sigma * eps per image.", verbose)


__all__ = ["CheckResult", "check_gaussian_kl", "check_reparametrize", "check_bernoulli_log_likelihood", "check_elbo"]
