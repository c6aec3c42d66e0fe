"""experiments/ddpm_2d.py: DDPM and DDIM on the 2-D toy datasets, scored by sliced Wasserstein."""

import json

import jax
import numpy as np
import pytest

from experiments.ddpm_2d import make_data
from jaxmath.run.cli import run_experiment
from tests import _experiment_runs as runs
from tests.tolerances import F32_LOOSE

CONFIG = runs.config_path("ddpm_2d")
PER_DATASET = ("sw_ddpm", "sw_ddim", "sw_reference", "mmd_ddpm", "mmd_ddim", "mmd_reference",
               "sw_target", "target_met")


quick = runs.quick_fixture(CONFIG)


def test_quick_run_writes_its_files(quick):
    summary, tmp_path = quick
    runs.assert_run_files(tmp_path, "metrics.jsonl", "plots/samples.png", "plots/loss.png")
    assert any((tmp_path / "checkpoints").iterdir())
    names = summary["datasets"].split(",")
    for name in names:
        for key in PER_DATASET:
            assert f"{name}_{key}" in summary, f"{name}_{key}"
        assert summary[f"{name}_sw_ddpm"] > 0 and summary[f"{name}_sw_reference"] > 0
    for key in ("ddpm_sample_s", "ddim_sample_s", "ddim_speedup", "sw_ratio_ddpm_max",
                "sw_ratio_ddim_max", "target", "target_factor", "target_met", "train_s",
                "wall_time_s", "train_compile_s", "train_steps_per_s", "steps_per_call"):
        assert key in summary, key
    runs.assert_loop_timing(summary, scan_steps=10)
    assert summary["ddim_steps"] == summary["num_timesteps"] // 10
    rows = runs.metrics_rows(tmp_path)
    assert [r["step"] for r in rows] == [10, 20]
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert {f"loss_{name}" for name in names} <= set(rows[-1])
    assert json.loads((tmp_path / "summary.json").read_text())["datasets"] == summary["datasets"]


def test_scan_path_gives_the_same_run(quick, tmp_path):
    runs.check_scan_path(CONFIG, quick, tmp_path, scan_steps=10)


def test_data_is_standardised_per_dataset():
    cfg = {"two_moons": {"noise": 0.1}, "eight_gaussians": {"std": 0.1}}
    data = make_data(("two_moons", "eight_gaussians"), cfg, jax.random.key(0), num_train=400,
                     num_eval=50, num_reference=3)
    assert data["train"].shape == (2, 400, 2)
    assert data["heldout"].shape == (2, 50, 2)
    assert data["reference"].shape == (2, 3, 50, 2)
    np.testing.assert_allclose(data["train"].mean(1), 0.0, atol=F32_LOOSE)
    np.testing.assert_allclose(data["train"].std(1), 1.0, rtol=F32_LOOSE)
    # held-out points are fresh draws, standardised with the training statistics
    assert not np.isin(data["heldout"][0], data["train"][0]).all(axis=1).any()
    assert abs(data["heldout"].mean()) < 0.5


@pytest.mark.slow
def test_resume_matches_an_uninterrupted_run(tmp_path):
    once = run_experiment(f"{CONFIG}:quick", tmp_path / "once", verbose=False)
    twice_dir = tmp_path / "twice"
    run_experiment(f"{CONFIG}:quick", twice_dir, ["--config.num_steps=10"], verbose=False)
    twice = run_experiment(f"{CONFIG}:quick", twice_dir, verbose=False)
    assert runs.metrics_rows(twice_dir) == runs.metrics_rows(tmp_path / "once")
    for key in once:
        if "sw_" in key or "mmd_" in key:
            assert twice[key] == once[key], key


@pytest.mark.slow
def test_default_config_meets_its_target(tmp_path):
    summary = runs.default_run(CONFIG, tmp_path)
    assert summary["sw_ratio_ddpm_max"] <= summary["target_factor"]
    assert summary["ddim_steps"] * 10 == summary["num_timesteps"]
    assert summary["ddim_speedup"] > 3
