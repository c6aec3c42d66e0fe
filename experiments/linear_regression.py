r"""Linear regression by gradient descent: a learning-rate x seed sweep as one compiled program.

Problem. For each seed :math:`s` we draw a regression problem and an initial point:
:math:`X \in \mathbb{R}^{n \times d}` with independent columns
:math:`X_{:j} \sim \mathcal{N}(0, c_j^2)`, scales :math:`c_j` evenly spaced in
[``min_scale``, 1] (an anisotropic design, so the Hessian's eigenvalues spread out),
:math:`y = X w + \sigma \varepsilon` with :math:`w, \varepsilon \sim \mathcal{N}(0, I)`,
and :math:`\theta_0 \sim \mathcal{N}(0, I)`. The loss is the mean squared error
(:func:`jaxmath.mse`)

.. math:: L(\theta) = \frac1n \lVert X\theta - y \rVert^2, \qquad
          \nabla L = \frac2n X^T (X\theta - y), \qquad H = \frac2n X^T X.

Method. Gradient descent :math:`\theta_{t+1} = \theta_t - \eta \nabla L(\theta_t)` with
the gradient from ``jax.grad`` (:func:`jaxmath.optim.gradient_descent`, one
``lax.scan`` of ``num_steps`` steps) runs for every configuration of the sweep
declared in ``config.sweep``: a grid of log-spaced learning rates x seeds. The
configuration (learning rate and seed) is a traced value, so the whole sweep, data
generation included, is ONE jit-compiled ``jax.vmap`` program
(:func:`jaxmath.run.sweep.run_sweep`); its table is written to ``sweep.jsonl``
(:func:`jaxmath.run.sweep.write_table`).

Theory. On a quadratic, the error along the Hessian's eigenvector :math:`v_i` is
multiplied by :math:`1 - \eta \lambda_i` at every step, so gradient descent converges
for :math:`\eta < \eta_c = 2 / \lambda_{\max}(H)` and diverges for
:math:`\eta > \eta_c` (from a generic start). :math:`H` is computed with
``jax.hessian`` and its top eigenvalue with :func:`jaxmath.eigh`; both are checked
against the closed form :math:`2 X^T X / n` in float64 NumPy.

Outcome of a run. *Diverged*: the final loss is non-finite or larger than the
initial loss (non-finite losses are expected here and counted, not errors).
*Converged*: :math:`\lVert \nabla L(\theta_T) \rVert \le` ``grad_rtol``
:math:`\lVert \nabla L(\theta_0) \rVert`. *Slow*: neither (too small a rate for
``num_steps``).

Target. (i) Every run with :math:`\eta < (1 - m)\,\eta_c` converged and every run with
:math:`\eta > (1 + m)\,\eta_c` diverged (margin :math:`m` = ``config.margin``, per seed);
(ii) every converged run equals the closed-form least-squares solution
(``np.linalg.lstsq``, float64): :math:`\lVert \theta_T - \theta^* \rVert /
\lVert \theta^* \rVert \le` ``config.param_rtol``.

Plots. ``loss_curves.png``: excess loss :math:`L(\theta_t) - L(\theta^*)` against the
step for a subsample of learning rates (seed ``config.seed``); ``final_loss_vs_lr.png``:
final loss and distance to :math:`\theta^*` against :math:`\eta` for every seed, with
the boundary :math:`\eta_c = 2/\lambda_{\max}` of each seed drawn.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from matplotlib.figure import Figure

from jaxmath.linalg import eigh, linear
from jaxmath.losses import mse
from jaxmath.optim import gradient_descent
from jaxmath.run.files import MetricsLog
from jaxmath.run.report import save_figure
from jaxmath.run.sweep import from_config, run_sweep, write_table

_PLOT_CEILING = 1e12  # non-finite or huge losses are drawn here
_PLOT_FLOOR = 1e-9    # excess losses below the float32 rounding of a loss near 1e-2


def loss(theta: jax.Array, X: jax.Array, y: jax.Array) -> jax.Array:
    r"""Mean squared error :math:`\frac1n \lVert X\theta - y \rVert^2` (products in float32)."""
    return mse(y, linear(X, theta))


@partial(jax.jit, static_argnames=("num_samples", "num_features", "min_scale", "noise"))
def make_problem(seed: jax.Array, *, num_samples: int, num_features: int, min_scale: float,
                 noise: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(X [n, d], y [n], theta0 [d])`` for one seed (a traced int: vmappable)."""
    k_x, k_w, k_eps, k_init = jax.random.split(jax.random.key(seed), 4)
    scales = jnp.linspace(min_scale, 1.0, num_features)
    X = jax.random.normal(k_x, (num_samples, num_features)) * scales
    w = jax.random.normal(k_w, (num_features,))
    y = linear(X, w) + noise * jax.random.normal(k_eps, (num_samples,))
    theta0 = jax.random.normal(k_init, (num_features,))
    return X, y, theta0


def make_train(data_config, num_steps: int):
    """``train(hp) -> results`` for one configuration ``hp = {"learning_rate", "seed"}``."""
    problem = dict(data_config)

    def train(hp):
        X, y, theta0 = make_problem(hp["seed"], **problem)
        theta, losses = gradient_descent(loss, theta0, hp["learning_rate"], num_steps, X, y)
        grad = jax.grad(loss)
        return {
            "theta": theta,
            "losses": losses,  # losses[t] = L(theta_t), t < num_steps
            "final_loss": loss(theta, X, y),
            "grad_norm": jnp.linalg.norm(grad(theta, X, y)),
            "init_grad_norm": jnp.linalg.norm(grad(theta0, X, y)),
        }

    return train


@partial(jax.jit, static_argnames=("num_samples", "num_features", "min_scale", "noise"))
def _problem_hessian(seed, **data_config):
    X, y, theta0 = make_problem(seed, **data_config)
    H = jax.hessian(loss)(theta0, X, y)
    return X, y, H, eigh(H)[0][-1]


def reference(seed: int, data_config) -> dict:
    """Closed-form least squares and the Hessian's top eigenvalue for one seed's problem."""
    X, y, H, lam_max = _problem_hessian(seed, **dict(data_config))
    lam_max = float(lam_max)
    X64, y64 = np.asarray(X, np.float64), np.asarray(y, np.float64)
    H64 = 2 * X64.T @ X64 / X64.shape[0]
    theta_star = np.linalg.lstsq(X64, y64, rcond=None)[0]
    return {
        "lambda_max": lam_max,
        "eta_c": 2 / lam_max,
        "hessian_rel_diff": float(np.max(np.abs(np.asarray(H, np.float64) - H64))
                                  / np.max(np.abs(H64))),
        "lambda_max_rel_diff": abs(lam_max / np.linalg.eigvalsh(H64)[-1] - 1),
        "theta_star": theta_star,
        "lstsq_loss": float(np.mean((X64 @ theta_star - y64) ** 2)),
    }


def classify(final_loss, init_loss, grad_norm, init_grad_norm, grad_rtol):
    """Boolean ``(diverged, converged)`` arrays for the runs (see the module docstring)."""
    final_loss = np.asarray(final_loss, np.float64)
    finite = np.isfinite(final_loss)
    diverged = ~finite | (np.where(finite, final_loss, 0) > init_loss)
    converged = ~diverged & np.isfinite(grad_norm) & (grad_norm <= grad_rtol * init_grad_norm)
    return diverged, converged


def _plot_curves(lr, losses, lstsq_loss, eta_c, num_curves) -> Figure:
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    order = np.argsort(lr)
    picks = order[np.unique(np.linspace(0, len(lr) - 1, num_curves).round().astype(int))]
    cmap = matplotlib.colormaps["viridis"]
    logs = np.log10(lr[picks])
    span = max(logs.max() - logs.min(), 1e-12)
    steps = np.arange(losses.shape[1])
    for i in picks:
        excess = np.asarray(losses[i], np.float64) - lstsq_loss
        excess = np.where(np.isfinite(excess), np.clip(excess, _PLOT_FLOOR, _PLOT_CEILING),
                          _PLOT_CEILING)
        colour = cmap((np.log10(lr[i]) - logs.min()) / span)
        style = "--" if lr[i] > eta_c else "-"
        ax.plot(steps, excess, style, color=colour,
                label=f"η = {lr[i]:.3g} ({lr[i] / eta_c:.2f} η_c)")
    ax.set_yscale("log")
    ax.set(xlabel="step t", ylabel="L(θ_t) − L(θ*)",
           title=f"gradient descent loss curves (η_c = 2/λ_max = {eta_c:.3f}; dashed: η > η_c)")
    ax.legend(fontsize=8, ncol=2)
    return fig


def _plot_final(lr, seed, final_loss, param_err, refs, margin) -> Figure:
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    rel = lr / np.array([refs[s]["eta_c"] for s in seed])
    for c, s in enumerate(sorted(refs)):
        m = seed == s
        order = np.argsort(lr[m])
        colour = f"C{c % 10}"
        for ax, x, values in ((ax1, lr[m][order], final_loss[m][order]),
                              (ax2, rel[m][order], param_err[m][order])):
            v = np.asarray(values, np.float64)
            bad = ~np.isfinite(v) | (v > _PLOT_CEILING)
            ax.plot(x[~bad], v[~bad], ".-", ms=3, lw=0.8, color=colour, label=f"seed {s}")
            ax.plot(x[bad], np.full(bad.sum(), _PLOT_CEILING), "x", ms=3, color=colour)
        ax1.axvline(refs[s]["eta_c"], color=colour, ls="--", lw=1)
        ax1.axhline(refs[s]["lstsq_loss"], color=colour, ls=":", lw=0.8)
    ax2.axvline(1.0, color="black", ls="--", lw=1)
    ax2.axvspan(1 - margin, 1 + margin, color="gray", alpha=0.3, lw=0)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(_PLOT_CEILING, color="gray", lw=0.5)
    ax1.text(0.02, 0.8, "x: diverged (inf/nan or > 1e12)\ndashed: η_c = 2/λ_max(H) per seed,"
             "\n   H = 2XᵀX/n\ndotted: least-squares loss", transform=ax1.transAxes,
             va="top", fontsize=8)
    ax2.text(0.02, 0.8, f"x: diverged\ndashed: η = 2/λ_max\ngray: margin ±{margin:.0%}",
             transform=ax2.transAxes, va="top", fontsize=8)
    ax1.set(xlabel="learning rate η", ylabel="final loss L(θ_T)",
            title="final loss against the learning rate")
    ax2.set(xlabel="η / η_c  (η_c = 2/λ_max)", ylabel="‖θ_T − θ*‖ / ‖θ*‖",
            title="distance to the least-squares solution θ*")
    ax1.legend(loc="lower right", fontsize=8)
    return fig


def run(config, workdir) -> dict:
    workdir = Path(workdir)
    hparams = from_config(config.sweep)
    lr = np.asarray(hparams["learning_rate"], np.float64)
    seed = np.asarray(hparams["seed"]).astype(int)
    train = make_train(config.data, config.num_steps)
    start = time.perf_counter()
    out = run_sweep(train, hparams, chunk_size=config.sweep.chunk_size)
    sweep_s = time.perf_counter() - start

    refs = {s: reference(s, config.data) for s in np.unique(seed).tolist()}
    eta_c = np.array([refs[s]["eta_c"] for s in seed])
    theta_star = np.stack([refs[s]["theta_star"] for s in seed])
    rel_eta = lr / eta_c
    final_loss = np.asarray(out["final_loss"], np.float64)
    init_loss = np.asarray(out["losses"][:, 0], np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        param_err = (np.linalg.norm(np.asarray(out["theta"], np.float64) - theta_star, axis=1)
                     / np.linalg.norm(theta_star, axis=1))
    diverged, converged = classify(final_loss, init_loss, out["grad_norm"],
                                   out["init_grad_norm"], config.grad_rtol)
    status = np.where(diverged, "diverged", np.where(converged, "converged", "slow"))
    write_table(workdir, hparams, {
        "final_loss": final_loss, "init_loss": init_loss, "grad_norm": out["grad_norm"],
        "param_rel_error": param_err, "eta_over_eta_c": rel_eta, "status": status})

    margin = float(config.margin)
    below, above = rel_eta < 1 - margin, rel_eta > 1 + margin
    below_ok = bool(np.all(converged[below]))
    above_ok = bool(np.all(diverged[above]))
    max_err = float(np.max(param_err[converged])) if converged.any() else float("inf")
    param_ok = bool(converged.any() and max_err <= config.param_rtol)

    first = int(config.seed) if int(config.seed) in refs else min(refs)
    m = seed == first
    save_figure(_plot_curves(lr[m], np.asarray(out["losses"])[m], refs[first]["lstsq_loss"],
                             refs[first]["eta_c"], config.num_curves), workdir, "loss_curves")
    save_figure(_plot_final(lr, seed, final_loss, param_err, refs, margin), workdir,
                "final_loss_vs_lr")

    summary = {
        "num_runs": len(lr),
        "num_learning_rates": len(np.unique(lr)),
        "num_seeds": len(refs),
        "num_steps": int(config.num_steps),
        "sweep_s": sweep_s,  # compilation included
        "learning_rate_min": float(lr.min()),
        "learning_rate_max": float(lr.max()),
        **{f"eta_c_seed{s}": r["eta_c"] for s, r in refs.items()},
        "hessian_max_rel_diff_vs_2XtX_over_n": max(r["hessian_rel_diff"] for r in refs.values()),
        "lambda_max_max_rel_diff_vs_numpy": max(r["lambda_max_rel_diff"] for r in refs.values()),
        "num_converged": int(converged.sum()),
        "num_diverged": int(diverged.sum()),
        "num_nonfinite_final_loss": int(np.sum(~np.isfinite(final_loss))),
        "num_slow": int(np.sum(~converged & ~diverged)),
        "num_within_margin": int(np.sum(~below & ~above)),
        "all_below_boundary_converged": below_ok,
        "all_above_boundary_diverged": above_ok,
        "max_converged_eta_over_eta_c": float(rel_eta[converged].max()) if converged.any()
        else float("nan"),
        "min_diverged_eta_over_eta_c": float(rel_eta[diverged].min()) if diverged.any()
        else float("nan"),
        "max_param_rel_error_converged": max_err,
        "param_rtol": float(config.param_rtol),
        "target": (f"eta < (1-{margin:g}) 2/lambda_max converged, eta > (1+{margin:g}) "
                   f"2/lambda_max diverged, converged runs within {config.param_rtol:g} "
                   "(relative) of lstsq"),
        "target_met": below_ok and above_ok and param_ok,
    }
    log = MetricsLog(workdir)
    log.path.unlink(missing_ok=True)  # one row per run: a rerun replaces it
    log.write(0, {k: v for k, v in summary.items() if isinstance(v, float)})
    return summary
