"""The progress of a training run: a tqdm bar on a terminal, plain lines otherwise.

A line is ``<desc> step <s>/<total> loss <loss> (<throughput>) elapsed <t> eta <t>``; the
throughput text comes from :class:`jaxmath.run.throughput.Meter`.
"""

from __future__ import annotations

import math
import sys
import time

from tqdm.auto import tqdm

__all__ = ["PROGRESS_MODES", "Progress", "format_seconds"]

PROGRESS_MODES = ("auto", "bar", "lines", "none")


def format_seconds(t: float) -> str:
    """Seconds as ``12.3s`` below a minute, ``01:02`` (tqdm's form) above; ``?`` if infinite.

    Example:
      >>> format_seconds(12.34), format_seconds(62.0), format_seconds(float("inf"))
      ('12.3s', '01:02', '?')
    """
    if not math.isfinite(t):
        return "?"
    return f"{t:.1f}s" if t < 60 else tqdm.format_interval(t)


class Progress:
    """A tqdm bar on a terminal; plain lines (step, loss, elapsed, ETA) otherwise."""

    def __init__(self, mode: str, desc: str, start: int, total: int):
        if mode == "auto":
            isatty = getattr(sys.stdout, "isatty", None)
            mode = "bar" if isatty is not None and isatty() else "lines"
        self.mode, self.desc, self.start, self.total = mode, desc, start, total
        self.t0 = time.perf_counter()
        self.first: tuple[float, int] | None = None
        self.bar = None
        if mode == "bar":
            self.bar = tqdm(total=total, initial=start, desc=desc, unit="step",
                            file=sys.stdout, dynamic_ncols=True)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        elif self.mode == "lines":
            print(text, file=sys.stdout, flush=True)

    def log(self, step: int, loss: float, perf: str = "",
            steps_per_s: float | None = None) -> None:
        """Show a log step: its loss and ``perf``, the throughput text (rates, MFU).

        The ETA is the remaining steps at the average rate since the first log step; at
        the first (whose interval holds the compilation) at ``steps_per_s``, the rate
        measured after the compilation, if given.
        """
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss={loss:.4g}" + (f", {perf}" if perf else ""),
                                     refresh=False)
            self.bar.update(step - self.bar.n)
        elif self.mode == "lines":
            now = time.perf_counter()
            if self.first is None:  # the first interval includes compilation: time from here
                self.first = (now, step)
                rate = steps_per_s or (step - self.start) / max(now - self.t0, 1e-9)
            else:
                t_ref, step_ref = self.first
                rate = (step - step_ref) / max(now - t_ref, 1e-9)
            eta = (self.total - step) / rate if rate > 0 else math.inf
            elapsed = now - self.t0
            print(f"{self.desc} step {step}/{self.total} loss {loss:.6g} "
                  + (f"({perf}) " if perf else "")
                  + f"elapsed {format_seconds(elapsed)} eta {format_seconds(eta)}", file=sys.stdout,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
