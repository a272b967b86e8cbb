"""vae_lib.fused: the hand-written gradient and Adam update, and the compiled training step the
trainer uses for TrainConfig(compile=True)."""

from __future__ import annotations

import pytest
import torch

from vae_lib import fused
from vae_lib.losses import ELBOLoss, elbo_terms
from vae_lib.model import VAE, VAEConfig
from vae_lib.train import TrainConfig, Trainer, make_adam, seed_everything

SMALL = VAEConfig(hidden_dims=(64,), z_dim=4)


@pytest.mark.parametrize("config", [VAEConfig(hidden_dims=(32,), z_dim=3),
                                    VAEConfig(hidden_dims=(32, 16), z_dim=5, activation="tanh"),
                                    VAEConfig(hidden_dims=(24, 24, 8), z_dim=2, activation="relu")])
def test_hand_written_gradient_equals_autograd_in_float64(config):
    # Same noise, same loss -(1/B) sum (recon - w KL) with w = 0.7 and per-image weights on recon
    # (a general g_r): every parameter's gradient agrees with autograd's to 1e-10.
    torch.manual_seed(0)
    model = VAE(config).double()
    x = (torch.rand(16, 784, dtype=torch.float64) < 0.3).double()
    g_r = -torch.rand(16, dtype=torch.float64)
    torch.manual_seed(1)
    terms = elbo_terms(model, x, validate=False)
    ((g_r * terms["recon"]).sum() + 0.7 / 16 * terms["kl"].sum()).backward()
    expected = [p.grad for p in fused.parameters(model)]
    torch.manual_seed(1)
    eps = torch.randn(16, config.z_dim, dtype=torch.float64)
    params = [p.detach() for p in fused.parameters(model)]
    n_enc, tanh = len(config.hidden_dims), config.activation == "tanh"
    recon, kl, inputs, logits, mu, sigma = fused.forward(x, eps, params, n_enc, tanh)
    assert torch.allclose(recon, terms["recon"], rtol=0, atol=1e-10)
    assert torch.allclose(kl, terms["kl"], rtol=0, atol=1e-10)
    grads = fused.backward(g_r, torch.full((16,), 0.7 / 16, dtype=torch.float64), eps, params, inputs, logits,
                           mu, sigma, n_enc, tanh)
    assert len(grads) == len(expected) == 4 * (len(config.hidden_dims) + 1)
    for g, e in zip(grads, expected):
        assert g.shape == e.shape
        assert (g - e).abs().max() < 1e-10 * max(1.0, e.abs().max())


def test_adam_update_equals_torch_adam():
    # The same gradients for 30 steps: the parameters agree with torch.optim.Adam (fused and
    # default implementations) to float32 rounding.
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(40, 30, generator=g), torch.randn(30, generator=g)]
    grads = [[torch.randn(p.shape, generator=g) * 10.0 ** -k for p in start] for k in range(30)]
    ours = [p.clone() for p in start]
    m, v = [torch.zeros_like(p) for p in ours], [torch.zeros_like(p) for p in ours]
    t = [torch.zeros(()) for _ in ours]
    for step in grads:
        fused.adam_(ours, step, m, v, t, torch.tensor(1e-3), 0.9, 0.999, 1e-8)
    for impl in ({"fused": True}, {}):
        ref = [torch.nn.Parameter(p.clone()) for p in start]
        opt = torch.optim.Adam(ref, lr=1e-3, **impl)
        for step in grads:
            for p, gr in zip(ref, step):
                p.grad = gr
            opt.step()
        for a, b, s in zip(ours, ref, start):
            assert (a - b).abs().max() < 1e-6
            assert (a - s).abs().max() > 1e-3  # the parameters did move
    assert float(t[0]) == 30


def test_fused_step_is_used_only_where_it_computes_the_same_thing():
    model = VAE(SMALL)
    adam = lambda **kw: torch.optim.Adam(model.parameters(), lr=1e-3, **kw)  # noqa: E731
    assert isinstance(fused.FusedStep.build(model, ELBOLoss(), adam()), fused.FusedStep)
    assert isinstance(fused.FusedStep.build(model, ELBOLoss(beta=0.5, warmup_epochs=2), make_adam(model.parameters(), 1e-3)),
                      fused.FusedStep)
    assert fused.FusedStep.build(model, ELBOLoss(likelihood="continuous_bernoulli"), adam()) is None
    assert fused.FusedStep.build(model, ELBOLoss(), adam(weight_decay=0.1)) is None
    assert fused.FusedStep.build(model, ELBOLoss(), adam(amsgrad=True)) is None
    assert fused.FusedStep.build(model, ELBOLoss(), torch.optim.SGD(model.parameters(), lr=0.1)) is None
    assert fused.FusedStep.build(model, lambda m, x: None, adam()) is None
    assert fused.FusedStep.build(VAE(SMALL).double(), ELBOLoss(), torch.optim.Adam(VAE(SMALL).parameters())) is None
    # A trainer with compile=True on another loss compiles the autograd loss instead.
    trainer = Trainer(VAE(SMALL), ELBOLoss(likelihood="continuous_bernoulli"), TrainConfig(compile=True))
    assert trainer._fused_step is None


def _train(x, epochs=2, checkpoint=None, **config):
    seed_everything(0)
    model = VAE(SMALL)
    cfg = TrainConfig(epochs=epochs, batch_size=100, progress=False, **config)
    trainer = Trainer(model, ELBOLoss(), cfg, checkpoint_path=checkpoint)
    result = trainer.fit(x)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), result.history, trainer


@pytest.fixture(scope="module")
def binary_digits(mnist):
    return (mnist.x_train[:1000] > 0.5).float()  # 10 batches of 100: one compiled shape


def test_compiled_fused_training_matches_eager_autograd(binary_digits):
    eager, h_eager, _ = _train(binary_digits)
    compiled, h_fused, trainer = _train(binary_digits, compile=True)
    assert trainer._fused_step is not None
    # The same noise and batches: the per-epoch ELBOs agree closely. Adam divides by the running
    # RMS of each gradient, which turns rounding differences in gradients that are ~0 (pixels that
    # are never on) into steps of up to lr, so the tolerances leave room for that: measured
    # differences 1e-3 nats (ELBO) and 1.4e-6 (parameters) after 20 steps.
    for a, b in zip(h_eager["train_elbo"], h_fused["train_elbo"]):
        assert abs(a - b) < 0.05, (a, b)
    assert (eager - compiled).abs().max() < 0.02
    assert h_fused["train_elbo"][1] > h_fused["train_elbo"][0]  # it trains
    # Adam's state is torch.optim.Adam's, step counter included: checkpoints work unchanged.
    state = trainer.optimizer.state_dict()["state"]
    assert len(state) == 4 * (len(SMALL.hidden_dims) + 1)
    assert all(float(s["step"]) == 20 for s in state.values())


def test_compiled_fused_training_resumes_exactly(binary_digits, tmp_path):
    straight, _, _ = _train(binary_digits, epochs=2, compile=True)
    _train(binary_digits, epochs=1, checkpoint=tmp_path / "ckpt.pt", compile=True)
    resumed, history, _ = _train(binary_digits, epochs=2, checkpoint=tmp_path / "ckpt.pt", compile=True)
    assert len(history["train_elbo"]) == 2
    assert torch.equal(straight, resumed)


def test_compiled_fused_bf16_trains_like_float32(binary_digits):
    p32, h32, _ = _train(binary_digits, compile=True)
    p16, h16, trainer = _train(binary_digits, compile=True, precision="bf16")
    assert trainer._fused_step is not None and trainer._fused_step.dtype == torch.bfloat16
    assert not torch.equal(p32, p16)  # bf16 products really ran
    # Rounding the matrix products' inputs to 8 significant bits: after 20 steps the ELBOs of the
    # two runs (about -450 nats) differ by far less than a nat (measured 0.13).
    assert abs(h16["train_elbo"][-1] - h32["train_elbo"][-1]) < 1.0
