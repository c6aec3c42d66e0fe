"""Run reports: atomic PNG/JSON/Markdown files, only process 0 writes, report.md content."""

import json
import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.figure import Figure

from jaxmath.run import report
from jaxmath.run.files import MetricsLog
from jaxmath.run.report import (
    format_value,
    save_figure,
    summary_table,
    write_report,
    write_summary,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DOC = """Echo: doubles a value.

    jaxmath run configs/echo.py --workdir runs/echo
    $ python -m jaxmath run configs/echo.py:quick --workdir /tmp/q

Expected: doubled = 3.0.
"""


def _figure():
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


def _leftovers(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_save_figure_writes_a_png(tmp_path):
    path = save_figure(_figure(), tmp_path, "loss_curve")
    assert path == tmp_path / "plots" / "loss_curve.png"
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert save_figure(_figure(), tmp_path, "again.png").name == "again.png"
    assert stat.S_IMODE(path.stat().st_mode) & 0o044  # readable by others (umask allowing)
    assert _leftovers(path.parent) == []


def test_save_figure_closes_pyplot_figures(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    number = fig.number
    save_figure(fig, tmp_path, "p")
    assert not plt.fignum_exists(number)


def test_save_figure_is_atomic(tmp_path, monkeypatch):
    path = save_figure(_figure(), tmp_path, "p")
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", crash)
    big = Figure(figsize=(4, 4))
    big.add_subplot().plot(np.arange(100.0))
    with pytest.raises(OSError, match="disk full"):
        save_figure(big, tmp_path, "p")
    assert path.read_bytes() == before  # the old file is intact
    assert _leftovers(path.parent) == []  # and no temporary file is left


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "sp ace"])
def test_save_figure_rejects_bad_names(tmp_path, name):
    with pytest.raises(ValueError, match="name must be a file name"):
        save_figure(_figure(), tmp_path, name)


def test_only_process_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert save_figure(_figure(), tmp_path, "p") == tmp_path / "plots" / "p.png"
    write_summary(tmp_path, {"a": 1})
    write_report(tmp_path, {"a": 1}, "t")
    assert list(tmp_path.iterdir()) == []


def test_write_summary_converts_numpy_and_jax_scalars(tmp_path):
    summary = {"f32": np.float32(0.5), "i64": np.int64(3), "jax": jnp.float32(2.0),
               "flag": np.bool_(True), "vec": jnp.arange(3), "dtype": np.dtype("float32"),
               "nested": {"x": np.float64(1.25)}, "nan": float("nan")}
    path = write_summary(tmp_path, summary)
    loaded = json.loads(path.read_text())
    assert loaded["f32"] == 0.5 and loaded["i64"] == 3 and loaded["jax"] == 2.0
    assert loaded["flag"] is True and loaded["vec"] == [0, 1, 2]
    assert loaded["dtype"] == "float32" and loaded["nested"] == {"x": 1.25}
    assert np.isnan(loaded["nan"])
    assert _leftovers(tmp_path) == []


def test_write_summary_is_atomic(tmp_path, monkeypatch):
    path = write_summary(tmp_path, {"a": 1})
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError, match="boom"):
        write_summary(tmp_path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert _leftovers(tmp_path) == []


BAD = [
    (lambda d: write_summary(d, [1, 2]), TypeError, "summary must be a mapping, got list"),
    (lambda d: write_report(d, None, "t"), TypeError, "summary must be a mapping, got NoneType"),
    (lambda d: save_figure(_figure(), d, "a/b"), ValueError, "name must be a file name"),
]


@pytest.mark.parametrize(("call", "error", "pattern"), BAD)
def test_bad_inputs(tmp_path, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(tmp_path)


def test_format_value_and_summary_table():
    assert format_value(np.float32(0.123456)) == "0.1235"
    assert format_value(False) == "false"
    assert format_value(float("inf")) == "inf"
    assert format_value(list(range(10))) == '[0, 1, 2, 3, 4, 5, 6, 7, "..."]'
    text = summary_table({"a": 1, "long_name": "x|y"}, markdown=True)
    assert text.splitlines() == ["| key | value |", "|---|---|", "| a | 1 |",
                                 "| long_name | x\\|y |"]
    assert summary_table({}) == ""


def test_report_content(tmp_path):
    save_figure(_figure(), tmp_path, "b_samples")
    save_figure(_figure(), tmp_path, "a_loss")
    log = MetricsLog(tmp_path)
    log.write(0, {"loss": 1.0})
    log.write(10, {"loss": 0.5})
    (tmp_path / "config.json").write_text("{}")
    summary = {"accuracy": 0.98765, "target_met": True}
    command = "jaxmath run configs/echo.py --workdir runs/echo --config.seed=1"
    path = write_report(tmp_path, summary, "echo (quick)", doc=DOC, command=command)
    assert path == tmp_path / "report.md"
    text = path.read_text()
    assert text.startswith("# echo (quick)\n\nEcho: doubles a value.\n")
    assert ("```sh\njaxmath run configs/echo.py --workdir runs/echo\n"
            "python -m jaxmath run configs/echo.py:quick --workdir /tmp/q\n```") in text
    assert "Expected: doubled = 3.0." in text
    assert f"This run:\n\n```sh\n{command}\n```" in text
    assert "| accuracy | 0.9877 |" in text and "| target_met | true |" in text
    # every plot embedded, by relative link, in name order
    assert text.index("![a_loss](plots/a_loss.png)") < text.index(
        "![b_samples](plots/b_samples.png)")
    assert "[metrics.jsonl](metrics.jsonl): 2 logged rows" in text
    assert "[config.json](config.json)" in text and "[summary.json](summary.json)" in text


def test_report_without_plots_or_metrics(tmp_path):
    text = write_report(tmp_path, {"x": 1}, "bare").read_text()
    assert "## Plots" not in text and "```sh" not in text
    assert "metrics.jsonl: none written by this run" in text


def test_report_reproducibility_section(tmp_path):
    record = {"started": "2026-12-05T02:00:00+00:00", "command": "jaxmath run c.py --workdir w",
              "git": {"root": "/r", "commit": "ab" * 20, "dirty": True},
              "versions": {"python": "3.12.0", "jax": "0.10.2", "orbax-checkpoint": None},
              "backend": "gpu", "devices": {"NVIDIA H200": 8}, "process_count": 2,
              "seeds": {"seed": 0, "data.split_seed": 3},
              "rerun_command": "jaxmath run --rerun w"}
    text = write_report(tmp_path, {"x": 1}, "t", record=record).read_text()
    section = text.split("## Reproducibility\n")[1].split("## Files")[0]
    assert f"- code: `{'ab' * 20}` (dirty: uncommitted changes) in `/r`" in section
    assert "- versions: python 3.12.0, jax 0.10.2\n" in section  # an absent package is left out
    assert "- backend: gpu; devices: 8 x NVIDIA H200; processes: 2" in section
    assert "- seeds: seed = 0, data.split_seed = 3" in section
    assert "```sh\njaxmath run c.py --workdir w\n```" in section
    assert "```sh\njaxmath run --rerun w\n```" in section
    assert "## Reproducibility" not in write_report(tmp_path, {"x": 1}, "t").read_text()
