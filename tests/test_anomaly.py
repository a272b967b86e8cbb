"""Out-of-distribution inputs and the ROC AUC (book/anomaly.md)."""

from __future__ import annotations

import itertools

import pytest
import torch

from vae_lib.anomaly import OOD_KINDS, make_ood, roc_auc, roc_curve


def mann_whitney_auc(scores_in, scores_out) -> float:
    """U / (n_in n_out) by its definition: count the pairs, ties worth one half."""
    u = 0.0
    for a, b in itertools.product(scores_in, scores_out):
        u += 1.0 if a > b else 0.5 if a == b else 0.0
    return u / (len(scores_in) * len(scores_out))


def test_roc_auc_hand_computed_example():
    # Pairs (in, out): 3>1, 3>2, 3=3 (1/2), 5>1, 5>2, 5>3; 2>1, 2=2 (1/2), 2<3 -> 7 of 9.
    assert roc_auc([3.0, 5.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx(7 / 9, abs=1e-12)


def test_roc_auc_extremes():
    assert roc_auc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert roc_auc([0.0, 1.0], [2.0, 3.0]) == 0.0
    assert roc_auc([1.0, 1.0], [1.0]) == 0.5


@pytest.mark.parametrize("n_in,n_out,levels", [(7, 5, 3), (40, 60, 10), (100, 30, 1000)],
                         ids=["tiny-many-ties", "medium-ties", "few-ties"])
def test_roc_auc_matches_mann_whitney_definition(n_in, n_out, levels):
    g = torch.Generator().manual_seed(n_in * 1000 + n_out)
    s_in = torch.randint(0, levels, (n_in,), generator=g).double() + 0.3
    s_out = torch.randint(0, levels, (n_out,), generator=g).double()
    s_out = s_out + 0.3 * (torch.rand(n_out, generator=g) < 0.5)  # some ties with s_in, some not
    assert roc_auc(s_in, s_out) == pytest.approx(mann_whitney_auc(s_in.tolist(), s_out.tolist()), abs=1e-12)


def test_roc_auc_is_symmetric_and_invariant_to_monotone_maps():
    g = torch.Generator().manual_seed(3)
    s_in, s_out = torch.randn(50, generator=g) + 0.5, torch.randn(70, generator=g)
    auc = roc_auc(s_in, s_out)
    assert roc_auc(s_out, s_in) == pytest.approx(1 - auc, abs=1e-12)
    assert roc_auc(torch.exp(s_in), torch.exp(s_out)) == pytest.approx(auc, abs=1e-12)


def test_roc_curve_area_equals_auc():
    g = torch.Generator().manual_seed(4)
    s_in = torch.randint(0, 20, (80,), generator=g).double()
    s_out = torch.randint(0, 20, (50,), generator=g).double() - 3
    fpr, tpr = roc_curve(s_in, s_out)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert torch.all(fpr.diff() >= 0) and torch.all(tpr.diff() >= 0)
    assert float(torch.trapezoid(tpr, fpr)) == pytest.approx(roc_auc(s_in, s_out), abs=1e-12)


def test_roc_auc_rejects_bad_scores():
    with pytest.raises(ValueError, match="empty"):
        roc_auc([], [1.0])
    with pytest.raises(ValueError, match="NaN or inf"):
        roc_auc([float("nan")], [1.0])


def test_make_ood_kinds_on_real_digits(mnist):
    x = mnist.x_test[:16]
    assert torch.equal(make_ood("inverted", x), 1 - x)
    assert torch.equal(make_ood("blank", x), torch.zeros_like(x))
    img = x[0].reshape(28, 28)
    rotated = make_ood("rotated", x)[0].reshape(28, 28)
    # Counter-clockwise by 90 degrees: the top row of the result is the right column of the input.
    assert torch.equal(rotated[0], img[:, -1])
    assert torch.equal(make_ood("rotated", make_ood("rotated", x)).reshape(-1, 28, 28), torch.flip(x.reshape(-1, 28, 28), dims=(1, 2)))
    flipped = make_ood("flipped", x)[0].reshape(28, 28)
    assert torch.equal(flipped[:, 0], img[:, -1])
    assert torch.equal(make_ood("flipped", make_ood("flipped", x)), x)
    for kind in OOD_KINDS:
        out = make_ood(kind, x)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_make_ood_noise_is_fair_seeded_coins(mnist):
    x = mnist.x_test[:500]
    a, b = make_ood("noise", x, seed=1), make_ood("noise", x, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, make_ood("noise", x, seed=2))
    assert set(a.unique().tolist()) == {0.0, 1.0}
    # Mean of 392,000 fair coins: standard error 0.5 / sqrt(392000) = 8e-4; allow 5 SE.
    assert abs(float(a.mean()) - 0.5) < 5 * 0.5 / (a.numel() ** 0.5)


def test_make_ood_rejects_bad_input(mnist):
    with pytest.raises(ValueError, match="unknown out-of-distribution kind"):
        make_ood("upside-down", mnist.x_test[:2])
    with pytest.raises(ValueError, match="square"):
        make_ood("rotated", torch.zeros(2, 10))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_ood("inverted", mnist.x_test[:2] * 255)
    with pytest.raises(ValueError, match="2-D"):
        make_ood("blank", torch.zeros(784))
