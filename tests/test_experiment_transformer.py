"""experiments/transformer.py: a small Transformer that sorts sequences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.transformer import get_config
from experiments._train import count_params, fast_init
from experiments.transformer import Sorter, logits_and_attention, sequence_metrics, sorting_data
from tests import _experiment_runs as runs
from tests.tolerances import F32_LOOSE, F32_RTOL

CONFIG = runs.config_path("transformer")
SUMMARY_KEYS = {"test_sequence_accuracy", "target", "target_met", "target_metric",
                "test_token_accuracy", "num_test", "seq_len", "vocab_size", "final_loss",
                "num_steps", "num_params", "train_s", "train_compile_s", "train_steps_per_s",
                "steps_per_call",
                "train_examples_per_s", "train_flops_per_step", "train_flops_per_s", "train_mfu",
                "best_step", "best_value"}


quick = runs.quick_fixture(CONFIG)


def test_quick_run_writes_its_files(quick):
    summary, tmp_path = quick
    runs.assert_run_files(tmp_path, "metrics.jsonl", "plots/curves.png", "plots/attention.png")
    runs.assert_stored_summary(tmp_path, summary, SUMMARY_KEYS)
    rows = runs.metrics_rows(tmp_path)
    assert [row["step"] for row in rows] == [5, 10]
    assert all({"loss", "learning_rate", "token_accuracy", "sequence_accuracy",
                "test_token_accuracy", "test_sequence_accuracy"} <= set(row) for row in rows)
    assert summary["seq_len"] >= 16 and summary["target"] == 0.99
    runs.assert_loop_timing(summary, scan_steps=5)
    assert "attention.png" in (tmp_path / "report.md").read_text()


def test_scan_path_gives_the_same_run(quick, tmp_path):
    runs.check_scan_path(CONFIG, quick, tmp_path, scan_steps=5)


def test_sorting_data_sorts_uniform_tokens():
    x, y = sorting_data(jax.random.key(0), 500, 16, 10)
    assert x.shape == y.shape == (500, 16) and x.dtype == y.dtype == jnp.int32
    np.testing.assert_array_equal(y, np.sort(np.asarray(x), axis=1))
    counts = np.bincount(np.asarray(x).ravel(), minlength=10)
    assert counts.min() > 0.8 * counts.mean()  # 800 draws per symbol on average
    np.testing.assert_array_equal(x, sorting_data(jax.random.key(0), 500, 16, 10)[0])
    assert not np.array_equal(x, sorting_data(jax.random.key(1), 500, 16, 10)[0])


def test_sequence_metrics_match_numpy(rng):
    logits = rng.normal(size=(30, 6, 4)).astype(np.float32)
    targets = rng.integers(0, 4, (30, 6))
    targets[:10] = logits[:10].argmax(-1)  # some rows exactly right
    got = jax.jit(sequence_metrics)(logits, targets)
    correct = logits.argmax(-1) == targets
    assert float(got["token_accuracy"]) == pytest.approx(correct.mean())
    assert float(got["sequence_accuracy"]) == pytest.approx(correct.all(1).mean())
    assert float(got["sequence_accuracy"]) >= 10 / 30


def test_attention_weights_reproduce_the_attention_layer(rng):
    """Weights x captured values x output projection = the layer's own output."""
    model = Sorter(vocab_size=7, seq_len=5, num_layers=2, d_model=8, num_heads=2)
    tokens = jnp.asarray(rng.integers(0, 7, (3, 5)), jnp.int32)
    params = fast_init(lambda key: model.init(key, tokens), jax.random.key(0))

    @jax.jit
    def run(params):
        _, state = model.apply(params, tokens, capture_intermediates=True,
                               mutable=["intermediates"])
        logits, weights = logits_and_attention(model, params, tokens)
        return logits, weights, model.apply(params, tokens), state["intermediates"]["trunk"]

    logits, weights, want_logits, trunk = run(params)
    np.testing.assert_array_equal(logits, want_logits)
    assert weights.shape == (2, 3, 2, 5, 5)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=F32_RTOL)
    assert float(weights.min()) >= 0.0
    for layer in range(2):
        captured = trunk[f"block_{layer}"]["attn"]
        out = params["params"]["trunk"][f"block_{layer}"]["attn"]["out"]
        v = captured["value"]["__call__"][0]                        # [N, L, H, d]
        heads = jnp.einsum("nhqk,nkhd->nqhd", weights[layer], v)
        want = jnp.einsum("nqhd,hdo->nqo", heads, out["kernel"]) + out["bias"]
        np.testing.assert_allclose(captured["__call__"][0], want, rtol=F32_LOOSE,
                                   atol=F32_LOOSE)


def test_sorter_shapes_and_parameter_count():
    model = Sorter(vocab_size=10, seq_len=16, num_layers=1, d_model=8, num_heads=2,
                   mlp_ratio=2.0)
    tokens = jax.ShapeDtypeStruct((4, 16), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), tokens)
    assert jax.eval_shape(model.apply, params, tokens).shape == (4, 16, 10)
    d, v, length, hidden = 8, 10, 16, 16
    block = 4 * (d * d + d) + 2 * 2 * d + (d * hidden + hidden) + (hidden * d + d)
    assert count_params(params) == v * d + length * d + block + 2 * d + (d * v + v)


@pytest.mark.parametrize("call, match", [
    (lambda: get_config("long"), "unknown variant 'long'"),
    (lambda: sorting_data(jax.random.key(0), 0, 16, 10), "num must be a positive int"),
    (lambda: sorting_data(jax.random.key(0), 4, -1, 10), "seq_len must be a positive int"),
    (lambda: sorting_data(jax.random.key(0), 4, 16, 0), "vocab_size must be a positive int"),
    (lambda: sorting_data(jax.random.key(0), 4, 16.0, 10), "seq_len"),
    (lambda: jax.eval_shape(Sorter(10, 8, 1, 8, 3).init, jax.random.key(0),
                            jnp.zeros((1, 8), jnp.int32)), "num_heads"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.slow
def test_default_config_reaches_its_target(tmp_path):
    summary = runs.default_run(CONFIG, tmp_path)
    assert summary["test_sequence_accuracy"] >= 0.99 and summary["seq_len"] >= 16
