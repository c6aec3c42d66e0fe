r"""A small Transformer learns to sort: exact-sequence accuracy on held-out sequences.

Task. A sequence :math:`x = (x_1, \dots, x_L)` of ``task.seq_len`` = 16 tokens drawn
independently and uniformly from ``task.vocab_size`` = 10 symbols is mapped to its sorted
version :math:`y = \mathrm{sort}(x)`, repeats kept. The model reads all of :math:`x` and
predicts every :math:`y_i` at once (no decoding loop): output position :math:`i` must find
the :math:`i`-th smallest input, which takes comparing each token with all the others:
what attention does.

Model. :class:`jaxmath.nn.Transformer`: token embedding plus learned positions,
``model.num_layers`` pre-LayerNorm blocks of (non-causal)
:class:`jaxmath.nn.MultiHeadAttention` with ``model.num_heads`` heads and a gelu MLP, a
final LayerNorm, and a dense head to logits :math:`z_i \in \mathbb{R}^{V}` at each
position:

.. math:: p(y_i = v \mid x) = \mathrm{softmax}(z_i)_v, \qquad
          \mathcal{L} = -\frac1L \sum_{i=1}^{L} \log p(y_i \mid x).

Method. Every step draws a fresh batch of ``batch_size`` sequences from
``fold_in(key, step)``; the loss (:func:`jaxmath.softmax_cross_entropy`, mean over
positions and batch) is minimised by AdamW with warm-up and cosine decay (the training
step of :mod:`experiments._train`: ``jax.grad`` and optax, run by
:func:`jaxmath.run.loop.train_loop`; the steps between two log steps run as one compiled
``lax.scan``, which draws each batch on the device from the traced step).

Evaluation. ``task.num_test`` sequences drawn with a separate key are held out. The
prediction is :math:`\hat y_i = \arg\max_v p(y_i = v \mid x)`; *exact-sequence accuracy*
is the fraction of test sequences with :math:`\hat y = y` at all :math:`L` positions,
*token accuracy* the fraction of correct positions. Training sees
``num_steps x batch_size`` (:math:`1.28 \times 10^5` by default) of the
:math:`V^L = 10^{16}` possible sequences, so a given test sequence was seen in training
with probability below :math:`10^{-10}`.

Target. Exact-sequence accuracy >= ``target_accuracy`` (0.99).

Plots. ``curves.png``: training loss and test token/sequence accuracy against the step;
``attention.png``: the attention weights :math:`\mathrm{softmax}(Q_h K_h^T/\sqrt{d})` of
every layer and head for one test sequence (rows: output position, labelled with the
predicted token; columns: input positions ordered by token value, labelled with the
token), computed from the queries and keys the trained layers produce (Flax
``capture_intermediates``). In the first layer, output positions attend to the inputs
whose values lie in the band their position calls for (a rough diagonal).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from jaxmath.losses import softmax_cross_entropy
from jaxmath.nn import Transformer
from jaxmath.nn.softmax import softmax
from jaxmath.run.mesh import on_every_device
from jaxmath.run.report import save_figure

from ._train import (
    classifier_summary,
    count_params,
    plot_curves,
    train_classifier,
    training_mesh,
)


class Sorter(nn.Module):
    """Tokens ``[N, L]`` to logits ``[N, L, V]`` of the sorted sequence: encoder + dense head."""

    vocab_size: int
    seq_len: int
    num_layers: int
    d_model: int
    num_heads: int
    mlp_ratio: float = 4.0

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        h = Transformer(self.num_layers, self.d_model, self.num_heads, mlp_ratio=self.mlp_ratio,
                        vocab_size=self.vocab_size, max_len=self.seq_len, name="trunk")(tokens)
        return nn.Dense(self.vocab_size, name="head")(h)


@partial(jax.jit, static_argnames=("num", "seq_len", "vocab_size"))
def sorting_data(key: jax.Array, num: int, seq_len: int,
                 vocab_size: int) -> tuple[jax.Array, jax.Array]:
    """``(x, sort(x))``: ``num`` sequences of ``seq_len`` uniform tokens in ``[0, vocab_size)``."""
    for value, name in ((num, "num"), (seq_len, "seq_len"), (vocab_size, "vocab_size")):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    # drawn flat: XLA:CPU compiles the threefry of a 1-D shape much faster than of a 2-D one
    x = jax.random.randint(key, (num * seq_len,), 0, vocab_size).reshape(num, seq_len)
    return x, jnp.sort(x, axis=-1)


def sequence_metrics(logits: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
    """Token accuracy and exact-sequence accuracy of the argmax predictions."""
    correct = jnp.argmax(logits, axis=-1) == targets
    return {"token_accuracy": jnp.mean(correct),
            "sequence_accuracy": jnp.mean(jnp.all(correct, axis=-1))}


def logits_and_attention(model: Sorter, params, tokens: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
    r"""The logits ``[N, L, V]`` and every block's attention weights ``[layers, N, H, L, L]``.

    The weights :math:`\mathrm{softmax}(Q_h K_h^T / \sqrt d)` are computed from the
    outputs of each attention layer's ``query`` and ``key`` projections, captured while the
    model runs.
    """
    logits, state = model.apply(params, tokens, capture_intermediates=True,
                                mutable=["intermediates"])
    trunk = state["intermediates"]["trunk"]
    weights = []
    for i in range(model.num_layers):
        attn = trunk[f"block_{i}"]["attn"]
        q, k = attn["query"]["__call__"][0], attn["key"]["__call__"][0]  # [N, L, H, d]
        scores = jnp.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(q.shape[-1])
        weights.append(softmax(scores, axis=-1))
    return logits, jnp.stack(weights)


def _plot_attention(weights: np.ndarray, tokens: np.ndarray, predicted: np.ndarray) -> Figure:
    """``weights [layers, H, L, L]`` of one sequence, one panel per layer and head.

    Key columns are ordered by token value (stably), so a query that looks up the tokens
    of the value it must output shows as a band along the diagonal.
    """
    layers, heads, length, _ = weights.shape
    order = np.argsort(tokens, kind="stable")
    weights = weights[..., order]
    fig = Figure(figsize=(2.9 * heads + 0.8, 2.9 * layers + 0.9), layout="constrained")
    axes = np.asarray(fig.subplots(layers, heads, squeeze=False))
    ticks = np.arange(length)
    for (layer, head), ax in np.ndenumerate(axes):
        image = ax.imshow(weights[layer, head], cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(ticks, [str(t) for t in tokens[order]], fontsize=6)
        ax.set_yticks(ticks, [str(t) for t in predicted], fontsize=6)
        ax.set_title(f"layer {layer}, head {head}", fontsize=9)
        if layer == layers - 1:
            ax.set_xlabel("key: input token (ordered by value)")
        if head == 0:
            ax.set_ylabel("query: predicted output token")
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    fig.suptitle("input " + " ".join(map(str, tokens)) + "  ->  predicted " +
                 " ".join(map(str, predicted)), fontsize=9)
    return fig


def run(config, workdir) -> dict:
    workdir = Path(workdir)
    task = config.task
    key_init, key_train, key_test = jax.random.split(jax.random.key(config.seed), 3)
    data = partial(sorting_data, seq_len=task.seq_len, vocab_size=task.vocab_size)
    mesh = training_mesh(config)
    x_test, y_test = on_every_device(data(key_test, task.num_test), mesh)
    m = config.model
    model = Sorter(task.vocab_size, task.seq_len, m.num_layers, m.d_model, m.num_heads,
                   m.mlp_ratio)

    def loss_fn(params, batch):
        x, y = batch
        logits = model.apply(params, x)
        return jnp.mean(softmax_cross_entropy(logits, y)), sequence_metrics(logits, y)

    @jax.jit  # traced inside the loop's scan; one call per step with steps_per_call=1
    def batch_fn(step):
        return data(jax.random.fold_in(key_train, step), config.batch_size)

    @jax.jit
    def test_metrics(params):
        return sequence_metrics(model.apply(params, x_test), y_test)

    def evaluate(state, step=None) -> dict[str, float]:
        metrics = jax.device_get(test_metrics(state["params"]))
        return {f"test_{k}": float(v) for k, v in metrics.items()}

    result, timing = train_classifier(config, workdir, lambda key: model.init(key, x_test[:1]),
                                      key_init, loss_fn, batch_fn, desc="transformer",
                                      metrics_fn=evaluate, mesh=mesh)
    params = result.state["params"]
    final = evaluate(result.state)

    save_figure(plot_curves(result.history, losses={"train": "loss"},
                            accuracies={"test token accuracy": "test_token_accuracy",
                                        "test exact-sequence accuracy": "test_sequence_accuracy"},
                            target=config.target_accuracy, accuracy_label="accuracy"),
                workdir, "curves")
    example = x_test[:1]
    logits, weights = jax.jit(partial(logits_and_attention, model))(params, example)
    save_figure(_plot_attention(np.asarray(weights[:, 0]), np.asarray(example[0]),
                                np.asarray(jnp.argmax(logits[0], axis=-1))), workdir, "attention")

    return classifier_summary(
        "test_sequence_accuracy", final["test_sequence_accuracy"], config.target_accuracy,
        "test exact-sequence accuracy", result, timing, count_params(params),
        test_token_accuracy=final["test_token_accuracy"], num_test=int(task.num_test),
        seq_len=int(task.seq_len), vocab_size=int(task.vocab_size))
