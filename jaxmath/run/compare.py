"""``jaxmath compare``: the metrics of several runs or sweep members, overlaid and tabulated.

A source is a workdir (its ``metrics.jsonl``), or members of a sweep workdir's
``sweep.jsonl`` (:func:`jaxmath.run.sweep.write_table`)::

    W                        W/metrics.jsonl; a sweep workdir without one: all its members
    W:3                      the member of index 3
    W:learning_rate=0.01,seed=0   the members with these values (floats to 1e-6 relative)

A run's metrics are the numeric columns of its ``metrics.jsonl`` against ``step``. A sweep
member's are its list-valued columns (curves; a ``_curve`` suffix is dropped: ``loss_curve``
is ``loss``), at the steps ``log_every, 2 log_every, ...`` (``log_every`` from the sweep's
``config.json``, else 1); its scalar results are listed as ``results``.

:func:`compare_runs` writes into ``--out``, atomically (:mod:`jaxmath.run.files`):

- ``compare.png``: one panel per metric every source has, one line per source, against the
  step; a log scale for metrics named ``*loss*`` whose values are all positive;
- ``compare.json``: per source its label, workdir, member, config differences, and per
  metric ``final``, ``best`` (the minimum for ``*loss*``/``*error*``/``*_s`` metrics, else the
  maximum), ``best_step`` and ``points``, non-finite values ignored for the best;
- ``compare.md``: the same as tables.

The config differences are the dotted keys of ``config.json`` (plus a member's sweep
values) whose values differ between the sources.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from jaxmath.run.config import ConfigError
from jaxmath.run.files import (
    METRICS_FILE,
    MetricsLog,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from jaxmath.run.record import RECORD_KEY
from jaxmath.run.report import format_value

__all__ = ["MAX_MEMBERS", "Source", "compare_figure", "compare_runs", "compare_table",
           "load_sources", "lower_is_better"]

MAX_MEMBERS = 12
"""A sweep workdir named without a selector contributes all its members up to this many."""

SWEEP_FILE = "sweep.jsonl"
_FLOAT_RTOL = 1e-6
_NOT_METRICS = ("index", "diverged", "diverged_step")


class Source(NamedTuple):
    """One line per panel: a run or a sweep member."""

    label: str
    workdir: str
    member: int | None  # the sweep index, None for a run's metrics.jsonl
    config: dict[str, Any]  # flattened config.json (plus a member's sweep values)
    metrics: dict[str, tuple[list[int], list[float]]]  # name -> (steps, values)
    results: dict[str, Any]  # a member's scalar results


def lower_is_better(name: str) -> bool:
    """Metrics whose best value is the minimum: names containing ``loss`` or ``error``, and
    times in seconds (``perf/compile_s``).

    Example:
      >>> lower_is_better("train/loss"), lower_is_better("accuracy")
      (True, False)
      >>> lower_is_better("perf/compile_s"), lower_is_better("perf/steps_per_s")
      (True, False)
    """
    lowered = name.lower()
    seconds = lowered.endswith("_s") and not lowered.endswith("_per_s")
    return "loss" in lowered or "error" in lowered or seconds


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _read_config(workdir: Path) -> dict[str, Any]:
    path = workdir / "config.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(stored, dict):
        return {}
    stored.pop(RECORD_KEY, None)
    return _flatten(stored)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _run_metrics(workdir: Path) -> dict[str, tuple[list[int], list[float]]]:
    metrics: dict[str, tuple[list[int], list[float]]] = {}
    for row in MetricsLog(workdir).read():
        for key, value in row.items():
            if key == "step" or not (_is_number(value) or value is None):
                continue
            steps, values = metrics.setdefault(key, ([], []))
            steps.append(row["step"])
            values.append(math.nan if value is None else float(value))
    return metrics


def _read_sweep(workdir: Path) -> list[dict[str, Any]]:
    rows = []
    path = workdir / SWEEP_FILE
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise ConfigError(f"{path} line {number} is not valid JSON") from None
    return rows


def _hparam_names(rows: list[dict[str, Any]], config: Mapping[str, Any]) -> list[str]:
    """The sweep table's hyperparameter columns: the config's ``sweep.axes`` names where
    present, else the scalar columns that vary and are not results of the training."""
    axes = sorted({k.split(".")[2] for k in config if k.startswith("sweep.axes.")})
    if axes and all(a in rows[0] for a in axes):
        return axes
    return [k for k in rows[0] if k not in _NOT_METRICS and not isinstance(rows[0][k], list)
            and len({json.dumps(r.get(k)) for r in rows}) > 1 and not lower_is_better(k)
            and "accuracy" not in k]


def _matches(value: Any, text: str) -> bool:
    if _is_number(value):
        try:
            wanted = float(text)
        except ValueError:
            return False
        return math.isclose(float(value), wanted, rel_tol=_FLOAT_RTOL, abs_tol=0.0) or (
            value == wanted)
    if isinstance(value, bool):
        return str(value).lower() == text.strip().lower()
    return str(value) == text


def _select(rows: list[dict[str, Any]], selector: str, where: str) -> list[dict[str, Any]]:
    if selector.strip().lstrip("-").isdigit():
        index = int(selector)
        found = [r for r in rows if r.get("index") == index]
        if not found:
            raise ConfigError(f"{where}: no sweep member {index}; the indices are 0.."
                              f"{len(rows) - 1}")
        return found
    chosen = rows
    for part in selector.split(","):
        key, sep, text = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{where}: cannot parse the member selector {selector!r}; expected "
                              "an index (W:3) or key=value pairs (W:learning_rate=0.01,seed=0)")
        if key not in rows[0]:
            columns = ", ".join(k for k in rows[0] if not isinstance(rows[0][k], list))
            raise ConfigError(f"{where}: the sweep table has no column {key!r}; its columns: "
                              f"{columns}")
        chosen = [r for r in chosen if _matches(r.get(key), text.strip())]
    if not chosen:
        raise ConfigError(f"{where}: no sweep member has {selector}")
    return chosen


def _members(workdir: Path, selector: str | None, label: str) -> list[Source]:
    config = _read_config(workdir)
    rows = _read_sweep(workdir)
    if not rows:
        raise ConfigError(f"{workdir / SWEEP_FILE} holds no members")
    if selector is None:
        if len(rows) > MAX_MEMBERS:
            raise ConfigError(f"{workdir} is a sweep of {len(rows)} members (more than "
                              f"{MAX_MEMBERS}); choose some, e.g. {label}:0 or "
                              f"{label}:<key>=<value>")
        chosen = rows
    else:
        chosen = _select(rows, selector, f"{label}:{selector}")
    names = _hparam_names(rows, config)
    log_every = config.get("log_every")
    every = int(log_every) if _is_number(log_every) and log_every > 0 else 1
    sources = []
    for row in chosen:
        metrics, results = {}, {}
        for key, value in row.items():
            if key in _NOT_METRICS or key in names:
                continue
            if isinstance(value, list) and value and all(
                    _is_number(v) or v is None for v in value):
                name = key.removesuffix("_curve") or key
                metrics[name] = ([every * (i + 1) for i in range(len(value))],
                                 [math.nan if v is None else float(v) for v in value])
            elif _is_number(value) or value is None or isinstance(value, bool):
                results[key] = value
        values = {k: row[k] for k in names if k in row}
        shown = ",".join(f"{k}={format_value(v)}" for k, v in values.items())
        member_label = f"{label}:{row.get('index')}" + (f" ({shown})" if shown else "")
        member_config = {**config, **{f"sweep:{k}": v for k, v in values.items()}}
        sources.append(Source(member_label, str(workdir), row.get("index"), member_config,
                              metrics, results))
    return sources


def _split_source(text: str) -> tuple[Path, str | None]:
    path = Path(text)
    if path.is_dir():
        return path, None
    head, sep, tail = text.rpartition(":")
    if sep and head and "/" not in tail:
        return Path(head), tail
    return path, None


def load_sources(texts: Sequence[str]) -> list[Source]:
    """The runs and sweep members ``texts`` name (see the module docstring).

    Raises:
      ConfigError: a workdir that does not exist or has neither ``metrics.jsonl`` rows nor a
        ``sweep.jsonl``, a selector on a workdir without ``sweep.jsonl``, a bad selector, or
        a selector no member matches.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of workdirs, got a single string")
    sources: list[Source] = []
    for text in texts:
        workdir, selector = _split_source(str(text))
        label = str(workdir)
        if not workdir.is_dir():
            raise ConfigError(f"{text}: no such run directory")
        has_sweep = (workdir / SWEEP_FILE).is_file()
        if selector is not None:
            if not has_sweep:
                raise ConfigError(f"{text}: a member selector needs a sweep workdir, but "
                                  f"{workdir} has no {SWEEP_FILE}")
            sources.extend(_members(workdir, selector, label))
            continue
        metrics = _run_metrics(workdir) if (workdir / METRICS_FILE).is_file() else {}
        if metrics:
            sources.append(Source(label, str(workdir), None, _read_config(workdir), metrics,
                                  {}))
        elif has_sweep:
            sources.extend(_members(workdir, None, label))
        else:
            raise ConfigError(f"{text}: no metrics: {workdir} has no {METRICS_FILE} rows and no "
                              f"{SWEEP_FILE}")
    if not sources:
        raise ConfigError("nothing to compare: name at least one workdir")
    labels = [s.label for s in sources]
    if len(set(labels)) < len(labels):  # the same run twice: number them
        sources = [s._replace(label=f"{s.label} [{i}]") for i, s in enumerate(sources)]
    return sources


def common_metrics(sources: Sequence[Source]) -> list[str]:
    """The metrics every source has, in the first source's order."""
    names = [n for n in sources[0].metrics if all(n in s.metrics for s in sources[1:])]
    if not names:
        shown = "; ".join(f"{s.label}: {', '.join(s.metrics) or 'none'}" for s in sources)
        raise ConfigError(f"the runs have no metric in common ({shown})")
    return names


def config_differences(sources: Sequence[Source]) -> list[str]:
    """The config keys whose values differ between the sources (absent counts as a value)."""
    keys = list(dict.fromkeys(k for s in sources for k in s.config))
    return [k for k in keys
            if len({json.dumps(s.config.get(k, "(absent)"), sort_keys=True)
                    for s in sources}) > 1]


def _stats(steps: list[int], values: list[float], name: str) -> dict[str, Any]:
    finite = [(v, s) for s, v in zip(steps, values, strict=True) if math.isfinite(v)]
    if finite:
        pick = min if lower_is_better(name) else max
        best, best_step = pick(finite, key=lambda p: p[0])
    else:
        best, best_step = math.nan, None
    return {"final": values[-1], "final_step": steps[-1], "best": best,
            "best_step": best_step, "points": len(values)}


def compare_table(sources: Sequence[Source]) -> dict[str, Any]:
    """What ``compare.json`` holds (see the module docstring)."""
    metrics = common_metrics(sources)
    keys = config_differences(sources)
    runs = []
    for s in sources:
        entry = {"label": s.label, "workdir": s.workdir, "member": s.member,
                 "config": {k: s.config.get(k) for k in keys},
                 "metrics": {n: _stats(*s.metrics[n], n) for n in metrics}}
        if s.results:
            entry["results"] = s.results
        runs.append(entry)
    return {"metrics": metrics, "config_keys": keys, "runs": runs}


def _log_scale(name: str, sources: Sequence[Source]) -> bool:
    if "loss" not in name.lower():
        return False
    values = [v for s in sources for v in s.metrics[name][1] if math.isfinite(v)]
    return bool(values) and min(values) > 0


def compare_figure(sources: Sequence[Source], metrics: Sequence[str] | None = None):
    """A ``matplotlib.figure.Figure``: one panel (Axes) per metric, one line per source.

    Example:
      >>> s = [Source("a", "a", None, {}, {"loss": ([0, 1], [1.0, 0.5])}, {})]
      >>> [len(ax.get_lines()) for ax in compare_figure(s).axes]
      [1]
    """
    from matplotlib.figure import Figure

    metrics = list(common_metrics(sources) if metrics is None else metrics)
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    ncol = max(1, min(cols, len(sources)))
    legend_rows = math.ceil(len(sources) / ncol)
    fig = Figure(figsize=(4.8 * cols, 3.2 * rows + 0.25 * legend_rows + 0.2))
    for i, name in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        for s in sources:
            steps, values = s.metrics[name]
            ax.plot(steps, values, marker="o" if len(steps) == 1 else None, label=s.label)
        if _log_scale(name, sources):
            ax.set_yscale("log")
        ax.set(title=name, xlabel="step")
        ax.grid(alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, (0.25 * legend_rows + 0.2) / fig.get_figheight(), 1, 1))
    return fig


def _cell(value: Any) -> str:
    return format_value(value).replace("|", "\\|").replace("\n", " ")


def _markdown(table: Mapping[str, Any]) -> str:
    runs = table["runs"]
    parts = ["# Compared runs", ""]
    keys = table["config_keys"]
    if keys:
        parts += ["## Config differences", "",
                  "| run | " + " | ".join(_cell(k) for k in keys) + " |",
                  "|---|" + "---|" * len(keys)]
        parts += [f"| {_cell(r['label'])} | " + " | ".join(_cell(r["config"][k]) for k in keys)
                  + " |" for r in runs]
    else:
        parts.append("The runs' configs are the same.")
    for name in table["metrics"]:
        which = "lowest" if lower_is_better(name) else "highest"
        parts += ["", f"## {name}", "", f"best = the {which} finite value", "",
                  "| run | final | step | best | best step |", "|---|---|---|---|---|"]
        for r in runs:
            m = r["metrics"][name]
            parts.append(f"| {_cell(r['label'])} | {_cell(m['final'])} | {m['final_step']} | "
                         f"{_cell(m['best'])} | {m['best_step']} |")
    results = [r for r in runs if r.get("results")]
    if results:
        parts += ["", "## Sweep members' results", ""]
        parts += [f"- {r['label']}: " + ", ".join(f"{k} = {format_value(v)}"
                                                 for k, v in r["results"].items())
                  for r in results]
    parts += ["", "![compare](compare.png)", ""]
    return "\n".join(parts)


def compare_runs(texts: Sequence[str], out: str | os.PathLike) -> dict[str, Any]:
    """Compare the runs ``texts`` name and write ``out/compare.{png,md,json}``.

    Returns:
      ``compare.json``'s content plus ``table`` (the Markdown text) and ``files`` (the
      paths written: ``plot``, ``markdown``, ``json``).

    Raises:
      ConfigError: see :func:`load_sources`; also no metric common to all runs, or an
        ``out`` that is a file.
    """
    sources = load_sources(texts)
    table = compare_table(sources)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is not a directory")
    fig = compare_figure(sources, table["metrics"])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", backend="agg")
    files = {"plot": atomic_write_bytes(out / "compare.png", buffer.getvalue()),
             "json": atomic_write_json(out / "compare.json", table)}
    text = _markdown(table)
    files["markdown"] = atomic_write_text(out / "compare.md", text)
    return {**table, "table": text, "files": {k: str(v) for k, v in files.items()}}
