r"""Gaussian naive Bayes on scikit-learn's bundled datasets, against scikit-learn.

Method. For each of iris, wine, breast_cancer and digits we draw ``config.num_splits``
stratified train/test splits (``experiments._data.load_sklearn`` with split seeds
``config.seed, config.seed + 1, ...``; raw, unstandardised features, as
scikit-learn's own examples use them) and fit :class:`jaxmath.GaussianNB` on the
training part: per-class feature means :math:`\mu_{cj}`, variances
:math:`\sigma^2_{cj}` (plus :math:`\epsilon` = ``var_smoothing`` x the largest feature
variance) and empirical priors :math:`\pi_c`. A test point is assigned

.. math:: \hat y = \arg\max_c \Big[\log \pi_c - \frac12 \sum_j
          \log(2\pi\sigma^2_{cj}) + \frac{(x_j - \mu_{cj})^2}{\sigma^2_{cj}}\Big].

``sklearn.naive_bayes.GaussianNB`` with the same ``var_smoothing`` is fitted on the same
split as the reference.

Target. On every dataset and split, jaxmath's test accuracy is within
``config.target_gap_points`` (0.5) percentage points of scikit-learn's. The summary
gives, per dataset, the mean test accuracy of both over the splits, the largest gap
(points) and the fraction of test predictions on which the two agree.

Plot. ``confusion_matrices.png``: the test confusion matrix (rows: true class,
columns: predicted) of jaxmath's model on the first split of each dataset.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from jaxmath.naive_bayes import GaussianNB
from jaxmath.run.files import MetricsLog
from jaxmath.run.report import save_figure

from ._data import load_sklearn


@partial(jax.jit, static_argnames="num_classes")
def confusion_matrix(y_true: jax.Array, y_pred: jax.Array, num_classes: int) -> jax.Array:
    """``[C, C]`` counts: entry ``(i, j)`` is the number of samples of class i predicted as j."""
    one_hot = lambda y: jax.nn.one_hot(y, num_classes, dtype=jnp.int32)  # noqa: E731
    return one_hot(y_true).T @ one_hot(y_pred)


def _sklearn_accuracy(split, var_smoothing: float) -> tuple[float, np.ndarray]:
    from sklearn.naive_bayes import GaussianNB as SkGaussianNB

    model = SkGaussianNB(var_smoothing=var_smoothing).fit(split.x_train, split.y_train)
    pred = model.predict(split.x_test)
    return float(np.mean(pred == split.y_test)), pred


def evaluate(name: str, split_seed: int, config) -> dict:
    """Fit both models on one split; accuracies, agreement and jaxmath's confusion matrix."""
    split = load_sklearn(name, test_fraction=config.test_fraction, seed=split_seed,
                         standardize=False)
    model = GaussianNB.fit(split.x_train, split.y_train, num_classes=split.num_classes,
                           var_smoothing=config.var_smoothing)
    pred = np.asarray(model.predict(split.x_test))
    sk_accuracy, sk_pred = _sklearn_accuracy(split, config.var_smoothing)
    return {
        "accuracy": float(np.mean(pred == split.y_test)),
        "sklearn_accuracy": sk_accuracy,
        "agreement": float(np.mean(pred == sk_pred)),
        "confusion": np.asarray(confusion_matrix(split.y_test, pred, split.num_classes)),
        "num_test": len(split.y_test),
    }


def _plot(confusions: dict[str, np.ndarray], accuracies: dict[str, float]) -> Figure:
    fig = Figure(figsize=(4.2 * len(confusions), 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(confusions)))
    for ax, (name, cm) in zip(axes, confusions.items(), strict=True):
        ax.imshow(cm, cmap="Blues")
        small = cm.shape[0] > 5
        for (i, j), count in np.ndenumerate(cm):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7 if small else 10,
                        color="white" if count > cm.max() / 2 else "black")
        ticks = np.arange(cm.shape[0])
        ax.set(xticks=ticks, yticks=ticks, xlabel="predicted class", ylabel="true class",
               title=f"{name}: test accuracy {accuracies[name]:.1%}")
    return fig


def run(config, workdir) -> dict:
    workdir = Path(workdir)
    seeds = [config.seed + i for i in range(config.num_splits)]
    summary: dict = {}
    confusions, first_accuracy, gaps = {}, {}, []
    for name in config.datasets:
        results = [evaluate(name, s, config) for s in seeds]
        acc = np.array([r["accuracy"] for r in results])
        sk = np.array([r["sklearn_accuracy"] for r in results])
        gap = float(np.max(np.abs(acc - sk)) * 100)
        gaps.append(gap)
        summary[f"{name}_accuracy"] = float(acc.mean())
        summary[f"{name}_sklearn_accuracy"] = float(sk.mean())
        summary[f"{name}_max_gap_points"] = gap
        summary[f"{name}_agreement"] = float(np.mean([r["agreement"] for r in results]))
        summary[f"{name}_num_test"] = results[0]["num_test"]
        confusions[name] = results[0]["confusion"]
        first_accuracy[name] = results[0]["accuracy"]
    save_figure(_plot(confusions, first_accuracy), workdir, "confusion_matrices")

    target = float(config.target_gap_points)
    summary.update({
        "num_splits": len(seeds),
        "max_gap_points": max(gaps),
        "target": f"|accuracy - sklearn accuracy| <= {target:g} points on every dataset and split",
        "target_met": bool(max(gaps) <= target),
    })
    log = MetricsLog(workdir)
    log.path.unlink(missing_ok=True)  # one row per run: a rerun replaces it
    log.write(0, {k: v for k, v in summary.items() if isinstance(v, float)})
    return summary
