r"""DDPM with a small UNet on the 8x8 digits: a grid of samples, MMD against held-out digits.

Data. scikit-learn's bundled digits (:func:`experiments._data.load_sklearn`, a stratified
75/25 split), pixel values :math:`0..16` scaled to :math:`[-1, 1]` by :math:`x / 8 - 1`,
as NHWC images ``[N, 8, 8, 1]``; the model sees the training split only.

Model. A :class:`~jaxmath.diffusion.model.DiffusionModel` whose denoiser is the
:class:`~jaxmath.diffusion.denoisers.UNet` (residual blocks with GroupNorm and the
sinusoidal time embedding, a stride-2 downsampling to 4x4, self-attention in the middle,
skip connections; ``config.model``) on a ``T``-step noise schedule. By default the schedule
is the cosine one (Nichol & Dhariwal, 2021), which spends more of its steps at low noise
than the linear one -- an 8x8 image loses its content to noise early -- and the network
predicts :math:`v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1 - \bar\alpha_t}\, x_0` (Salimans
& Ho, 2022), a target that stays well posed where :math:`\bar\alpha_t \to 0`. The loss is
DDPM's simple objective on that target (Ho et al., 2020, Algorithm 1),
:math:`\mathbb{E}_{t, x_0, \epsilon}\, \|v - v_\theta(x_t, t)\|^2`, minimised by Adam
with warm-up, cosine decay and gradient clipping through
:func:`jaxmath.run.loop.train_loop` (checkpoints, resume; minibatch ``s`` drawn on the
device from ``fold_in(key, s)``, the steps between two log steps as one ``lax.scan``);
samples come from an exponential moving average of the parameters.

Sampling. ``num_samples`` images with ``config.sample.sampler`` (DDPM's ancestral sampler
over all ``T`` steps, or DDIM in ``num_inference_steps``), with :math:`\hat x_0` clipped to
:math:`[-1, 1]` at every step (the data range), compiled ahead of time so that the time
reported excludes compilation.

Quality check (classifier-free, in pixel space). The maximum mean discrepancy with a
Gaussian RBF kernel (:func:`jaxmath.metrics.mmd_squared`, biased estimate, reported as
:math:`\mathrm{MMD} = \sqrt{\widehat{\mathrm{MMD}}{}^2_b}`; bandwidth: the median pairwise
distance of the held-out digits, :func:`jaxmath.metrics.median_bandwidth`) between the
samples and the held-out digits. At finite sample sizes even a perfect sampler scores
> 0, so two yardsticks are computed at the same sizes:

* the *reference*: the MMD between ``num_samples`` training digits (random subsets,
  averaged over ``num_reference`` draws) and the held-out digits -- a sampler that
  reproduces the training distribution exactly;
* the *pixel-Gaussian baseline*: samples from a Gaussian with the training digits' mean
  image and per-pixel standard deviation (clipped to :math:`[-1, 1]`), which matches
  every pixel's mean and spread but no structure.

Target: :math:`\mathrm{MMD}(\text{samples}, \text{held-out}) \le` ``target_factor``
:math:`\times` reference (factor 2). The biased estimate's square is roughly the squared
population MMD plus a finite-sample term that the reference measures,
:math:`\widehat{\mathrm{MMD}}{}^2 \approx \mathrm{MMD}^2(p_\theta, p) + r^2`, so a factor of
2 bounds the model's own discrepancy by about :math:`\sqrt{3}\, r`, the size of the
finite-sample noise; the pixel-Gaussian baseline, at about 2.7 times the reference, fails
it. Also logged: the per-pixel mean and standard deviation of the
samples against the held-out digits' (mean absolute differences), and, as a sanity check
that the samples look like digits, the mean top-class probability that a logistic
regression trained on the training digits gives to the samples, to the held-out digits
and to the baseline, and how many of the 10 classes the samples cover. MMD does not
penalise memorisation (copies of training digits score like the reference), so the mean
distance from each sample to its nearest training digit is logged beside the same
distance for the held-out digits: copies would sit at 0.

Outputs. ``plots/samples.png`` (a grid of samples beside held-out digits and the
baseline), ``plots/loss.png``, and the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from jaxmath.diffusion.denoisers import UNet
from jaxmath.diffusion.model import DiffusionModel
from jaxmath.metrics import median_bandwidth, mmd_squared
from jaxmath.run.mesh import on_every_device, shard_init
from jaxmath.run.report import save_figure

from ._data import load_sklearn
from ._train import (
    compile_timed,
    diffusion_training,
    plot_losses,
    run_loop,
    step_number,
    training_mesh,
)


def load_digits(test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train [N, 8, 8, 1], test [M, 8, 8, 1], train_labels)`` scaled to ``[-1, 1]``."""
    split = load_sklearn("digits", test_fraction=test_fraction, seed=seed, standardize=False)

    def images(x):
        return (x / 8.0 - 1.0).reshape(-1, 8, 8, 1).astype(np.float32)

    return images(split.x_train), images(split.x_test), split.y_train


def mmd(x: jax.Array, y: jax.Array, bandwidth: jax.Array) -> float:
    """:math:`\\sqrt{\\widehat{\\mathrm{MMD}}{}^2_b}` between image sets, flattened to pixels."""
    flat = [jnp.reshape(a, (a.shape[0], -1)) for a in (x, y)]
    return float(jnp.sqrt(mmd_squared(*flat, bandwidth)))


def _grid(images: np.ndarray, rows: int) -> np.ndarray:
    """``[rows * cols, 8, 8, 1]`` images tiled into one ``[rows * 9, cols * 9]`` array."""
    cols = len(images) // rows
    canvas = np.full((rows * 9 - 1, cols * 9 - 1), np.nan)
    for i, img in enumerate(images[: rows * cols]):
        r, c = divmod(i, cols)
        canvas[r * 9: r * 9 + 8, c * 9: c * 9 + 8] = img[..., 0]
    return canvas


def _plot_samples(samples, test, baseline, rows, titles) -> Figure:
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, imgs, title in zip(axes, (samples, test, baseline), titles, strict=True):
        ax.imshow(_grid(np.asarray(imgs), rows), cmap="gray_r", vmin=-1, vmax=1,
                  interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    return fig


def nearest_distance(x: np.ndarray, train: np.ndarray) -> float:
    """Mean Euclidean distance (pixels in [-1, 1]) from each ``x`` to its nearest ``train``."""
    a, b = (np.asarray(v, np.float64).reshape(len(v), -1) for v in (x, train))
    d2 = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
    return float(np.sqrt(np.maximum(d2.min(1), 0)).mean())


def _classifier_checks(train, train_labels, sets: dict[str, np.ndarray]) -> dict[str, Any]:
    """Mean top-class probability of a logistic regression on each set; classes covered."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000).fit(train.reshape(len(train), -1), train_labels)
    out: dict[str, Any] = {}
    for name, x in sets.items():
        proba = clf.predict_proba(np.asarray(x).reshape(len(x), -1))
        out[f"classifier_confidence_{name}"] = float(proba.max(1).mean())
        if name == "samples":
            counts = np.bincount(proba.argmax(1), minlength=10)
            out["classes_covered"] = int((counts > 0).sum())
            out["min_class_fraction"] = float(counts.min() / counts.sum())
    return out


def run(config, workdir) -> dict:
    workdir = Path(workdir)
    key = jax.random.key(config.seed)
    k_init, k_train, k_sample, k_ref, k_base = jax.random.split(key, 5)
    train, test, train_labels = load_digits(config.data.test_fraction, config.seed)

    m = config.model
    unet = UNet(channels=m.channels, channel_mults=tuple(m.channel_mults),
                num_res_blocks=m.num_res_blocks,
                attention_resolutions=tuple(m.attention_resolutions),
                mid_attention=m.mid_attention, num_heads=m.num_heads, num_groups=m.num_groups)
    model = DiffusionModel(unet, m.schedule, num_timesteps=m.num_timesteps,
                           prediction_type=m.prediction_type)
    mesh = training_mesh(config)
    init_state, step = diffusion_training(model, config, mesh)
    x_init = jnp.zeros((2, 8, 8, 1))
    state = shard_init(lambda k: init_state(model.init(k, x_init, jnp.zeros(2, jnp.int32))),
                       k_init, mesh=mesh, min_size=config.mesh.min_shard_size)

    data = on_every_device(jnp.asarray(train), mesh)

    def step_fn(state, s):
        state, loss = step(state, s, data, k_train)
        return state, {"loss": loss}

    result, timing = run_loop(config, workdir, state, step_fn, step_number, desc="ddpm_digits",
                              mesh=mesh)

    # Sampling, compiled ahead of time.
    sc, n = config.sample, config.sample.num_samples
    options = dict(sampler=sc.sampler, clip_sample=True)
    if sc.sampler == "ddim":
        options.update(num_inference_steps=sc.num_inference_steps,
                       timestep_spacing=sc.timestep_spacing)

    def sample(p, k):
        return model.apply(p, k, (n, 8, 8, 1), method="sample", **options)

    samples, compile_s, sample_s = compile_timed(sample, result.state["ema"], k_sample)
    samples = np.asarray(samples)

    # Yardsticks at the same sizes: training digits (reference) and a pixel Gaussian.
    rng = np.random.default_rng(np.asarray(jax.random.key_data(k_ref)).ravel()[-1])
    refs = [train[rng.choice(len(train), n, replace=False)] for _ in range(config.num_reference)]
    mean, std = train.mean(0), train.std(0)
    baseline = np.clip(mean + std * np.asarray(jax.random.normal(k_base, (n, 8, 8, 1))), -1, 1)
    bandwidth = median_bandwidth(test.reshape(len(test), -1))
    mmd_samples = mmd(samples, test, bandwidth)
    mmd_reference = float(np.mean([mmd(r, test, bandwidth) for r in refs]))
    mmd_baseline = mmd(baseline, test, bandwidth)

    grid_n = config.grid_rows**2
    save_figure(_plot_samples(
        samples[:grid_n], test[:grid_n], baseline[:grid_n], config.grid_rows,
        (f"DDPM samples ({sc.sampler}), MMD {mmd_samples:.3f}",
         f"held-out digits (reference MMD {mmd_reference:.3f})",
         f"pixel-Gaussian baseline, MMD {mmd_baseline:.3f}")), workdir, "samples")
    save_figure(plot_losses({"UNet": [r["loss"] for r in result.history]},
                            [r["step"] for r in result.history],
                            f"squared error on the {m.prediction_type} target (minibatch)",
                            "DDPM training loss on 8x8 digits (moving average of 10 log rows)"),
                workdir, "loss")

    target = config.target_factor * mmd_reference
    steps = options.get("num_inference_steps", m.num_timesteps)
    summary: dict[str, Any] = {
        "num_train": len(train),
        "num_test": len(test),
        "num_steps": config.num_steps,
        "final_loss": result.history[-1]["loss"] if result.history else None,
        **timing,
        "sampler": sc.sampler,
        "sampling_steps": steps,
        "num_samples": n,
        "sample_s": sample_s,
        "sampler_compile_s": compile_s,
        "mmd_bandwidth": float(bandwidth),
        "mmd_samples": mmd_samples,
        "mmd_reference": mmd_reference,
        "mmd_baseline": mmd_baseline,
        "mmd_ratio": mmd_samples / mmd_reference,
        "mmd_ratio_baseline": mmd_baseline / mmd_reference,
        "pixel_mean_abs_diff": float(np.abs(samples.mean(0) - test.mean(0)).mean()),
        "pixel_std_abs_diff": float(np.abs(samples.std(0) - test.std(0)).mean()),
        "sample_range": f"[{samples.min():.2f}, {samples.max():.2f}]",
        "nn_distance_samples_to_train": nearest_distance(samples, train),
        "nn_distance_test_to_train": nearest_distance(test, train),
    }
    summary.update(_classifier_checks(train, train_labels,
                                      {"samples": samples, "test": test, "baseline": baseline}))
    summary.update({
        "target": f"MMD(samples, held-out) <= {config.target_factor:g} x reference",
        "target_mmd": target,
        "target_met": mmd_samples <= target,
    })
    return summary
