r"""SVD and principal component analysis of the 8x8 digits, against scikit-learn.

Method. The 1,797 digits (64 pixel intensities in 0..16) are split 75/25, stratified
(``experiments._data.load_sklearn``, raw features). On the training part
:math:`X \in \mathbb{R}^{n \times 64}` we take the SVD of the centred data,
:math:`X - \bar x = U \Sigma V^T` (:func:`jaxmath.svd`), and fit
:class:`jaxmath.PCA` with all 64 components. The explained variances are
:math:`\lambda_i = \sigma_i^2 / (n - 1)` and the ratios
:math:`r_i = \lambda_i / \sum_j \lambda_j`; the SVD's and the PCA's must agree.

Reconstruction. With the top :math:`k` axes :math:`V_k`, a digit is reconstructed as
:math:`\hat x = (x - \bar x) V_k V_k^T + \bar x` (``PCA.transform`` then
``PCA.inverse_transform`` with the projections beyond :math:`k` zeroed, all
:math:`k = 0 .. 64` in one batched call). The error is the mean squared error per
pixel (:func:`jaxmath.mse`), on the training and on the test digits; on the
training digits it equals :math:`\frac{n-1}{n d} \sum_{i > k} \lambda_i`.

Parity with scikit-learn (the target). ``sklearn.decomposition.PCA`` (``svd_solver``
as configured) fitted in float64 on the same training digits gives the reference
explained-variance ratios, and, through its first :math:`k` components and mean,
reference rank-k reconstructions of the test digits for every :math:`k`. jaxmath
(float32) must match the ratios within ``config.ratio_atol`` (absolute) and the
reconstruction errors within ``config.recon_rtol`` of the data's total variance per
pixel (a relative tolerance that stays meaningful where the error itself goes to 0 at
:math:`k = 64`).

Plots. ``explained_variance.png`` (per-component and cumulative ratio, with the
components needed for 90 % and 95 %), ``projection_2d.png`` (test digits on the first
two principal axes, coloured by digit), ``reconstruction_error.png`` (train/test error
against k, jaxmath and scikit-learn) and ``reconstructions.png`` (test digits rebuilt
from k components).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from jaxmath.linalg import PCA, svd
from jaxmath.losses import mse
from jaxmath.run.files import MetricsLog
from jaxmath.run.report import save_figure

from ._data import load_sklearn


def truncated_reconstructions(pca: PCA, X: jax.Array) -> jax.Array:
    """``[d + 1, n, d]``: ``X`` rebuilt from its first ``k`` principal components, k = 0..d.

    ``k = 0`` gives the mean; ``k = d`` gives ``X`` (up to rounding) when ``pca`` keeps all
    ``d`` components.
    """
    Z = pca.transform(X)                                        # [n, d]
    k = jnp.arange(pca.n_components + 1)[:, None, None]        # [d + 1, 1, 1]
    keep = jnp.arange(pca.n_components)[None, None, :] < k      # [d + 1, 1, d]
    return pca.inverse_transform(jnp.where(keep, Z, 0))


def reconstruction_errors(X: jax.Array, recon: jax.Array) -> np.ndarray:
    """``[K]`` mean squared error per pixel of each of ``K`` reconstructions ``[K, n, d]`` of X."""
    return np.asarray(jax.vmap(mse, in_axes=(None, 0))(jnp.asarray(X), recon))


def sklearn_reference(x_train: np.ndarray, x_test: np.ndarray, svd_solver: str):
    """float64 scikit-learn: explained-variance ratios and test reconstruction errors, k = 0..d.

    One fit with every component; the rank-k reconstruction uses its first k components
    (``sklearn.decomposition.PCA(n_components=k)`` finds the same ones).
    """
    from sklearn.decomposition import PCA as SkPCA

    x_train, x_test = (np.asarray(x, np.float64) for x in (x_train, x_test))
    d = x_train.shape[1]
    model = SkPCA(n_components=d, svd_solver=svd_solver).fit(x_train)
    centred = x_test - model.mean_
    errors = [np.mean((centred - centred @ C.T @ C) ** 2)
              for C in (model.components_[:k] for k in range(d + 1))]
    return model.explained_variance_ratio_, np.array(errors)


def _components_for(cumulative: np.ndarray, fraction: float) -> int:
    return int(np.searchsorted(cumulative, fraction) + 1)


def _plot_variance(ratio, sk_ratio, k90, k95) -> Figure:
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    k = np.arange(1, len(ratio) + 1)
    ax.bar(k, ratio, color="tab:blue", alpha=0.6, label="per component (jaxmath)")
    ax.plot(k, np.cumsum(ratio), "o-", ms=3, color="tab:blue", label="cumulative (jaxmath)")
    ax.plot(k, np.cumsum(sk_ratio), "x", ms=4, color="tab:red", label="cumulative (scikit-learn)")
    for kk, frac in ((k90, 0.9), (k95, 0.95)):
        ax.axvline(kk, color="gray", ls=":", lw=1)
        ax.annotate(f"{frac:.0%}: k = {kk}", (kk, frac), xytext=(5, -14),
                    textcoords="offset points", fontsize=9)
    ax.set(xlabel="principal component k", ylabel="explained variance ratio",
           title="digits: explained variance", ylim=(0, 1.02))
    ax.legend(loc="center right")
    return fig


def _plot_projection(Z, y) -> Figure:
    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.subplots()
    points = ax.scatter(Z[:, 0], Z[:, 1], c=y, cmap="tab10", s=12, vmin=-0.5, vmax=9.5)
    for digit in range(10):
        cx, cy = np.median(Z[y == digit, :2], axis=0)
        ax.text(cx, cy, str(digit), fontsize=14, weight="bold", ha="center", va="center",
                bbox=dict(boxstyle="circle", fc="white", alpha=0.7))
    fig.colorbar(points, ax=ax, ticks=range(10), label="digit")
    ax.set(xlabel="principal component 1", ylabel="principal component 2",
           title="test digits projected on the first two principal axes")
    return fig


def _plot_errors(train_err, test_err, sk_test_err) -> Figure:
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    k = np.arange(len(train_err))
    ax.plot(k, train_err, "-", label="train (jaxmath)")
    ax.plot(k, test_err, "-", label="test (jaxmath)")
    ax.plot(k, sk_test_err, "x", ms=4, color="tab:red", label="test (scikit-learn)")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set(xlabel="number of components k", ylabel="MSE per pixel",
           title="digits: reconstruction error")
    ax.legend()
    return fig


def _plot_reconstructions(X, recon, ks) -> Figure:
    num = X.shape[0]
    fig = Figure(figsize=(1.1 * num, 1.2 * (len(ks) + 1)), layout="constrained")
    axes = fig.subplots(len(ks) + 1, num, squeeze=False)
    rows = [("original", X)] + [(f"k = {k}", recon[k]) for k in ks]
    for r, (label, images) in enumerate(rows):
        for c in range(num):
            ax = axes[r, c]
            ax.imshow(images[c].reshape(8, 8), cmap="gray_r", vmin=0, vmax=16)
            ax.set(xticks=[], yticks=[])
        axes[r, 0].set_ylabel(label)
    return fig


def run(config, workdir) -> dict:
    workdir = Path(workdir)
    split = load_sklearn("digits", test_fraction=config.test_fraction, seed=config.seed,
                         standardize=False)
    x_train, x_test = jnp.asarray(split.x_train), jnp.asarray(split.x_test)
    n, d = split.x_train.shape

    # SVD of the centred training data and the PCA fit with every component.
    singular_values = np.asarray(svd(x_train - x_train.mean(0), full_matrices=False,
                                     compute_uv=False))
    svd_variance = singular_values**2 / (n - 1)
    pca = PCA.fit(x_train, n_components=d, svd_solver=config.svd_solver)
    variance = np.asarray(pca.explained_variance)
    ratio = np.asarray(pca.explained_variance_ratio)
    svd_pca_rel_diff = float(np.max(np.abs(svd_variance - variance)) / variance[0])

    train_err = reconstruction_errors(x_train, truncated_reconstructions(pca, x_train))
    recon_test = truncated_reconstructions(pca, x_test)
    test_err = reconstruction_errors(x_test, recon_test)
    Z_test = np.asarray(pca.transform(x_test))

    sk_ratio, sk_test_err = sklearn_reference(split.x_train, split.x_test, config.svd_solver)
    ratio_err = float(np.max(np.abs(ratio - sk_ratio)))
    total_variance = float(np.mean(np.var(np.asarray(split.x_test, np.float64), axis=0)))
    recon_err = float(np.max(np.abs(test_err - sk_test_err)) / total_variance)

    cumulative = np.cumsum(ratio)
    k90, k95 = _components_for(cumulative, 0.9), _components_for(cumulative, 0.95)
    save_figure(_plot_variance(ratio, sk_ratio, k90, k95), workdir, "explained_variance")
    save_figure(_plot_projection(Z_test, split.y_test), workdir, "projection_2d")
    save_figure(_plot_errors(train_err, test_err, sk_test_err), workdir, "reconstruction_error")
    num = config.num_shown
    ks = [k for k in config.shown_components if k <= d]
    save_figure(_plot_reconstructions(np.asarray(x_test[:num]), np.asarray(recon_test[:, :num]),
                                      ks), workdir, "reconstructions")

    ratio_atol, recon_rtol = float(config.ratio_atol), float(config.recon_rtol)
    summary = {
        "num_train": n,
        "num_test": len(split.y_test),
        "num_features": d,
        "svd_solver": pca.svd_solver,
        "variance_ratio_pc1": float(ratio[0]),
        "variance_ratio_pc2": float(ratio[1]),
        "components_for_90pct": k90,
        "components_for_95pct": k95,
        **{f"test_mse_k{k}": float(test_err[k]) for k in ks},
        "svd_vs_pca_variance_rel_diff": svd_pca_rel_diff,
        "ratio_max_abs_diff_vs_sklearn": ratio_err,
        "recon_max_rel_diff_vs_sklearn": recon_err,
        "ratio_atol": ratio_atol,
        "recon_rtol": recon_rtol,
        "target": (f"explained variance ratio within {ratio_atol:g} and test reconstruction "
                   f"error within {recon_rtol:g} x total variance of scikit-learn's, every k"),
        "target_met": bool(ratio_err <= ratio_atol and recon_err <= recon_rtol),
    }
    log = MetricsLog(workdir)
    log.path.unlink(missing_ok=True)  # one row per run: a rerun replaces it
    log.write(0, {k: v for k, v in summary.items() if isinstance(v, float)})
    return summary
