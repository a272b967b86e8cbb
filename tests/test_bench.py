"""The benchmark scripts run end to end, small: bench/train_speed.py and bench/reproduce_burda.py.

Timings are not asserted (they belong to the benchmark's own JSON, measured side by side); what is
checked is that each script runs on this machine's CPU, writes its JSON atomically where asked,
and that the numbers in it are consistent with each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], tmp_path: Path) -> dict:
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, *args, "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_train_speed_bench_runs_and_its_numbers_agree(tmp_path):
    r, stdout = _run(["bench/train_speed.py", "--device", "cpu", "--steps", "15", "--epochs", "2",
                      "--warmup", "1", "--variants", "fp32,fp32-no-flush,fp32-float-binarize",
                      "--clock", "wall"], tmp_path)
    assert r["device"] == "cpu" and r["device_name"] and r["threads"] >= 1
    assert set(r["trainer"]) == {"fp32", "fp32-no-flush", "fp32-float-binarize"}
    assert r["best_variant"] == "fp32"  # ablations are never the headline
    assert "partial epochs of 15 steps" in r["timing"]
    # 784-400-20: (2*784*400*2 + 2*400*40*3 + 2*20*400*3 + 2*400*784*3) FLOPs per image.
    assert r["gemm_flops_per_epoch"] == 60_000 * (2 * 784 * 400 * 2 + 2 * 400 * 40 * 3 + 2 * 20 * 400 * 3
                                                  + 2 * 400 * 784 * 3)
    for name, t in r["trainer"].items():
        assert len(t["epoch_s"]) == 2 and t["median_s"] > 0
        for clock in ("wall", "cpu"):
            h = t[clock]
            key = "median_s" if clock == "wall" else "median_cpu_s"
            # The ratios are the medians divided, as printed.
            assert abs(h["speedup_vs_recipe"] - r["recipe"][key] / t[key]) < 1e-9
            # The trainer cannot multiply faster than the bare GEMMs it contains; allow 50% for
            # noise between the separately timed blocks on a shared machine.
            assert 0 < h["fraction_of_gemm_rate"] < 1.5
        assert t["test_elbo_after"] < 0  # an ELBO of binary images is a log-probability
    assert "binarize_sample" in r["trainer"]["fp32-float-binarize"]["config"]["binarization"]
    assert r["trainer"]["fp32-no-flush"]["config"] == {"flush_denormal": False}
    assert "x the recipe" in stdout and "wrote" in stdout


def test_unknown_bench_variant_is_refused_with_the_choices(tmp_path):
    proc = subprocess.run([sys.executable, "bench/train_speed.py", "--variants", "fp64"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown variants ['fp64']" in proc.stderr


def test_burda_reproduction_smoke_run(tmp_path):
    r, stdout = _run(["bench/reproduce_burda.py", "--smoke", "--device", "cpu"], tmp_path)
    # What the issue asks to store: config, seed, device, wall time and the result.
    assert r["published_test_nll"] == 86.76 and r["seed"] == 0 and r["device"] == "cpu"
    assert r["model"]["hidden_dims"] == [200, 200] and r["model"]["z_dim"] == 50
    assert r["model"]["activation"] == "tanh" and r["train"]["epochs"] == 1 == r["epochs"]
    assert r["k"] == 50 and r["n_test"] == 100 and r["n_train"] == 2000 and r["smoke"] is True
    assert r["total_wall_s"] > 0 and r["test_nll_standard_error"] > 0
    # One epoch on 2,000 images: far from 86.76, but better than pixels drawn uniformly
    # (784 log 2 = 543.4 nats) and no better than the best published MNIST models (~78 nats).
    assert 78 < r["test_nll"] < 784 * 0.6931471805599453
    assert r["meets_published"] == (r["test_nll"] <= 86.76)
    assert f"{r['test_nll']:.2f}" in stdout


def test_committed_results_are_found_by_the_chapters_helper(tmp_path, monkeypatch):
    from vae_lib.book import bench_results

    speed, burda = bench_results("speed"), bench_results("burda")
    assert "cpu" in speed and all(not k.startswith("burda_") for k in speed)
    assert burda and all(k.startswith("burda_") for k in burda)
    assert speed["cpu"]["device"] == "cpu" and "trainer" in speed["cpu"]
    for r in burda.values():  # what the evaluation chapter's table prints
        for key in ("device_name", "epochs", "n_test", "k", "test_nll", "test_nll_standard_error",
                    "published_test_nll", "differences_from_paper", "seed", "train_call_s"):
            assert key in r, key
    # Outside a repository (vae_lib installed as a wheel) there is nothing to find.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("vae_lib.book.__file__", str(tmp_path / "site-packages" / "vae_lib" / "book.py"))
    assert bench_results("speed") == {} and bench_results("burda") == {}
    with pytest.raises(ValueError, match="kind must be"):
        bench_results("gpu")
