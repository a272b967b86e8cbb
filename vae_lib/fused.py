"""A whole training step of the book's VAE as one compiled function: TrainConfig(compile=True).

With autograd, one step of the 784-400-20 model on a CPU runs some 25 recorded operations forward,
their 25 backward nodes, and Adam's update, each a separate kernel with microseconds of overhead:
about half of the step, the matrix products being the other half. Here the step is three plain
functions of tensors: `forward` (encoder, reparametrised sample, decoder, per-image ELBO terms),
`backward` (the gradient, written out with the chain rule below) and `adam_` (torch.optim.Adam's
update, in place). `train_step` chains them, and `torch.compile` turns it into the matrix products
plus a few fused loops. The trainer uses it when `TrainConfig(compile=True)` and `FusedStep.build`
finds that it computes what the autograd path would: a plain `model.VAE`, `ELBOLoss` with the Bernoulli
likelihood, float32, and torch.optim.Adam with its defaults (no weight decay, no AMSGrad). Any
other case compiles the autograd loss as before.

The noise eps is drawn outside, from torch's global generator, exactly as `model.reparametrize`
draws it, and Adam's state lives in the optimizer in torch's own format, so checkpoints and
resumption work as with the autograd path, and a run agrees with the eager autograd run to float32
rounding (tests/test_fused.py checks both, and the gradient in float64). Introduced in
book/gpu.md.

The chain rule, for images b with g_r = dLoss/d recon_b and g_k = dLoss/d KL_b:

    recon = sum_d [x_d l_d - softplus(l_d)]        d recon / d l = x - sigmoid(l)
    KL = 1/2 sum_j (mu_j^2 + exp(v_j) - v_j - 1)   d KL / d mu = mu,   d KL / d v = (exp(v) - 1) / 2
    z = mu + exp(v / 2) eps                        d z / d mu = 1,     d z / d v = exp(v / 2) eps / 2

A linear layer y = h W^T + b passes back dW = dy^T h, db = sum over the batch of dy, dh = dy W;
ReLU passes dh [h > 0] and tanh dh (1 - h^2), both written with the layer's output h. With the
loss -(1/B) sum_b (recon_b - w KL_b), g_r = -1/B and g_k = w/B for every image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import ELBOLoss
from .model import VAE


def parameters(model: VAE) -> list[torch.Tensor]:
    """(W, b) of every linear layer in order: encoder hidden layers, head, decoder layers."""
    enc = [m for m in model.encoder.body if isinstance(m, torch.nn.Linear)]
    dec = [m for m in model.decoder.net if isinstance(m, torch.nn.Linear)]
    return [t for layer in (*enc, model.encoder.head, *dec) for t in (layer.weight, layer.bias)]


def mm(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """a @ b; with dtype=torch.bfloat16 the inputs are rounded to bfloat16 and the float32 result
    is kept, as under autocast (which rounds the result too)."""
    if dtype is None:
        return torch.mm(a, b)
    return torch.mm(a.to(dtype), b.to(dtype)).float()


def linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.addmm(b, h, w.t()) if dtype is None else mm(h, w.t(), dtype) + b


def forward(x: torch.Tensor, eps: torch.Tensor, params: list[torch.Tensor], n_enc: int, tanh: bool,
            dtype: torch.dtype | None = None):
    """recon (B,), kl (B,), and what `backward` needs: the inputs of every layer, the logits,
    mu, sigma. `dtype` is the matrix products' input precision (None: float32)."""
    act = torch.tanh if tanh else torch.relu
    ws, bs = params[0::2], params[1::2]
    inputs = [x]  # the input of every linear layer
    h = x
    for i in range(n_enc):
        h = act(linear(h, ws[i], bs[i], dtype))
        inputs.append(h)
    mu, logvar = linear(h, ws[n_enc], bs[n_enc], dtype).chunk(2, dim=-1)
    sigma = torch.exp(0.5 * logvar)
    h = mu + sigma * eps  # z
    for i in range(n_enc + 1, len(ws)):
        inputs.append(h)
        h = linear(h, ws[i], bs[i], dtype)
        if i < len(ws) - 1:
            h = act(h)
    logits = h
    # log p(x|z) = sum_d x l - softplus(l), as binary_cross_entropy_with_logits computes it.
    recon = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    kl = 0.5 * (mu * mu + sigma * sigma - logvar - 1.0).sum(-1)
    return recon, kl, inputs, logits, mu, sigma


def backward(g_recon: torch.Tensor, g_kl: torch.Tensor, eps: torch.Tensor, params: list[torch.Tensor],
             inputs: list[torch.Tensor], logits: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
             n_enc: int, tanh: bool, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Gradients of the loss with respect to params, in their order (matrix products in dtype)."""
    ws = params[0::2]
    n_lin = len(ws)
    x = inputs[0]
    grads: list[torch.Tensor] = [x] * (2 * n_lin)  # placeholders, all overwritten

    def through_activation(dh, h):  # h: the activation's output
        return dh * (1 - h * h) if tanh else dh * (h > 0)

    dy = (x - torch.sigmoid(logits)) * g_recon.unsqueeze(-1)  # d Loss / d logits
    for i in range(n_lin - 1, n_enc, -1):  # decoder layers, last first
        grads[2 * i], grads[2 * i + 1] = mm(dy.t(), inputs[i], dtype), dy.sum(0)
        dy = mm(dy, ws[i], dtype)
        if i > n_enc + 1:
            dy = through_activation(dy, inputs[i])
    gk = g_kl.unsqueeze(-1)
    dmu = dy + gk * mu
    dlogvar = dy * eps * (0.5 * sigma) + gk * 0.5 * (sigma * sigma - 1.0)
    dy = torch.cat([dmu, dlogvar], dim=-1)
    for i in range(n_enc, -1, -1):  # the head, then the encoder's hidden layers
        grads[2 * i], grads[2 * i + 1] = mm(dy.t(), inputs[i], dtype), dy.sum(0)
        if i > 0:
            dy = through_activation(mm(dy, ws[i], dtype), inputs[i])
    return grads


def adam_(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1: float, beta2: float, eps: float) -> None:
    """torch.optim.Adam's update (no weight decay, no AMSGrad), in place on params and state."""
    for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        t.add_(1)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias1, bias2 = 1 - beta1 ** t, 1 - beta2 ** t
        denom = (v.sqrt() / bias2.sqrt()).add_(eps)
        p.sub_(lr * m / (bias1 * denom))


def train_step(x, eps, params, exp_avgs, exp_avg_sqs, steps, lr, kl_weight,
               n_enc: int, tanh: bool, beta1: float, beta2: float, adam_eps: float,
               dtype: torch.dtype | None = None):
    """Forward, backward and Adam for one batch; returns the loss and the per-image ELBO, recon, KL."""
    with torch.no_grad():
        recon, kl, inputs, logits, mu, sigma = forward(x, eps, params, n_enc, tanh, dtype)
        b = x.shape[0]
        g_recon = torch.full_like(recon, -1.0 / b)
        g_kl = (kl_weight / b).expand_as(kl)
        grads = backward(g_recon, g_kl, eps, params, inputs, logits, mu, sigma, n_enc, tanh, dtype)
        adam_(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, adam_eps)
        loss = -(recon - kl_weight * kl).mean()
    return loss, recon - kl, recon, kl


_compiled_train_step = None


class FusedStep:
    """The trainer's step for a VAE with ELBOLoss and Adam: `step(batch) -> (loss, metrics)`,
    metrics as ELBOLoss returns them. Build it with `FusedStep.build`, which returns None where the
    step would not compute what autograd and torch.optim.Adam compute."""

    def __init__(self, model, loss_fn, optimizer, dtype: torch.dtype | None = None):
        self.model, self.loss_fn, self.optimizer, self.dtype = model, loss_fn, optimizer, dtype
        self.params = parameters(model)
        self.n_enc = len(model.config.hidden_dims)
        self.tanh = model.config.activation == "tanh"
        self._scalars: dict[str, tuple[float, torch.Tensor]] = {}

    @classmethod
    def build(cls, model, loss_fn, optimizer, dtype: torch.dtype | None = None) -> "FusedStep | None":
        if type(model) is not VAE or type(loss_fn) is not ELBOLoss or loss_fn.likelihood != "bernoulli":
            return None
        if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
            return None
        group = optimizer.param_groups[0]
        if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
            return None
        step = cls(model, loss_fn, optimizer, dtype)
        params = step.params
        if {id(p) for p in params} != {id(p) for p in group["params"]} or len(params) != len(group["params"]):
            return None
        if any(p.dtype != torch.float32 for p in params):
            return None
        return step

    def _state(self):
        """Adam's state tensors in torch.optim.Adam's format, created as its first step would."""
        state = self.optimizer.state
        for p in self.params:
            if not state[p]:
                state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                            "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        return ([state[p]["exp_avg"] for p in self.params], [state[p]["exp_avg_sq"] for p in self.params],
                [state[p]["step"] for p in self.params])

    def _scalar(self, name: str, value: float, device) -> torch.Tensor:
        """value as a 0-d tensor (a tensor, so a new learning rate does not recompile), reused
        while it does not change."""
        cached = self._scalars.get(name)
        if cached is None or cached[0] != value or cached[1].device != device:
            cached = (value, torch.tensor(value, dtype=torch.float32, device=device))
            self._scalars[name] = cached
        return cached[1]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        global _compiled_train_step
        if _compiled_train_step is None:
            _compiled_train_step = torch.compile(train_step, dynamic=False)
        group = self.optimizer.param_groups[0]
        device = x.device
        # The noise, drawn exactly as model.reparametrize draws it (same generator, shape, order).
        eps = torch.randn((x.shape[0], self.model.config.z_dim), dtype=x.dtype, device=device)
        lr = self._scalar("lr", float(group["lr"]), device)
        kl_weight = self._scalar("kl_weight", float(self.loss_fn.kl_weight), device)
        exp_avgs, exp_avg_sqs, steps = self._state()
        beta1, beta2 = group["betas"]
        loss, elbo, recon, kl = _compiled_train_step(x, eps, self.params, exp_avgs, exp_avg_sqs, steps, lr,
                                                     kl_weight, self.n_enc, self.tanh, beta1, beta2, group["eps"],
                                                     self.dtype)
        return loss, {"elbo": elbo, "recon": recon, "kl": kl}
