"""Training on a device mesh (jaxmath.run.mesh with train_loop): same results on any layout.

Needs 4 devices: ``make test`` runs this module in a second pytest call with
``JAX_NUM_CPU_DEVICES=4`` (marker ``multidevice``); with fewer devices it is skipped. A
layout of n < 4 devices uses the first n. With the global batch fixed, every layout gives
the losses of one device to float32 reduction order.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from experiments._train import init_state, make_adamw, make_diffusion_step, make_step
from experiments.transformer import Sorter, sorting_data
from jaxmath.diffusion.denoisers import UNet
from jaxmath.diffusion.model import DiffusionModel
from jaxmath.losses import softmax_cross_entropy
from jaxmath.run.config import ConfigError
from jaxmath.run.loop import train_loop
from jaxmath.run.mesh import (
    batch_sharding,
    check_batch,
    make_mesh,
    on_every_device,
    process_rows,
    shard_init,
    state_shardings,
)

pytestmark = [
    pytest.mark.multidevice,
    pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 devices (JAX_NUM_CPU_DEVICES=4)"),
]

RTOL = 2e-5  # float32 sums over a different split of the batch: observed <= 1e-6
LAYOUTS = [(1, 1), (2, 1), (4, 1), (2, 2), (1, 4)]  # (data, fsdp)


def _mesh(data: int, fsdp: int):
    return make_mesh(data, fsdp, devices=jax.devices()[:data * fsdp])


# ----------------------------------------------------------------- the mesh and its rules


def test_default_mesh_puts_every_device_on_the_data_axis():
    assert dict(make_mesh().shape) == {"data": jax.device_count(), "fsdp": 1}
    assert dict(make_mesh(fsdp=2).shape) == {"data": jax.device_count() // 2, "fsdp": 2}


@pytest.mark.parametrize(("data", "fsdp", "match"), [
    (3, 1, r"mesh.data=3 x mesh.fsdp=1 = 3 devices, but the run has 4; layouts that fit: "
           r"data=4 fsdp=1, data=2 fsdp=2, data=1 fsdp=4"),
    (None, 3, r"mesh.fsdp=3 does not divide the 4 devices"),
])
def test_a_mesh_that_does_not_fit_the_devices_is_refused(data, fsdp, match):
    with pytest.raises(ConfigError, match=match):
        make_mesh(data, fsdp, devices=jax.devices()[:4])


def test_a_batch_the_devices_do_not_divide_is_refused():
    mesh = _mesh(2, 2)
    assert check_batch(8, mesh) == 2
    with pytest.raises(ConfigError, match=r"batch_size=10 is not divisible by the 4 devices "
                                          r".*8 or 12 would be"):
        check_batch(10, mesh)


def test_fsdp_shards_the_largest_divisible_dimension_of_large_weights():
    state = {"w": jnp.zeros((64, 32)), "v": jnp.zeros((30, 64)), "odd": jnp.zeros((33, 33)),
             "b": jnp.zeros(64), "s": jnp.zeros(())}
    specs = {k: s.spec for k, s in state_shardings(state, _mesh(1, 4), min_size=64).items()}
    assert specs == {"w": P("fsdp", None), "v": P(None, "fsdp"), "odd": P(), "b": P("fsdp"),
                     "s": P()}
    small = state_shardings(state, _mesh(1, 4), min_size=100)
    assert small["b"].spec == P() and small["w"].spec == P("fsdp", None)
    replicated = state_shardings(state, _mesh(4, 1), min_size=1)
    assert all(s.spec == P() for s in replicated.values())


def test_fsdp_without_a_shardable_weight_is_refused():
    with pytest.raises(ValueError, match=r"mesh.fsdp=4 but no weight can be sharded.*"
                                         r"\['w'\] \(6, 6\)"):
        state_shardings({"w": jnp.zeros((6, 6)), "b": jnp.zeros(3)}, _mesh(1, 4), min_size=1)


def test_shard_init_places_each_shard_on_its_device_with_the_values_of_jit():
    def init(key):
        return {"w": jax.random.normal(key, (16, 8)), "b": jnp.zeros(8)}

    state = shard_init(init, jax.random.key(0), mesh=_mesh(1, 4), min_size=16)
    np.testing.assert_array_equal(state["w"], jax.jit(init)(jax.random.key(0))["w"])
    assert {s.data.shape for s in state["w"].addressable_shards} == {(4, 8)}
    assert {s.data.shape for s in state["b"].addressable_shards} == {(8,)}


def test_process_rows_are_the_whole_batch_in_one_process():
    assert process_rows(8, batch_sharding(_mesh(2, 2))) == slice(0, 8)


# ----------------------------------------------------------------- same results on any layout


TASK = dict(seq_len=6, vocab_size=8)
BATCH = 16


def _sorter_run(data: int, fsdp: int, num_steps: int, workdir, steps_per_call: int = 1):
    """The transformer experiment's model, loss and AdamW on the (data, fsdp) layout."""
    mesh = _mesh(data, fsdp)
    model = Sorter(TASK["vocab_size"], TASK["seq_len"], num_layers=2, d_model=16, num_heads=2)
    optimizer = make_adamw(_Optim(), 20)

    def loss_fn(params, batch):
        x, y = batch
        return jnp.mean(softmax_cross_entropy(model.apply(params, x), y)), {}

    def batch_fn(step):
        return sorting_data(jax.random.fold_in(jax.random.key(1), step), BATCH, **TASK)

    x0 = jnp.zeros((1, TASK["seq_len"]), jnp.int32)
    state = init_state(lambda k: model.init(k, x0), jax.random.key(0), optimizer, mesh,
                       min_shard_size=64)
    return train_loop(state, make_step(loss_fn, optimizer), batch_fn, num_steps=num_steps,
                      workdir=workdir, log_every=2, checkpoint_every=4, progress="none",
                      steps_per_call=steps_per_call, batch_sharding=batch_sharding(mesh))


class _Optim:
    learning_rate, warmup_steps, weight_decay = 3e-3, 2, 1e-4


def _losses(result):
    return np.array([row["loss"] for row in result.history])


@pytest.fixture(scope="module")
def sorter_reference(tmp_path_factory):
    """The losses of 8 steps on one device."""
    return _losses(_sorter_run(1, 1, 8, tmp_path_factory.mktemp("ref")))


@pytest.mark.parametrize(("data", "fsdp"), LAYOUTS[1:])
def test_transformer_losses_are_the_same_on_every_layout(data, fsdp, tmp_path_factory,
                                                         sorter_reference):
    result = _sorter_run(data, fsdp, 8, tmp_path_factory.mktemp("run"))
    np.testing.assert_allclose(_losses(result), sorter_reference, rtol=RTOL)
    if fsdp > 1:  # the embedding and dense kernels are split, Adam's moments with them
        specs = {s.spec for s in jax.tree.leaves(
            jax.tree.map(lambda x: x.sharding, result.state))}
        assert any("fsdp" in spec for spec in specs)


def test_transformer_scan_path_on_a_mesh_gives_the_same_losses(tmp_path_factory,
                                                                sorter_reference):
    result = _sorter_run(2, 2, 8, tmp_path_factory.mktemp("scan"), steps_per_call=0)
    assert result.timing.steps_per_call == 2
    np.testing.assert_allclose(_losses(result), sorter_reference, rtol=RTOL)


def test_a_checkpoint_resumes_on_another_layout_with_the_same_next_steps(tmp_path_factory,
                                                                        sorter_reference):
    """4 devices -> 2 devices with fsdp -> 1 device -> 4 devices, 2 steps at a time."""
    workdir = tmp_path_factory.mktemp("relayout")
    for num_steps, (data, fsdp) in zip((2, 4, 6, 8), [(4, 1), (1, 2), (1, 1), (2, 2)],
                                       strict=True):
        result = _sorter_run(data, fsdp, num_steps, workdir)
    np.testing.assert_allclose(_losses(result), sorter_reference, rtol=RTOL)


def _unet_run(data: int, fsdp: int, workdir):
    """The ddpm_digits experiment's step (UNet, v-prediction, Adam + EMA) on a layout."""
    mesh = _mesh(data, fsdp)
    unet = UNet(channels=8, channel_mults=(1,), num_res_blocks=1, attention_resolutions=(),
                mid_attention=True, num_heads=2, num_groups=4)
    model = DiffusionModel(unet, "cosine", num_timesteps=50, prediction_type="v")
    tx = optax.adam(1e-3)
    step = make_diffusion_step(model, tx, BATCH, 0.9, mesh)
    images = on_every_device(jax.random.uniform(jax.random.key(2), (64, 8, 8, 1)) * 2 - 1, mesh)

    def init(key):
        params = model.init(key, jnp.zeros((2, 8, 8, 1)), jnp.zeros(2, jnp.int32))
        return {"params": params, "opt_state": tx.init(params), "ema": params}

    def step_fn(state, s):
        state, loss = step(state, s, images, jax.random.key(3))
        return state, {"loss": loss}

    state = shard_init(init, jax.random.key(0), mesh=mesh, min_size=64)
    return train_loop(state, step_fn, lambda s: s, num_steps=4, workdir=workdir, log_every=1,
                      checkpoint_every=4, progress="none")


def test_unet_losses_are_the_same_with_data_parallelism_and_fsdp(tmp_path_factory):
    reference = _losses(_unet_run(1, 1, tmp_path_factory.mktemp("unet1")))
    for data, fsdp in [(4, 1), (2, 2)]:
        result = _unet_run(data, fsdp, tmp_path_factory.mktemp("unet"))
        np.testing.assert_allclose(_losses(result), reference, rtol=RTOL)


def test_a_step_with_a_traced_batch_keeps_the_state_layout(tmp_path_factory):
    """The state leaves the step with the shardings it entered with (one executable)."""
    result = _sorter_run(1, 4, 4, tmp_path_factory.mktemp("layout"))
    mesh = _mesh(1, 4)
    template = state_shardings(result.state, mesh, 64)
    same = jax.tree.map(lambda x, s: x.sharding.is_equivalent_to(s, x.ndim), result.state,
                        template)
    assert all(jax.tree.leaves(same))


def test_the_dense_layer_of_an_mlp_trains_the_same_with_host_batches(tmp_path):
    """Host-side NumPy batches are placed on the batch sharding by the loop."""
    mesh = _mesh(4, 1)
    model = nn.Dense(3)
    tx = make_adamw(_Optim(), 4)
    x = np.random.default_rng(0).normal(size=(32, 5)).astype(np.float32)
    y = (x @ np.arange(15.0, dtype=np.float32).reshape(5, 3))

    def loss_fn(params, batch):
        return jnp.mean((model.apply(params, batch[0]) - batch[1]) ** 2), {}

    def run(m, wd):
        state = init_state(lambda k: model.init(k, x[:1]), jax.random.key(0), tx, m)
        return train_loop(state, make_step(loss_fn, tx), lambda s: (x[s % 4::4], y[s % 4::4]),
                          num_steps=4, workdir=wd, log_every=1, progress="none",
                          batch_sharding=None if m is None else batch_sharding(m))

    reference = _losses(run(None, tmp_path / "one"))
    np.testing.assert_allclose(_losses(run(mesh, tmp_path / "mesh")), reference, rtol=RTOL)


def test_a_sweep_on_a_sweep_by_data_mesh_equals_one_device():
    """mlp_sweep's runs, configurations over "sweep" and each run's batch over "data"."""
    from configs.mlp_sweep import get_config
    from experiments.mlp_sweep import load_digits, sweep_from_config, training_from_config
    from jaxmath.run.mesh import make_sweep_mesh
    from jaxmath.run.sweep import grid

    config = get_config("quick")
    hparams = grid(learning_rate=[1e-3, 1e-2], seed=[0, 1])
    results = []
    for sweep, data in [(1, 1), (2, 2), (1, 4)]:
        mesh = make_sweep_mesh(sweep, data, devices=jax.devices()[:sweep * data])
        training = training_from_config(config, on_every_device(load_digits(config.data), mesh),
                                        mesh)
        out = sweep_from_config(config, hparams, training, None, mesh)
        results.append({**out.results, "loss_curve": out.curves["loss"]})
    for got in results[1:]:
        for key in ("final_train_loss", "loss_curve", "test_accuracy"):
            np.testing.assert_allclose(got[key], results[0][key], rtol=RTOL, err_msg=key)
