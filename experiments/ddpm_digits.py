r"""DDPM with a small UNet on the 8x8 digits: a grid of samples, MMD against held-out digits.

Data. scikit-learn's bundled digits (:func:`experiments._data.load_sklearn`, a stratified
75/25 split), pixel values :math:`0..16` scaled to :math:`[-1, 1]` by :math:`x / 8 - 1`,
as NHWC images ``[N, 8, 8, 1]``; the model sees the training split only. With
``data.path`` set, the user's images instead (MNIST IDX files, CIFAR-10 batches, a ``.npz``
or a folder of class folders, read by :func:`jaxmath.run.local_data.load_dataset`; their
own test split, or ``data.test_fraction`` held out), scaled to [0, 1] and then by
:math:`2x - 1` to the same [-1, 1]. The UNet halves the image ``len(channel_mults) - 1``
times, so their height and width must be divisible by :math:`2^{L-1}` (checked before
training, a ConfigError otherwise), and there must be at least ``num_samples`` training
images (the reference MMD draws subsets of that size). A held-out split of more than
:data:`MAX_HELD_OUT` images (MNIST's 10,000) is subsampled to that many for the MMD and
its bandwidth, whose cost grows with the square of the count, and the logistic regression
below is fitted on at most :data:`MAX_CLASSIFIER_TRAIN` training images; the digits are
used whole.

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
samples come from an exponential moving average of the parameters. Every ``eval_every``
steps the average's loss on the held-out images (one fixed draw of timesteps and noise) is
logged as ``heldout_loss``, and the state where it is lowest is kept in
``checkpoints_best/``.

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
from jaxmath.run.config import ConfigError
from jaxmath.run.mesh import on_every_device, shard_init
from jaxmath.run.report import save_figure

from ._data import ImageDataset, describe, load_images
from ._train import (
    compile_timed,
    diffusion_training,
    plot_losses,
    run_loop,
    step_number,
    training_mesh,
)

MAX_HELD_OUT = 2000  # held-out images compared with the samples (median bandwidth: 2M pairs)
MAX_CLASSIFIER_TRAIN = 5000  # training images the sanity-check classifier is fitted on


def load_digits(config) -> ImageDataset:
    """The digits ``[N, 8, 8, 1]`` (or the images at ``config.data.path``, ``[N, H, W, C]``)
    scaled to ``[-1, 1]``, split with ``config.seed``; a ConfigError for images the UNet
    cannot take or too few of them for ``config.sample.num_samples``."""
    images = load_images(config.data, config.seed)
    h, w = images.x_train.shape[1:3]
    levels = len(config.model.channel_mults)
    factor = 2 ** (levels - 1)
    where = f"config.data.path={config.data.get('path')!r}"
    if h % factor or w % factor:
        raise ConfigError(
            f"{where}: images of {h}x{w} cannot go through the UNet's {levels} levels "
            f"(model.channel_mults={tuple(config.model.channel_mults)}): height and width must "
            f"be divisible by 2^{levels - 1} = {factor}; crop or pad the images, or use fewer "
            "levels")
    if len(images.x_train) < config.sample.num_samples:
        raise ConfigError(
            f"{where}: {len(images.x_train)} training images, fewer than "
            f"sample.num_samples={config.sample.num_samples} (the reference MMD draws that many "
            "without replacement); lower --config.sample.num_samples")
    to_range = lambda x: (2 * x - 1).astype(np.float32)  # noqa: E731  [0, 1] -> [-1, 1]
    return images._replace(x_train=to_range(images.x_train), x_test=to_range(images.x_test))


def mmd(x: jax.Array, y: jax.Array, bandwidth: jax.Array) -> float:
    """:math:`\\sqrt{\\widehat{\\mathrm{MMD}}{}^2_b}` between image sets, flattened to pixels."""
    flat = [jnp.reshape(a, (a.shape[0], -1)) for a in (x, y)]
    return float(jnp.sqrt(mmd_squared(*flat, bandwidth)))


def _grid(images: np.ndarray, rows: int) -> np.ndarray:
    """``[rows * cols, H, W, C]`` images tiled into one ``[rows * (H+1) - 1, cols * (W+1) - 1]``
    array (``C = 1``) or that by ``C`` (``C > 1``), NaN between the images."""
    cols = len(images) // rows
    _, h, w, channels = images.shape
    canvas = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, channels), np.nan)
    for i, img in enumerate(images[: rows * cols]):
        r, c = divmod(i, cols)
        canvas[r * (h + 1): r * (h + 1) + h, c * (w + 1): c * (w + 1) + w] = img
    return canvas[..., 0] if channels == 1 else canvas


def _plot_samples(samples, test, baseline, rows, titles) -> Figure:
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, imgs, title in zip(axes, (samples, test, baseline), titles, strict=True):
        grid = _grid(np.asarray(imgs), rows)
        if grid.ndim == 3:  # colour: [-1, 1] -> [0, 1] RGB, gaps white
            rgb = np.clip((grid[..., :3] + 1) / 2, 0, 1)
            ax.imshow(np.where(np.isnan(rgb), 1.0, rgb), interpolation="nearest")
        else:
            ax.imshow(grid, cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    return fig


def nearest_distance(x: np.ndarray, train: np.ndarray) -> float:
    """Mean Euclidean distance (pixels in [-1, 1]) from each ``x`` to its nearest ``train``."""
    a, b = (np.asarray(v, np.float64).reshape(len(v), -1) for v in (x, train))
    d2 = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
    return float(np.sqrt(np.maximum(d2.min(1), 0)).mean())


def _classifier_checks(train, train_labels, sets: dict[str, np.ndarray],
                       num_classes: int = 10) -> dict[str, Any]:
    """Mean top-class probability of a logistic regression on each set; classes covered."""
    from sklearn.linear_model import LogisticRegression

    if len(train) > MAX_CLASSIFIER_TRAIN:  # the user's large datasets: a fixed random subset
        keep = np.sort(np.random.default_rng(0).choice(len(train), MAX_CLASSIFIER_TRAIN,
                                                       replace=False))
        train, train_labels = train[keep], train_labels[keep]
    clf = LogisticRegression(max_iter=2000).fit(train.reshape(len(train), -1), train_labels)
    out: dict[str, Any] = {}
    for name, x in sets.items():
        proba = clf.predict_proba(np.asarray(x).reshape(len(x), -1))
        out[f"classifier_confidence_{name}"] = float(proba.max(1).mean())
        if name == "samples":
            counts = np.bincount(clf.classes_[proba.argmax(1)], minlength=num_classes)
            out["classes_covered"] = int((counts > 0).sum())
            out["min_class_fraction"] = float(counts.min() / counts.sum())
    return out


def run(config, workdir) -> dict:
    workdir = Path(workdir)
    images = load_digits(config)  # a bad data.path fails here, before any work
    train, test, train_labels = images.x_train, images.x_test, images.y_train
    shape = train.shape[1:]  # (H, W, C)
    noun = "digits" if config.data.get("path") is None else "images"
    key = jax.random.key(config.seed)
    k_init, k_train, k_sample, k_ref, k_base = jax.random.split(key, 5)
    if len(test) > MAX_HELD_OUT:  # the held-out images the MMD compares with
        keep = np.random.default_rng(config.seed).choice(len(test), MAX_HELD_OUT, replace=False)
        test = test[np.sort(keep)]

    m = config.model
    unet = UNet(channels=m.channels, channel_mults=tuple(m.channel_mults),
                num_res_blocks=m.num_res_blocks,
                attention_resolutions=tuple(m.attention_resolutions),
                mid_attention=m.mid_attention, num_heads=m.num_heads, num_groups=m.num_groups)
    model = DiffusionModel(unet, m.schedule, num_timesteps=m.num_timesteps,
                           prediction_type=m.prediction_type)
    mesh = training_mesh(config)
    init_state, step = diffusion_training(model, config, mesh)
    x_init = jnp.zeros((2, *shape))
    state = shard_init(lambda k: init_state(model.init(k, x_init, jnp.zeros(2, jnp.int32))),
                       k_init, mesh=mesh, min_size=config.mesh.min_shard_size)

    data = on_every_device(jnp.asarray(train), mesh)

    def step_fn(state, s):
        state, loss = step(state, s, data, k_train)
        return state, {"loss": loss}

    # Evaluation during training: the EMA's denoising loss on the held-out images, with one
    # fixed draw of timesteps and noise (the same at every evaluation, so comparable).
    heldout = on_every_device(jnp.asarray(test), mesh)
    k_eval = jax.random.fold_in(k_base, 1)
    heldout_loss = jax.jit(lambda ema: model.apply(ema, heldout, k_eval, method="loss"))

    def evaluate(state, step):
        return {"heldout_loss": heldout_loss(state["ema"])}

    result, timing = run_loop(config, workdir, state, step_fn, step_number, desc="ddpm_digits",
                              metrics_fn=evaluate, mesh=mesh)

    # Sampling, compiled ahead of time.
    sc, n = config.sample, config.sample.num_samples
    options = dict(sampler=sc.sampler, clip_sample=True)
    if sc.sampler == "ddim":
        options.update(num_inference_steps=sc.num_inference_steps,
                       timestep_spacing=sc.timestep_spacing)

    def sample(p, k):
        return model.apply(p, k, (n, *shape), method="sample", **options)

    samples, compile_s, sample_s = compile_timed(sample, result.state["ema"], k_sample)
    samples = np.asarray(samples)

    # Yardsticks at the same sizes: training digits (reference) and a pixel Gaussian.
    rng = np.random.default_rng(np.asarray(jax.random.key_data(k_ref)).ravel()[-1])
    refs = [train[rng.choice(len(train), n, replace=False)] for _ in range(config.num_reference)]
    mean, std = train.mean(0), train.std(0)
    baseline = np.clip(mean + std * np.asarray(jax.random.normal(k_base, (n, *shape))), -1, 1)
    bandwidth = median_bandwidth(test.reshape(len(test), -1))
    mmd_samples = mmd(samples, test, bandwidth)
    mmd_reference = float(np.mean([mmd(r, test, bandwidth) for r in refs]))
    mmd_baseline = mmd(baseline, test, bandwidth)

    grid_n = config.grid_rows**2
    save_figure(_plot_samples(
        samples[:grid_n], test[:grid_n], baseline[:grid_n], config.grid_rows,
        (f"DDPM samples ({sc.sampler}), MMD {mmd_samples:.3f}",
         f"held-out {noun} (reference MMD {mmd_reference:.3f})",
         f"pixel-Gaussian baseline, MMD {mmd_baseline:.3f}")), workdir, "samples")
    save_figure(plot_losses({"UNet": [r["loss"] for r in result.history]},
                            [r["step"] for r in result.history],
                            f"squared error on the {m.prediction_type} target (minibatch)",
                            f"DDPM training loss on {describe(images)['image_shape']} {noun} "
                            "(moving average of 10 log rows)"),
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
                                      {"samples": samples, "test": test, "baseline": baseline},
                                      images.num_classes))
    summary.update(describe(images))
    summary.update({
        "target": f"MMD(samples, held-out) <= {config.target_factor:g} x reference",
        "target_mmd": target,
        "target_met": mmd_samples <= target,
    })
    return summary
