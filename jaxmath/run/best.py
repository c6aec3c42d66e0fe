"""The best state of a run by one evaluation metric, kept beside the latest checkpoints.

:func:`jaxmath.run.loop.train_loop` with ``best_metric`` saves the state of every
evaluation that improves on the best so far (``best_mode`` ``"max"`` or ``"min"``; nan never
does) to ``workdir/checkpoints_best`` (:data:`BEST_DIR`, one step kept), the metric saved in
the same orbax commit (:meth:`jaxmath.run.checkpoint.Checkpointer.latest_metrics`), so a
resumed run compares with the best recorded there. Restore it with
``Checkpointer(workdir, subdir=BEST_DIR).restore_latest(template)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxmath._checks import check_choice
from jaxmath.run.checkpoint import Checkpointer

__all__ = ["BEST_DIR", "BEST_MODES", "BestState"]

BEST_MODES = ("max", "min")
BEST_DIR = "checkpoints_best"  # workdir/checkpoints_best: the best state by best_metric

PyTree = Any


class BestState:
    """The best evaluation by one metric, and its state in ``workdir/checkpoints_best``."""

    def __init__(self, metric: str | None = None, mode: str = "max"):
        self.metric, self.mode = metric, mode
        self.ckpt: Checkpointer | None = None
        self.step: int | None = None
        self.value: float | None = None
        self.directory: Path | None = None

    @classmethod
    def check(cls, metric: Any, mode: Any, metrics_fn: Any) -> BestState:
        if metric is None:
            return cls()
        if not isinstance(metric, str):
            raise TypeError(f"best_metric must be a str, got {type(metric).__name__}")
        check_choice(mode, "best_mode", BEST_MODES)
        if metrics_fn is None:
            raise ValueError(f"best_metric={metric!r} needs a metrics_fn that returns it")
        return cls(metric, mode)

    @contextlib.contextmanager
    def open(self, workdir: Path):
        if self.metric is None:
            yield self
            return
        with Checkpointer(workdir, max_to_keep=1, subdir=BEST_DIR) as ckpt:
            self.ckpt, self.directory = ckpt, ckpt.directory
            saved = ckpt.latest_metrics()
            if saved is not None and saved.get("metric") == self.metric:
                self.step, self.value = saved["step"], saved["value"]
            try:
                yield self
            finally:
                self.ckpt = None

    def consider(self, step: int, extra: Mapping[str, Any], state: PyTree) -> None:
        """Save ``state`` as the best if ``extra[metric]`` improves on the best so far."""
        if self.ckpt is None:
            return
        if self.metric not in extra:
            raise ValueError(f"best_metric={self.metric!r} is not among the metrics "
                             f"metrics_fn returned at step {step}: {sorted(extra)}")
        value = float(np.asarray(jax.device_get(extra[self.metric])))
        if not math.isfinite(value) and not (self.mode == "max" and value == math.inf):
            return
        if self.value is not None and not (
                value > self.value if self.mode == "max" else value < self.value):
            return
        self.ckpt.save(step, state, metrics={"metric": self.metric, "mode": self.mode,
                                             "step": step, "value": value})
        self.step, self.value = step, value

    def record(self) -> dict | None:
        if self.metric is None or self.step is None:
            return None
        return {"step": self.step, "metric": self.metric, "value": self.value,
                "directory": str(self.directory)}
