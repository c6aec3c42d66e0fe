"""The run machinery: a resumable training loop, checkpoints, metrics and report files.

    from jaxmath.train import train_loop
    result = train_loop(state, step_fn, batch_fn, num_steps=1000, workdir="runs/x")

A run writes into its workdir ``metrics.jsonl`` (:class:`MetricsLog`),
``checkpoints/`` (:class:`Checkpointer`, orbax) and, through the report helpers,
``summary.json``, ``plots/*.png`` and ``report.md``. Every file is written
atomically, so a run killed at any moment resumes from its last checkpoint and
ends bit-identical to an uninterrupted one (on CPU).
"""

from jaxmath.train.checkpoint import Checkpointer
from jaxmath.train.files import (
    MetricsLog,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from jaxmath.train.loop import NonFiniteLossError, TrainResult, TrainTiming, train_loop
from jaxmath.train.report import save_figure, write_report, write_summary

__all__ = [
    "Checkpointer",
    "MetricsLog",
    "NonFiniteLossError",
    "TrainResult",
    "TrainTiming",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "save_figure",
    "train_loop",
    "write_report",
    "write_summary",
]
