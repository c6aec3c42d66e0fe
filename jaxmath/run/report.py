"""What a run leaves to be read: plots, ``summary.json`` and a ``report.md`` that embeds them.

Layout of a workdir (the other files come from :mod:`jaxmath.run.files` and the checkpointer)::

    workdir/config.json      the resolved config, written before the run starts
                             (and its reproducibility record, key "_record")
    workdir/metrics.jsonl    one JSON object per logged step
    workdir/summary.json     final metrics and run facts (wall time, versions, devices)
    workdir/plots/<name>.png figures from save_figure
    workdir/report.md        title, command, summary table, every plot, links to the files

Every file is written atomically (temporary file, fsync, ``os.replace``), so a kill leaves the old
version or the new one. In a multi-process JAX job only process 0 writes; the other processes
skip the write and return the same path.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxmath.run.files import _is_writer, atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["format_value", "save_figure", "summary_table", "write_report", "write_summary"]

PLOTS_DIR = "plots"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_COMMAND = re.compile(r"^\s*(\$\s*)?(jaxmath|python3? -m jaxmath|make)\b")


def save_figure(fig, workdir: str | os.PathLike, name: str, *, dpi: int = 120) -> Path:
    """Write ``fig`` to ``workdir/plots/<name>.png`` atomically and close it.

    The figure is rendered by matplotlib's Agg backend whatever backend is active, so it works
    headless; ``jaxmath run`` also selects Agg (``MPLBACKEND=Agg``) unless one is set.

    Args:
      fig: a ``matplotlib.figure.Figure``.
      workdir: the run directory; ``plots/`` is created in it.
      name: the file name, without directories; ``.png`` is appended unless present.
      dpi: the resolution.

    Returns:
      The path of the PNG file.

    Example:
      >>> import tempfile
      >>> from matplotlib.figure import Figure
      >>> fig = Figure(figsize=(2, 2)); _ = fig.add_subplot().plot([0, 1], [1, 0])
      >>> save_figure(fig, tempfile.mkdtemp(), "loss").name
      'loss.png'
    """
    name = str(name)
    if name.endswith(".png"):
        name = name[: -len(".png")]
    if not _NAME.match(name):
        raise ValueError(
            f"name must be a file name of letters, digits, '_', '-' or '.', got {name!r}")
    path = Path(workdir) / PLOTS_DIR / f"{name}.png"
    try:
        if _is_writer():
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", backend="agg")
            atomic_write_bytes(path, buffer.getvalue())
    finally:
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close(fig)
    return path


def _jsonable(value: Any) -> Any:
    """NumPy/JAX scalars and 0-d arrays as Python numbers; mappings and sequences recursively."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "__array__") or hasattr(value, "item"):
        import numpy as np

        arr = np.asarray(value)
        if arr.ndim == 0 and arr.dtype.kind in "biuf":
            return arr.item()
        if arr.dtype.kind in "biuf":
            return arr.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def write_summary(workdir: str | os.PathLike, summary: Mapping[str, Any]) -> Path:
    """Write ``workdir/summary.json`` atomically; NumPy/JAX scalars become Python numbers.

    ``jaxmath run`` calls it with the experiment's summary plus the run facts (wall time,
    versions, devices). Anything JSON cannot hold (a dtype, an object) is written as its
    ``str``. Non-finite floats are written as ``NaN``/``Infinity``, which Python's ``json`` and
    pandas read back.

    Example:
      >>> import tempfile
      >>> p = write_summary(tempfile.mkdtemp(), {"accuracy": np.float32(0.5), "steps": 3})
      >>> json.loads(p.read_text())
      {'accuracy': 0.5, 'steps': 3}
    """
    if not isinstance(summary, Mapping):
        raise TypeError(f"summary must be a mapping, got {type(summary).__name__}")
    path = Path(workdir) / SUMMARY_FILE
    if _is_writer():
        atomic_write_json(path, _jsonable(summary))
    return path


def format_value(value: Any) -> str:
    """A summary value as short text: floats to 4 significant digits, bools as true/false.

    Example:
      >>> format_value(0.98123456), format_value(True), format_value(12345678.0)
      ('0.9812', 'true', '1.235e+07')
    """
    value = _jsonable(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, list):
        return json.dumps(value if len(value) <= 8 else [*value[:8], "..."])
    return str(value)


def summary_table(summary: Mapping[str, Any], *, markdown: bool = False) -> str:
    """The summary as an aligned two-column text table, or as a Markdown table.

    Example:
      >>> print(summary_table({"accuracy": 0.975, "target_met": True}))
      accuracy    0.975
      target_met  true
    """
    rows = [(str(k), format_value(v)) for k, v in summary.items()]
    if markdown:
        def cell(text):
            return text.replace("|", "\\|").replace("\n", " ")
        lines = ["| key | value |", "|---|---|"]
        lines += [f"| {cell(k)} | {cell(v)} |" for k, v in rows]
        return "\n".join(lines)
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


_MAX_RECORDS = 100  # entries of a list of records shown in report.md


def _is_records(value: Any) -> bool:
    """A non-empty list of mappings (e.g. a sweep's diverged members): a list in the report."""
    return (isinstance(value, list | tuple) and len(value) > 0
            and all(isinstance(v, Mapping) for v in value))


def _records(records: Sequence[Mapping[str, Any]]) -> str:
    """One Markdown bullet per record: ``- key = value, key = value``."""
    lines = ["- " + ", ".join(f"{k} = {format_value(v)}" for k, v in r.items())
             for r in records[:_MAX_RECORDS]]
    if len(records) > _MAX_RECORDS:
        lines.append(f"- ... and {len(records) - _MAX_RECORDS} more (see summary.json)")
    return "\n".join(lines)


def _profile_section(workdir: Path) -> str:
    """How to open the ``jax.profiler`` traces in ``workdir/profile``, if there are any."""
    traces = sorted((workdir / "profile").glob("plugins/profile/*/*.xplane.pb"))
    if not traces:
        return ""
    perfetto = sorted((workdir / "profile").glob("plugins/profile/*/perfetto_trace.json.gz"))
    lines = ["## Profile", "",
             f"A `jax.profiler` trace of the updates `profile_steps` names, in "
             f"[profile/](profile/) ({len(traces)} host trace(s)). Open it with TensorBoard's "
             f"profile plugin (`pip install tensorboard tensorboard-plugin-profile`):", "",
             f"```sh\ntensorboard --logdir {workdir / 'profile'}\n```"]
    if perfetto:
        rel = perfetto[-1].relative_to(workdir)
        lines += ["", f"or load [{rel}]({rel}) in https://ui.perfetto.dev (no install)."]
    return "\n".join(lines)


def _split_doc(doc: str) -> tuple[str, list[str], str]:
    """(first line, command lines, the rest) of a config docstring."""
    lines = doc.strip().splitlines()
    if not lines:
        return "", [], ""
    first, commands, rest = lines[0].strip(), [], []
    for line in lines[1:]:
        if _COMMAND.match(line):
            commands.append(line.strip().removeprefix("$").strip())
        else:
            rest.append(line.strip())
    return first, commands, "\n".join(rest).strip()


def write_report(workdir: str | os.PathLike, summary: Mapping[str, Any], title: str, *,
                 doc: str = "", command: str | None = None,
                 record: Mapping[str, Any] | None = None) -> Path:
    """Write ``workdir/report.md``: the run at a glance (``jaxmath run`` ends with it).

    It holds the title, the config docstring's first line, its commands (lines that start with
    ``jaxmath``, ``python -m jaxmath`` or ``make``) in a shell block and the rest of it (the
    expected result), the command that made this run, the summary as a table (a value that
    is a list of mappings, such as a sweep's diverged members, as a list of its own), every
    ``plots/*.png`` embedded with a relative link (sorted by name), and links to
    ``metrics.jsonl`` (with its row count), ``summary.json`` and ``config.json`` where present.

    Args:
      workdir: the run directory.
      summary: flat mapping of final metrics and run facts.
      title: the report's heading.
      doc: the config file's docstring.
      command: the command line that produced this run.
      record: the run's reproducibility record (:mod:`jaxmath.run.record`): a
        "Reproducibility" section (commit, versions, devices, seeds, command, rerun command).

    Returns:
      The path of ``report.md``.

    Example:
      >>> import tempfile
      >>> d = tempfile.mkdtemp()
      >>> doc = "Echo.\\n\\n    jaxmath run c.py"
      >>> text = write_report(d, {"loss": 0.1}, "echo", doc=doc).read_text()
      >>> print(text.split("## Summary")[0].strip())
      # echo
      <BLANKLINE>
      Echo.
      <BLANKLINE>
      ```sh
      jaxmath run c.py
      ```
    """
    if not isinstance(summary, Mapping):
        raise TypeError(f"summary must be a mapping, got {type(summary).__name__}")
    workdir = Path(workdir)
    first, commands, rest = _split_doc(doc or "")
    parts = [f"# {title}"]
    if first:
        parts.append(first)
    if commands:
        parts.append("```sh\n" + "\n".join(commands) + "\n```")
    if rest:
        parts.append(rest)
    if command:
        parts.append(f"This run:\n\n```sh\n{command}\n```")
    lists = {k: v for k, v in summary.items() if _is_records(v)}
    parts.append("## Summary\n\n" + summary_table(
        {k: v for k, v in summary.items() if k not in lists}, markdown=True))
    parts.extend(f"## {key}\n\n{_records(value)}" for key, value in lists.items())
    plots = sorted((workdir / PLOTS_DIR).glob("*.png"))
    if plots:
        parts.append("## Plots\n\n" + "\n\n".join(
            f"### {p.stem}\n\n![{p.stem}]({PLOTS_DIR}/{p.name})" for p in plots))
    if record:
        from jaxmath.run.record import record_section

        parts.append(record_section(record))
    profile = _profile_section(workdir)
    if profile:
        parts.append(profile)
    files = []
    metrics = workdir / "metrics.jsonl"
    if metrics.exists():
        with open(metrics, encoding="utf-8") as f:
            rows = sum(1 for line in f if line.strip())
        files.append(f"- [metrics.jsonl](metrics.jsonl): {rows} logged rows, one JSON object each")
    else:
        files.append("- metrics.jsonl: none written by this run")
    for name, what in (("summary.json", "the table above"),
                       ("config.json", "resolved config and reproducibility record")):
        if name == "summary.json" or (workdir / name).exists():
            files.append(f"- [{name}]({name}): {what}")
    parts.append("## Files\n\n" + "\n".join(files))
    path = workdir / REPORT_FILE
    if _is_writer():
        atomic_write_text(path, "\n\n".join(parts) + "\n")
    return path
