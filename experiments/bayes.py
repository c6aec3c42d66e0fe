r"""Bayes' theorem for a diagnostic test, over prevalence x sensitivity x false-positive rate.

Method. For a disease D with prevalence :math:`P(D)` and a test with sensitivity
:math:`P(T^+ \mid D)` and false-positive rate :math:`P(T^+ \mid \neg D)`, the probability
of the disease after a positive test is

.. math:: P(D \mid T^+) = \frac{P(T^+ \mid D) P(D)}
          {P(T^+ \mid D) P(D) + P(T^+ \mid \neg D) (1 - P(D))}.

We evaluate it with :func:`jaxmath.bayes_theorem` on the Cartesian product of three
axes (prevalence and false-positive rate log-spaced, sensitivity linearly spaced), as
ONE jit-compiled call of three nested ``jax.vmap``s that returns the whole
``[prevalence, sensitivity, false-positive rate]`` array. The blog post's example
(prevalence 1 %, sensitivity 99 %, false-positive rate 2 %) is inserted into each
axis, so it is a node of the grid.

Checks. (i) The grid's value at the example against the exact closed form, computed
in rational arithmetic (:class:`fractions.Fraction`): with these numbers
:math:`P(D \mid T^+) = 0.0099 / (0.0099 + 0.0198) = 1/3`. (ii) The whole grid
against an independent float64 NumPy evaluation of the formula (maximum absolute
error). The target is that both errors are within ``config.tolerance``, which
float32 arithmetic must meet (a posterior lies in [0, 1]; float32 rounding is
about 6e-8 per operation).

Plots. ``posterior_heatmap.png``: :math:`P(D \mid T^+)` over prevalence x
false-positive rate at the example's sensitivity, and over prevalence x
sensitivity at the example's false-positive rate (log axes where log-spaced),
with contours at 0.1, 0.5 and 0.9 and the example point marked.
"""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from jaxmath.probability import bayes_theorem
from jaxmath.run.files import MetricsLog
from jaxmath.run.report import save_figure

AXES = ("prevalence", "sensitivity", "false_positive_rate")


def axis_values(spec, include: float) -> np.ndarray:
    """The sorted float64 values of a ``{"logspace"|"linspace": (lo, hi, n)}`` axis, plus
    ``include`` (a value already on the axis is not repeated)."""
    (kind, (lo, hi, num)), = dict(spec).items()
    if kind not in ("logspace", "linspace"):
        raise ValueError(f"an axis must be {{'logspace'|'linspace': (lo, hi, n)}}, got {spec!r}")
    values = getattr(np, kind)(float(lo), float(hi), int(num))
    return np.union1d(values, [float(include)])


@jax.jit
def posterior_grid(prevalence: jax.Array, sensitivity: jax.Array,
                   false_positive_rate: jax.Array) -> jax.Array:
    """``[P, S, F]`` posteriors P(D | T+) for every combination of the three axes."""
    f = jax.vmap(bayes_theorem, in_axes=(None, None, 0))   # over false-positive rates
    f = jax.vmap(f, in_axes=(None, 0, None))               # over sensitivities
    f = jax.vmap(f, in_axes=(0, None, None))               # over prevalences
    return f(prevalence, sensitivity, false_positive_rate)


def closed_form(prevalence: float, sensitivity: float, false_positive_rate: float) -> Fraction:
    """P(D | T+) in exact rational arithmetic from the decimal inputs."""
    p, s, f = (Fraction(str(v)) for v in (prevalence, sensitivity, false_positive_rate))
    return s * p / (s * p + f * (1 - p))


def numpy_grid(prevalence: np.ndarray, sensitivity: np.ndarray,
               false_positive_rate: np.ndarray) -> np.ndarray:
    """The same grid by broadcasting in float64 NumPy (the reference)."""
    p = np.asarray(prevalence, np.float64)[:, None, None]
    s = np.asarray(sensitivity, np.float64)[None, :, None]
    f = np.asarray(false_positive_rate, np.float64)[None, None, :]
    return s * p / (s * p + f * (1 - p))


def _panel(fig, ax, x, y, z, example_xy, xlabel, ylabel, title, logx, value):
    mesh = ax.pcolormesh(x, y, z, shading="nearest", cmap="viridis", norm=Normalize(0, 1))
    contours = ax.contour(x, y, z, levels=(0.1, 0.5, 0.9), colors="white", linewidths=0.8)
    ax.clabel(contours, fmt="%.1f", fontsize=8)
    ax.plot(*example_xy, marker="*", markersize=14, color="red", markeredgecolor="white")
    ax.annotate(f"seed example\nP(D|T+) = {value:.4f}", example_xy, xytext=(-10, -12),
                textcoords="offset points", ha="right", va="top", color="white", fontsize=9)
    ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return mesh


def run(config, workdir) -> dict:
    workdir = Path(workdir)
    ex = config.example
    example = {name: float(ex[name]) for name in AXES}
    axes = {name: axis_values(config.grid[name], example[name]) for name in AXES}
    idx = {name: int(np.searchsorted(axes[name], example[name])) for name in AXES}
    inputs = [jnp.asarray(axes[name], jnp.float32) for name in AXES]

    jax.block_until_ready(posterior_grid(*inputs))          # compile
    start = time.perf_counter()
    grid = np.asarray(jax.block_until_ready(posterior_grid(*inputs)))
    evaluate_s = time.perf_counter() - start

    reference = numpy_grid(*(axes[name] for name in AXES))
    max_error = float(np.max(np.abs(grid.astype(np.float64) - reference)))
    at_example = float(grid[idx["prevalence"], idx["sensitivity"], idx["false_positive_rate"]])
    exact = closed_form(*(example[name] for name in AXES))
    example_error = abs(at_example - float(exact))

    fig = Figure(figsize=(12, 5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ex_p, ex_s, ex_f = (example[name] for name in AXES)
    mesh = _panel(fig, ax1, axes["false_positive_rate"], axes["prevalence"],
                  grid[:, idx["sensitivity"], :], (ex_f, ex_p),
                  "false-positive rate P(T+|not D)", "prevalence P(D)",
                  f"P(D | T+) at sensitivity {ex_s:g}", True, at_example)
    _panel(fig, ax2, axes["sensitivity"], axes["prevalence"],
           grid[:, :, idx["false_positive_rate"]], (ex_s, ex_p),
           "sensitivity P(T+|D)", "prevalence P(D)",
           f"P(D | T+) at false-positive rate {ex_f:g}", False, at_example)
    fig.colorbar(mesh, ax=ax2, label="P(D | T+)")
    save_figure(fig, workdir, "posterior_heatmap")

    tol = float(config.tolerance)
    summary = {
        "posterior_at_example": at_example,
        "closed_form_at_example": float(exact),
        "closed_form_exact": str(exact),
        "example_abs_error": example_error,
        "grid_shape": "x".join(str(n) for n in grid.shape),
        "grid_points": int(grid.size),
        "max_abs_error_vs_numpy": max_error,
        "evaluate_s": evaluate_s,
        "target": f"example and grid max abs error <= {tol:g}",
        "target_met": bool(example_error <= tol and max_error <= tol),
    }
    log = MetricsLog(workdir)
    log.path.unlink(missing_ok=True)  # one row per run: a rerun replaces it
    log.write(0, {k: v for k, v in summary.items() if isinstance(v, float)})
    return summary
