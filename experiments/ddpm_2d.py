r"""DDPM on 2-D toy data: three denoisers trained as one vmapped program, DDPM vs DDIM sampling.

Data. For each dataset :math:`k` of ``config.data.datasets`` (two moons, Swiss roll, eight
Gaussians: :mod:`jaxmath.run.datasets`, keyed samplers) we draw a training set of
``num_train`` points and standardise it per coordinate with its own mean and standard
deviation, :math:`\tilde x = (x - \mu_k) / \sigma_k`; held-out points are standardised with
the same :math:`(\mu_k, \sigma_k)`. Everything below is in these standardised units.

Model. A :class:`~jaxmath.diffusion.model.DiffusionModel`: a residual
:class:`~jaxmath.diffusion.denoisers.MLPDenoiser` predicting the noise :math:`\epsilon`,
with the sinusoidal time embedding, on a ``T``-step noise schedule (``config.model``).
Its loss is DDPM's simple objective (Ho et al., 2020, Algorithm 1)

.. math:: \mathcal{L}(\theta) = \mathbb{E}_{t, x_0, \epsilon}
   \big\| \epsilon - \epsilon_\theta(\sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\,
   \epsilon,\ t) \big\|^2 .

Training. The three models share one architecture, so their parameters and Adam states are
stacked on a leading dataset axis and one ``jax.vmap``-ed step updates all three: ONE
compiled program, run by :func:`jaxmath.run.loop.train_loop` (metrics.jsonl, orbax
checkpoints, resume after a kill; the minibatch of step :math:`s` is drawn on the device
with ``fold_in(key, s)``, so a resumed run is bit-identical); the steps between two log
steps run as one ``lax.scan`` (``steps_per_call``). Minibatches of ``batch_size`` are
drawn with replacement from each training set; Adam with linear warm-up and cosine decay
and global-norm gradient clipping (``config.optim``). Samples come from an exponential
moving average of the parameters, :math:`\bar\theta \leftarrow \beta \bar\theta +
(1 - \beta) \theta` (``ema_decay``), carried in the training state.

Sampling. ``num_eval`` samples per dataset from DDPM's ancestral sampler (all ``T`` steps,
:func:`~jaxmath.diffusion.samplers.ddpm_sample`) and from deterministic DDIM
(:math:`\eta = 0`, :func:`~jaxmath.diffusion.samplers.ddim_sample`) with ``T / ddim_factor``
steps, both from the same initial noise :math:`x_T`, both vmapped over the datasets. Each
sampler is compiled ahead of time (``jit(...).lower(...).compile()``), so the sampling
times reported exclude compilation.

Metric. The sliced 2-Wasserstein distance (:func:`jaxmath.metrics.sliced_wasserstein`,
``num_projections`` fixed random directions, the same for every comparison) between the
samples and a held-out set :math:`A` of ``num_eval`` fresh data points. Two independent
draws of the data are not at distance 0 at this sample size, so the yardstick is the
*reference level* :math:`r`: the mean of :math:`SW_2(B_j, A)` over ``num_reference``
further independent held-out draws :math:`B_j` of the same size, i.e. the score of a
perfect sampler. The squared finite-sample error adds roughly to the squared distance of
the distributions, :math:`SW^2(\text{samples}, A) \approx SW^2(p_\theta, p) + r^2`, so the
target :math:`SW_2 \le` ``target_factor`` :math:`\cdot\, r` (factor 2) on every dataset
bounds the model's own error by about :math:`\sqrt{3}\, r` -- the size of the sampling
noise of ``num_eval`` points. The squared MMD with an RBF kernel (median-heuristic
bandwidth on held-out data, :func:`jaxmath.metrics.mmd_squared`, unbiased) is logged
alongside, with its own reference level. During training, every ``eval_every`` steps, the
moving average's denoising loss on the held-out points (one fixed draw of timesteps and
noise, so that evaluations compare) is logged as ``heldout_loss`` (and per dataset), and
the state where it is lowest is kept in ``checkpoints_best/`` (``best_metric``).

Outputs. ``plots/samples.png`` (held-out data, DDPM and DDIM samples; one row per
dataset), ``plots/loss.png`` (training loss of each model), and the summary: per dataset
the SW and MMD of DDPM, DDIM and the reference, the ratios to the reference, the sampling
times, and ``target_met``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from jaxmath.diffusion.denoisers import MLPDenoiser
from jaxmath.diffusion.model import DiffusionModel
from jaxmath.metrics import median_bandwidth, mmd_squared, sliced_wasserstein
from jaxmath.run.datasets import TOY_2D
from jaxmath.run.mesh import on_every_device, shard_init
from jaxmath.run.report import save_figure

from ._train import (
    compile_timed,
    diffusion_training,
    plot_losses,
    run_loop,
    step_number,
    training_mesh,
)

# --------------------------------------------------------------------------- data


def make_data(names: Sequence[str], data_cfg: Mapping[str, Any], key: jax.Array,
              num_train: int, num_eval: int, num_reference: int) -> dict[str, np.ndarray]:
    r"""Standardised train, held-out and reference sets, stacked on a leading dataset axis.

    Dataset ``i`` is one draw from ``fold_in(key, i)``, split into a training set, which
    fixes the standardisation :math:`(\mu, \sigma)`, a held-out set of ``num_eval`` points
    and ``num_reference`` more held-out sets of that size.
    """
    out: dict[str, list[np.ndarray]] = {"train": [], "heldout": [], "reference": [],
                                        "mean": [], "std": []}
    sizes = (num_train, num_eval, num_eval * num_reference)
    for i, name in enumerate(names):
        # One draw, split: one compiled sampler per dataset (the samplers shuffle their output).
        draw = jax.jit(functools.partial(TOY_2D[name], n=sum(sizes), **data_cfg.get(name, {})))
        x = np.asarray(draw(jax.random.fold_in(key, i))[0], np.float64)
        train, held, ref = np.split(x, np.cumsum(sizes)[:-1])
        mean, std = train.mean(0), train.std(0)
        for k, x in (("train", train), ("heldout", held),
                     ("reference", ref.reshape(num_reference, num_eval, 2))):
            out[k].append(((x - mean) / std).astype(np.float32))
        out["mean"].append(mean)
        out["std"].append(std)
    return {k: np.stack(v) for k, v in out.items()}


# --------------------------------------------------------------------------- plots


def _plot_samples(names, heldout, ddpm, ddim, scores, ddim_steps, T) -> Figure:
    fig = Figure(figsize=(10, 3.3 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), 3, squeeze=False)
    titles = ("held-out data", f"DDPM, {T} steps", f"DDIM, {ddim_steps} steps")
    for row, name in enumerate(names):
        lim = np.abs(heldout[row]).max() * 1.15
        for col, (x, title) in enumerate(zip((heldout[row], ddpm[row], ddim[row]), titles,
                                             strict=True)):
            ax = axes[row, col]
            ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, color=("k", "C0", "C1")[col],
                       rasterized=True)
            label = {0: f"SW ref {scores[name]['sw_reference']:.3f}",
                     1: f"SW {scores[name]['sw_ddpm']:.3f}",
                     2: f"SW {scores[name]['sw_ddim']:.3f}"}[col]
            ax.set_title(f"{name}: {title}\n{label}", fontsize=9)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=7)
    return fig


# --------------------------------------------------------------------------- run



def run(config, workdir) -> dict:
    workdir = Path(workdir)
    names = tuple(config.data.datasets)
    D, ev = len(names), config.eval
    key = jax.random.key(config.seed)
    k_data, k_init, k_train, k_sample, k_proj = jax.random.split(key, 5)
    data = make_data(names, config.data, k_data, config.data.num_train, ev.num_eval,
                     ev.num_reference)

    # Model and optimiser: one architecture, D parameter sets stacked on axis 0.
    m = config.model
    model = DiffusionModel(MLPDenoiser(features=m.features, num_blocks=m.num_blocks),
                           m.schedule, num_timesteps=m.num_timesteps,
                           prediction_type=m.prediction_type)
    mesh = training_mesh(config)
    init_state, step = diffusion_training(model, config, mesh)
    x_init = jnp.zeros((2, 2))  # shapes only

    def init(keys):
        params = jax.vmap(lambda k: model.init(k, x_init, jnp.zeros(len(x_init), jnp.int32)))(keys)
        return jax.vmap(init_state)(params)

    state = shard_init(init, jax.random.split(k_init, D), mesh=mesh,
                       min_size=config.mesh.min_shard_size)

    # One vmapped step trains all D models; the loop passes the step number as the batch.
    train = on_every_device(jnp.asarray(data["train"]), mesh)
    train_keys = jax.random.split(k_train, D)

    def step_fn(state, s):
        state, losses = jax.vmap(step, in_axes=(0, None, 0, 0))(state, s, train, train_keys)
        metrics = {f"loss_{name}": losses[i] for i, name in enumerate(names)}
        return state, {"loss": jnp.mean(losses), **metrics}

    # Evaluation during training: the EMA's denoising loss on the held-out points, with one
    # fixed draw of timesteps and noise (the same at every evaluation, so comparable).
    heldout = on_every_device(jnp.asarray(data["heldout"]), mesh)
    k_eval = jax.random.fold_in(k_proj, 1)

    @jax.jit
    def heldout_losses(ema):
        return jax.vmap(lambda p, x: model.apply(p, x, k_eval, method="loss"))(ema, heldout)

    def evaluate(state, step):
        losses = heldout_losses(state["ema"])
        return {"heldout_loss": jnp.mean(losses),
                **{f"heldout_loss_{name}": losses[i] for i, name in enumerate(names)}}

    result, timing = run_loop(config, workdir, state, step_fn, step_number, desc="ddpm_2d",
                              metrics_fn=evaluate, mesh=mesh)
    params = result.state["ema"]

    # Sampling: DDPM (T steps) and DDIM (T / ddim_factor steps) from the same x_T.
    T = m.num_timesteps
    ddim_steps = max(T // ev.ddim_factor, 1)
    shape = (ev.num_eval, 2)
    keys = jax.random.split(k_sample, D)

    def ddpm(p, k):
        return jax.vmap(lambda p, k: model.apply(p, k, shape, method="sample"))(p, k)

    def ddim(p, k):
        return jax.vmap(lambda p, k: model.apply(
            p, k, shape, method="sample", sampler="ddim", num_inference_steps=ddim_steps,
            timestep_spacing=ev.timestep_spacing))(p, k)

    ddpm_x, ddpm_compile_s, ddpm_s = compile_timed(ddpm, params, keys)
    ddim_x, ddim_compile_s, ddim_s = compile_timed(ddim, params, keys)

    # Metrics against held-out data, on fixed directions.
    directions = jax.random.normal(k_proj, (ev.num_projections, 2))
    sw = jax.jit(jax.vmap(lambda x, y: sliced_wasserstein(x, y, directions=directions)))
    mmd = jax.jit(jax.vmap(lambda x, y, s: mmd_squared(x, y, s, unbiased=True)))
    bandwidth = jax.vmap(median_bandwidth)(heldout[:, : ev.bandwidth_points])
    refs = [jnp.asarray(data["reference"][:, j]) for j in range(ev.num_reference)]
    scores_arr = {
        "sw_ddpm": sw(ddpm_x, heldout), "sw_ddim": sw(ddim_x, heldout),
        "sw_reference": np.mean([sw(r, heldout) for r in refs], axis=0),
        "mmd_ddpm": mmd(ddpm_x, heldout, bandwidth), "mmd_ddim": mmd(ddim_x, heldout, bandwidth),
        "mmd_reference": np.mean([mmd(r, heldout, bandwidth) for r in refs], axis=0)}
    scores = {name: {k: float(v[i]) for k, v in scores_arr.items()}
              for i, name in enumerate(names)}

    save_figure(_plot_samples(names, data["heldout"], np.asarray(ddpm_x), np.asarray(ddim_x),
                              scores, ddim_steps, T), workdir, "samples")
    save_figure(plot_losses({n: [r[f"loss_{n}"] for r in result.history] for n in names},
                            [r["step"] for r in result.history],
                            r"$\|\epsilon - \epsilon_\theta\|^2$ (minibatch)",
                            "DDPM training loss (moving average of 10 log rows)"),
                workdir, "loss")

    summary: dict[str, Any] = {}
    ratios_ddpm, ratios_ddim = [], []
    for name in names:
        s = scores[name]
        ratios_ddpm.append(s["sw_ddpm"] / s["sw_reference"])
        ratios_ddim.append(s["sw_ddim"] / s["sw_reference"])
        summary.update({f"{name}_{k}": v for k, v in s.items()})
        summary[f"{name}_sw_target"] = ev.target_factor * s["sw_reference"]
        summary[f"{name}_target_met"] = s["sw_ddpm"] <= ev.target_factor * s["sw_reference"]
    final = result.history[-1] if result.history else {}
    summary.update({
        "datasets": ",".join(names),
        "num_steps": config.num_steps,
        "final_loss": final.get("loss"),
        **timing,
        "num_timesteps": T,
        "ddim_steps": ddim_steps,
        "num_eval": ev.num_eval,
        "ddpm_sample_s": ddpm_s,
        "ddim_sample_s": ddim_s,
        "ddim_speedup": ddpm_s / ddim_s,
        "sampler_compile_s": ddpm_compile_s + ddim_compile_s,
        "sw_ratio_ddpm_max": max(ratios_ddpm),
        "sw_ratio_ddim_max": max(ratios_ddim),
        "target": f"SW_2(DDPM samples, held-out) <= {ev.target_factor:g} x reference "
                  f"on every dataset",
        "target_factor": ev.target_factor,
        "target_met": max(ratios_ddpm) <= ev.target_factor,
    })
    return summary
