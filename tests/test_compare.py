"""`jaxmath compare`: tables checked against the metrics files, the figure's lines, bad input."""

import json
import math
import re

import numpy as np
import pytest

from jaxmath.run.cli import main
from jaxmath.run.compare import (
    MAX_MEMBERS,
    compare_figure,
    compare_runs,
    compare_table,
    load_sources,
)
from jaxmath.run.config import ConfigError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(workdir, rows, config):
    workdir.mkdir(parents=True)
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (workdir / "config.json").write_text(json.dumps({**config, "_record": {"command": "x"}}))
    return workdir


@pytest.fixture
def runs(tmp_path):
    """Two runs: loss and accuracy every 10 steps (one nan loss), and a third metric only in
    the first; their configs differ in optim.learning_rate and seed."""
    rng = np.random.default_rng(0)
    out = []
    for i, lr in enumerate((0.1, 0.01)):
        rows = []
        for step in range(0, 60, 10):
            row = {"step": step, "loss": float(rng.uniform(0.1, 2.0)),
                   "accuracy": float(rng.uniform(0, 1))}
            if i == 0:
                row["only_here"] = 1.0
            rows.append(row)
        if i == 1:
            rows[2]["loss"] = math.nan
        out.append(_run(tmp_path / f"run{i}", rows,
                        {"seed": i, "optim": {"learning_rate": lr, "b1": 0.9}, "num_steps": 50}))
    return out


def _expected(workdir, name, lower):
    """final, best, best step of ``name`` computed from the file with NumPy."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = np.array([r["step"] for r in rows])
    values = np.array([r[name] for r in rows], dtype=float)
    pick = np.nanargmin if lower else np.nanargmax
    return values[-1], values[pick(values)], int(steps[pick(values)])


def test_table_against_the_metrics_files(runs, tmp_path):
    out = tmp_path / "cmp"
    result = compare_runs([str(r) for r in runs], out)
    stored = json.loads((out / "compare.json").read_text())
    assert stored["metrics"] == ["loss", "accuracy"]  # only_here is not in both
    assert stored["config_keys"] == ["seed", "optim.learning_rate"]
    for run, entry in zip(runs, stored["runs"], strict=True):
        assert entry["label"] == str(run) and entry["member"] is None
        stored_config = json.loads((run / "config.json").read_text())
        assert entry["config"] == {"seed": stored_config["seed"],
                                   "optim.learning_rate": stored_config["optim"]["learning_rate"]}
        for name, lower in (("loss", True), ("accuracy", False)):
            final, best, best_step = _expected(run, name, lower)
            m = entry["metrics"][name]
            assert m["final"] == final and m["best"] == best and m["best_step"] == best_step
            assert m["final_step"] == 50 and m["points"] == 6
    assert (out / "compare.png").read_bytes().startswith(PNG_MAGIC)
    text = (out / "compare.md").read_text()
    assert text == result["table"]
    assert "| run | seed | optim.learning_rate |" in text and "## accuracy" in text
    assert "![compare](compare.png)" in text
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_figure_has_one_line_per_run_per_panel(runs):
    sources = load_sources([str(r) for r in runs])
    fig = compare_figure(sources)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy"]
    for ax in fig.axes:
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == [str(r) for r in runs]
        np.testing.assert_array_equal(lines[0].get_xdata(), np.arange(0, 60, 10))
    assert fig.axes[0].get_yscale() == "log" and fig.axes[1].get_yscale() == "linear"


def _sweep(workdir, n=4, log_every=5):
    workdir.mkdir(parents=True)
    rows = []
    for i in range(n):
        lr, seed = (0.1, 0.01, 1e-3 / 3, 1.0)[i % 4], i // 4
        rows.append({"index": i, "learning_rate": lr, "seed": seed, "diverged": False,
                     "loss_curve": [1.0 / (1 + i + k) for k in range(3)],
                     "test_accuracy": 0.5 + 0.01 * i})
    (workdir / "sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"log_every": log_every, "sweep": {"axes": {"learning_rate": [0.1, 0.01],
                                                         "seed": [0]}}}
    (workdir / "config.json").write_text(json.dumps(config))
    return workdir, rows


def test_sweep_members(tmp_path):
    workdir, rows = _sweep(tmp_path / "sweep")
    everyone = load_sources([str(workdir)])
    assert [s.member for s in everyone] == [0, 1, 2, 3]
    steps, values = everyone[2].metrics["loss"]
    assert steps == [5, 10, 15] and values == rows[2]["loss_curve"]
    assert everyone[2].results == {"test_accuracy": rows[2]["test_accuracy"]}
    picked = load_sources([f"{workdir}:1", f"{workdir}:learning_rate=3.33333333e-4,seed=0"])
    assert [s.member for s in picked] == [1, 2]
    assert picked[0].label == f"{workdir}:1 (learning_rate=0.01,seed=0)"
    table = compare_table(picked)
    assert table["config_keys"] == ["sweep:learning_rate"]
    assert table["runs"][1]["metrics"]["loss"] == {
        "final": rows[2]["loss_curve"][-1], "final_step": 15, "best": min(rows[2]["loss_curve"]),
        "best_step": 15, "points": 3}


def test_a_sweep_member_beside_a_run(runs, tmp_path):
    workdir, _ = _sweep(tmp_path / "sweep")
    fig = compare_figure(load_sources([str(runs[0]), f"{workdir}:0"]))
    assert [ax.get_title() for ax in fig.axes] == ["loss"]
    assert len(fig.axes[0].get_lines()) == 2


def test_cli_compare(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| run | final | step | best | best step |" in printed
    assert printed.rstrip().endswith(str(out / "compare.json"))
    assert {p.name for p in out.iterdir()} == {"compare.png", "compare.md", "compare.json"}


def test_bad_inputs(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    other = _run(tmp_path / "other", [{"step": 0, "reward": 1.0}], {"seed": 0})
    sweep, _ = _sweep(tmp_path / "sweep")
    big, _ = _sweep(tmp_path / "big", n=MAX_MEMBERS + 1)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    cases = [
        ([str(tmp_path / "missing")], r"missing: no such run directory"),
        ([str(empty)], r"no metrics: .*empty has no metrics\.jsonl rows and no sweep\.jsonl"),
        ([str(runs[0]), str(other)], r"the runs have no metric in common \(.*reward"),
        ([f"{runs[0]}:3"], r"a member selector needs a sweep workdir"),
        ([f"{sweep}:9"], r"no sweep member 9; the indices are 0\.\.3"),
        ([f"{sweep}:lr"], r"cannot parse the member selector 'lr'"),
        ([f"{sweep}:lr=0.1"], r"the sweep table has no column 'lr'; its columns: index, "
                              r"learning_rate"),
        ([f"{sweep}:learning_rate=0.5"], r"no sweep member has learning_rate=0\.5"),
        ([str(big)], rf"a sweep of {MAX_MEMBERS + 1} members .*choose some, e\.g\. .*big:0"),
    ]
    for texts, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            compare_table(load_sources(texts))
        assert main(["compare", *texts, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("jaxmath: error: "), err
        assert re.search(pattern, err), err
    with pytest.raises(ConfigError, match=r"--out .* exists and is not a directory"):
        compare_runs([str(runs[0])], not_a_dir)
    assert main(["compare", str(runs[0])]) == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
