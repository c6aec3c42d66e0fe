r"""Gradient descent and backpropagation: the update rule and the chain rule.

:func:`gradient_descent` runs :math:`\theta_{t+1} = \theta_t - \eta \nabla_\theta L(\theta_t)`
as one ``lax.scan`` with ``jax.grad`` inside; :func:`gradient_descent_sweep` runs it
for many learning rates in one compiled, vectorised program; :func:`optimize`
does the same loop for any optax ``GradientTransformation``.
:func:`dense_sigmoid_mse_grads` writes the backpropagation equation out by hand
for one dense sigmoid layer; everywhere else the general path is ``jax.grad``.

Conventions: ``loss_fn(params, *args)`` returns a scalar; ``params`` is any
pytree of floating arrays; ``num_steps`` is a static Python int; learning rates
are traced values, so changing them never recompiles.

Precision: the drivers trace ``loss_fn`` under
``jax.default_matmul_precision(precision)``, ``"highest"`` by default, so the
products in the loss are float32 on every backend, as in the rest of jaxmath's
classical math (:mod:`jaxmath._precision`), and a run on a GPU or TPU follows the
same path as on a CPU instead of drifting with TF32 / bfloat16 rounding over the
steps. Pass ``precision=None`` for JAX's default (faster on accelerators).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxmath._checks import (
    as_float,
    as_floats,
    check_int,
    check_ndim,
    check_nonempty,
)
from jaxmath._precision import CLASSICAL, context_name, matmul_context

ArrayLike = jax.typing.ArrayLike
PyTree = Any
LossFn = Callable[..., jax.Array]

# Sweep members per vectorised chunk on CPU. On the blog post's regression (4,096 rates,
# 1,000 steps, 2 cores) chunks of 128-512 ran 2-3x faster than the whole sweep at
# once: per-step arrays stay in cache, and the loss's small reduction stays fused
# into the loop body (above ~4,096 elements XLA:CPU makes it a separate library
# call, every step). Larger problems measured (up to 64 samples x 256 parameters)
# were fastest at 128-512 too. `python -m benchmarks.gd_sweep` times the layouts.
_CPU_CHUNK_SIZE = 256


# --------------------------------------------------------------------------- checks


def _check_loss_fn(loss_fn: object) -> None:
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")


def _as_params(params: PyTree) -> PyTree:
    """``params`` with every leaf a floating array (integers become the default float)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    if not leaves:
        raise ValueError("params must contain at least one array, got an empty pytree")
    arrays = [_without_weak_type(as_float(leaf, f"params{jax.tree_util.keystr(path)}"))
              for path, leaf in leaves]
    return jax.tree.unflatten(treedef, arrays)


def _without_weak_type(x: jax.Array) -> jax.Array:
    """``x`` without JAX's weak type, so a Python float and an array share one compilation."""
    return x.astype(x.dtype)


def _check_scalar_loss(loss_fn: LossFn, params: PyTree, args: tuple) -> None:
    """Trace ``loss_fn`` once (no FLOPs) and require a real floating scalar."""
    out = jax.eval_shape(loss_fn, params, *args)
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            f"loss_fn must return a single scalar array, got a {type(out).__name__}; "
            "return auxiliary values from a separate function")
    if out.shape != ():
        raise ValueError(
            f"loss_fn must return a scalar, got shape {tuple(out.shape)}; "
            "reduce it (e.g. with jnp.mean) before returning")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"loss_fn must return a real floating scalar, got dtype {out.dtype}")


def _checked_run_args(loss_fn: LossFn, params: PyTree, num_steps: object, args: tuple,
                      unroll: object, precision: object
                      ) -> tuple[PyTree, int, int, str | None]:
    """The arguments every driver shares, checked: ``(params, num_steps, unroll, precision)``
    with float leaves, Python ints and a name for ``jax.default_matmul_precision``."""
    _check_loss_fn(loss_fn)
    num_steps = check_int(num_steps, "num_steps", 1,
                          static="static: it fixes the shape of the result")
    unroll = check_int(unroll, "unroll", 1, static="static: lax.scan's unroll")
    params = _as_params(params)
    _check_scalar_loss(loss_fn, params, args)
    return params, num_steps, unroll, context_name(precision)


def _learning_rates(value: ArrayLike, name: str, ndim: int, want: str,
                    hint: str = "") -> jax.Array:
    """``value`` as a floating array of rank ``ndim``, without JAX's weak type."""
    lr = _without_weak_type(as_float(value, name))
    if lr.ndim != ndim:
        raise ValueError(f"{name} must {want}, got shape {tuple(lr.shape)}{hint}")
    return lr


def _descend(params: PyTree, grads: PyTree, learning_rate: jax.Array) -> PyTree:
    r""":math:`\theta - \eta g` leaf by leaf, keeping each leaf's dtype."""
    return jax.tree.map(lambda p, g: p - learning_rate.astype(p.dtype) * g, params, grads)


# ---------------------------------------------------------------- gradient descent


def gradient_descent(loss_fn: LossFn, params: PyTree, learning_rate: ArrayLike,
                     num_steps: int, *args: Any, unroll: int = 1,
                     precision: str | None = CLASSICAL) -> tuple[PyTree, jax.Array]:
    r"""Plain (full-batch) gradient descent, compiled as one ``lax.scan``.

    .. math:: \theta_{t+1} = \theta_t - \eta \, \nabla_\theta L(\theta_t), \qquad t = 0, \dots, T-1

    Args:
      loss_fn: ``loss_fn(params, *args) -> []``, a real scalar loss, differentiable
        in ``params``. It is a static argument: pass the same function object to
        reuse the compiled program.
      params: :math:`\theta_0`, any pytree of arrays (integer leaves become the
        default float dtype).
      learning_rate: :math:`\eta`, a scalar; traced, so new values do not recompile
        and ``jax.vmap`` over it is one program (but see
        :func:`gradient_descent_sweep`, which lays a sweep out several times faster).
      num_steps: :math:`T`, a positive Python int (static).
      *args: extra arguments passed unchanged to ``loss_fn`` at every step
        (data, for instance); they are traced, so new data does not recompile.
      unroll: steps per iteration of the compiled loop (``lax.scan``'s ``unroll``).
      precision: the matrix-product precision ``loss_fn`` is traced under
        (``jax.default_matmul_precision``): ``"highest"`` (default, float32 on
        every backend), ``None`` (JAX's default) or another name it accepts.

    Returns:
      ``(params, losses)``: :math:`\theta_T` with the structure and dtypes of
      ``params``, and ``losses`` of shape ``[num_steps]`` where ``losses[t]`` is
      :math:`L(\theta_t)`, the loss *before* update ``t`` (so ``losses[0]`` is the
      loss at ``params`` and the loss at :math:`\theta_T` is not included).
      A learning rate that makes the iteration diverge gives ``inf``/``nan``
      parameters and losses, never an error: under ``jax.vmap`` or in a sweep
      only that member is affected. The result is differentiable in ``params``,
      ``learning_rate`` and ``args`` (forward and reverse mode; the gradient
      through a diverged run is non-finite too).

    Example:
      >>> X = jnp.array([[1., 1.], [1., 2.], [1., 3.]]); y = jnp.array([1., 2., 3.])
      >>> def loss(theta):
      ...     return 0.5 * jnp.mean((X @ theta - y) ** 2)
      >>> theta, losses = gradient_descent(loss, jnp.zeros(2), 0.01, 1000)
      >>> theta
      Array([0.110..., 0.951...], dtype=float32)
      >>> losses.shape
      (1000,)
    """
    params, num_steps, unroll, precision = _checked_run_args(loss_fn, params, num_steps, args,
                                                             unroll, precision)
    lr = _learning_rates(learning_rate, "learning_rate", 0, "be a scalar",
                         "; to sweep over learning rates use gradient_descent_sweep (or jax.vmap)")
    return _gradient_descent(loss_fn, num_steps, unroll, precision, params, lr, args)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _gradient_descent(loss_fn, num_steps, unroll, precision, params, lr, args):
    value_and_grad = jax.value_and_grad(loss_fn)

    def step(theta, _):
        loss, grads = value_and_grad(theta, *args)
        return _descend(theta, grads, lr), loss

    with matmul_context(precision):
        return lax.scan(step, params, length=num_steps, unroll=unroll)


def gradient_descent_sweep(loss_fn: LossFn, params: PyTree, learning_rates: ArrayLike,
                           num_steps: int, *args: Any, chunk_size: int | None = None,
                           unroll: int = 1, precision: str | None = CLASSICAL
                           ) -> tuple[PyTree, jax.Array]:
    r"""Gradient descent for many learning rates at once: one compiled program.

    .. math:: \theta^{(s)}_{t+1} = \theta^{(s)}_t - \eta_s \, \nabla_\theta L(\theta^{(s)}_t),
       \qquad \theta^{(s)}_0 = \theta_0, \quad s = 1, \dots, S

    The result equals ``jax.vmap(gradient_descent, in_axes=(None, None, 0, None))``
    but runs several times faster on CPU, because of how the sweep is laid out:

    * the step loop is outside and ``jax.vmap`` is inside it, around
      ``jax.value_and_grad(loss_fn)`` (not around the whole loop);
    * the sweep axis is the *last* (minor) axis of every parameter, so the
      update and the loss's elementwise work vectorise along contiguous memory;
    * on CPU the sweep runs in chunks of ``chunk_size`` members (``lax.map`` over
      chunks), so that every per-step array stays in cache.

    On the blog post's 3 x 2 regression (4,096 learning rates, 1,000 steps, 2-core CPU)
    this measured 5x to 15x the throughput of ``jax.vmap`` around the whole loop,
    depending on machine load (``python -m benchmarks.gd_sweep`` times the layouts).

    Args:
      loss_fn: ``loss_fn(params, *args) -> []``, a real scalar loss (static).
      params: :math:`\theta_0`, any pytree of arrays, shared by every member.
      learning_rates: ``[S]`` learning rates :math:`\eta_s` (traced).
      num_steps: :math:`T`, a positive Python int (static).
      *args: extra arguments for ``loss_fn``, shared by every member (traced).
      chunk_size: members per vectorised chunk. ``None`` picks it: 256 on CPU,
        the whole sweep at once on other backends. The result does not depend on it.
      unroll: ``lax.scan``'s ``unroll`` for the step loop.
      precision: as in :func:`gradient_descent` (default ``"highest"``).

    Returns:
      ``(params, losses)``: every leaf of ``params`` with a new leading axis of
      size ``S``, and ``losses`` of shape ``[S, num_steps]`` with
      ``losses[s, t]`` = :math:`L(\theta^{(s)}_t)`, the loss before update ``t``.
      Members are independent: a learning rate that diverges gives ``inf``/``nan``
      in its own row only. Differentiable like :func:`gradient_descent`.

    Example:
      >>> X = jnp.array([[1., 1.], [1., 2.], [1., 3.]]); y = jnp.array([1., 2., 3.])
      >>> def loss(theta):
      ...     return 0.5 * jnp.mean((X @ theta - y) ** 2)
      >>> theta, losses = gradient_descent_sweep(loss, jnp.zeros(2),
      ...                                        jnp.array([0.01, 0.1, 2.0]), 1000)
      >>> theta.shape, losses.shape
      ((3, 2), (3, 1000))
      >>> theta[1]
      Array([0.00..., 0.99...], dtype=float32)
      >>> bool(jnp.isfinite(losses[2, -1]))
      False
    """
    params, num_steps, unroll, precision = _checked_run_args(loss_fn, params, num_steps, args,
                                                             unroll, precision)
    lrs = _learning_rates(learning_rates, "learning_rates", 1,
                          "have rank 1 (one learning rate per sweep member)")
    check_nonempty(lrs, "learning_rates")
    size = lrs.shape[0]
    if chunk_size is None:
        chunk_size = _default_chunk_size(size)
    chunk_size = min(check_int(chunk_size, "chunk_size", 1,
                               static="static: it fixes the shape of a chunk"), size)
    num_chunks = -(-size // chunk_size)
    chunk_size = -(-size // num_chunks)  # as even as possible: less padding
    return _sweep(loss_fn, num_steps, unroll, num_chunks, chunk_size, precision, params, lrs,
                  args)


def _default_chunk_size(size: int) -> int:
    return _CPU_CHUNK_SIZE if jax.default_backend() == "cpu" else size


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _sweep(loss_fn, num_steps, unroll, num_chunks, chunk_size, precision, params, lrs, args):
    size = lrs.shape[0]
    padded = jnp.pad(lrs, (0, num_chunks * chunk_size - size))  # padding members: lr 0
    # vmap inside the step, around value_and_grad, with the sweep axis last (-1).
    value_and_grad = jax.vmap(jax.value_and_grad(loss_fn),
                              in_axes=(-1,) + (None,) * len(args), out_axes=(0, -1))

    def run_chunk(lr):  # lr: [chunk_size]
        theta = jax.tree.map(
            lambda p: jnp.broadcast_to(p[..., None], (*p.shape, chunk_size)), params)

        def step(theta, _):
            loss, grads = value_and_grad(theta, *args)
            return _descend(theta, grads, lr), loss

        theta, losses = lax.scan(step, theta, length=num_steps, unroll=unroll)
        return jax.tree.map(lambda p: jnp.moveaxis(p, -1, 0), theta), losses.T

    with matmul_context(precision):
        theta, losses = lax.map(run_chunk, padded.reshape(num_chunks, chunk_size))

    def unchunk(x):
        return x.reshape(num_chunks * chunk_size, *x.shape[2:])[:size]

    return jax.tree.map(unchunk, theta), unchunk(losses)


# ---------------------------------------------------------------------------- optax


def optimize(loss_fn: LossFn, params: PyTree, optimizer: optax.GradientTransformation,
             num_steps: int, *args: Any, unroll: int = 1,
             precision: str | None = CLASSICAL) -> tuple[PyTree, jax.Array]:
    r"""Full-batch training with an optax optimiser, compiled as one ``lax.scan``.

    .. math:: (u_t, s_{t+1}) = \mathrm{update}(\nabla_\theta L(\theta_t), s_t, \theta_t),
       \qquad \theta_{t+1} = \theta_t + u_t

    With ``optax.sgd(eta)`` this is :func:`gradient_descent`. To sweep a
    hyperparameter without recompiling, make it a traced value: build the
    optimiser inside the function you ``jax.vmap`` (``optax.sgd(lr)`` with a
    traced ``lr``) or use ``optax.inject_hyperparams``.

    Args:
      loss_fn: ``loss_fn(params, *args) -> []``, a real scalar loss (static).
      params: :math:`\theta_0`, any pytree of arrays.
      optimizer: an ``optax.GradientTransformation`` (static: the same object
        reuses the compiled program).
      num_steps: :math:`T`, a positive Python int (static).
      *args: extra arguments passed unchanged to ``loss_fn`` (traced).
      unroll: ``lax.scan``'s ``unroll``.
      precision: as in :func:`gradient_descent` (default ``"highest"``; pass
        ``None`` to train a neural network at JAX's faster default).

    Returns:
      ``(params, losses)`` as in :func:`gradient_descent`: :math:`\theta_T` and
      ``[num_steps]`` losses, ``losses[t]`` taken before update ``t``. Divergence
      gives ``inf``/``nan``, not an error.

    Example:
      >>> def loss(w):
      ...     return jnp.sum((w - 3.0) ** 2)
      >>> w, losses = optimize(loss, jnp.zeros(2), optax.adam(0.1), 500)
      >>> w
      Array([3.00..., 3.00...], dtype=float32)
    """
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "optimizer must be an optax.GradientTransformation (e.g. optax.sgd(0.1)), "
            f"got {type(optimizer).__name__}")
    params, num_steps, unroll, precision = _checked_run_args(loss_fn, params, num_steps, args,
                                                             unroll, precision)
    return _optimize(loss_fn, optimizer, num_steps, unroll, precision, params, args)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _optimize(loss_fn, optimizer, num_steps, unroll, precision, params, args):
    value_and_grad = jax.value_and_grad(loss_fn)

    def step(carry, _):
        theta, state = carry
        loss, grads = value_and_grad(theta, *args)
        updates, state = optimizer.update(grads, state, theta)
        return (optax.apply_updates(theta, updates), state), loss

    with matmul_context(precision):
        (theta, _), losses = lax.scan(step, (params, optimizer.init(params)),
                                      length=num_steps, unroll=unroll)
    return theta, losses


# --------------------------------------------------------------------- backpropagation


def _dense(X: jax.Array, W: jax.Array, b: jax.Array) -> jax.Array:
    """Pre-activations :math:`z = XW + b`, the product in float32 on every backend."""
    return jnp.matmul(X, W, precision=CLASSICAL) + b


def _check_dense(W: ArrayLike, b: ArrayLike, X: ArrayLike, y: ArrayLike
                 ) -> tuple[jax.Array, ...]:
    W, b, X, y = as_floats((W, "W"), (b, "b"), (X, "X"), (y, "y"))
    check_ndim(W, "W", 2)
    check_ndim(b, "b", 1)
    check_ndim(X, "X", 2)
    check_ndim(y, "y", 2)
    n_in, n_out = W.shape
    if b.shape != (n_out,):
        raise ValueError(f"b must have shape ({n_out},) to match W of shape {tuple(W.shape)}"
                         f" ([in, out]), got shape {tuple(b.shape)}")
    if X.shape[1] != n_in:
        raise ValueError(f"X must have shape [n, {n_in}] to match W of shape "
                         f"{tuple(W.shape)} ([in, out]), got shape {tuple(X.shape)}")
    check_nonempty(X, "X", axis=0)
    if y.shape != (X.shape[0], n_out):
        raise ValueError(f"y must have shape ({X.shape[0]}, {n_out}) (rows of X, outputs of "
                         f"W), got shape {tuple(y.shape)}")
    return W, b, X, y


def dense_sigmoid_mse(W: ArrayLike, b: ArrayLike, X: ArrayLike, y: ArrayLike) -> jax.Array:
    r"""Mean squared error of a dense layer with sigmoid activation.

    .. math:: z_j = \sum_i x_i w_{ij} + b_j, \qquad a_j = \sigma(z_j), \qquad
       L = \frac{1}{n\,k} \sum_{\text{rows}} \sum_j (a_j - y_j)^2

    The blog post's PyTorch model ``nn.Sequential(nn.Linear(in, k), nn.Sigmoid())``
    with ``nn.MSELoss()`` (mean over all ``n * k`` elements). ``W`` is
    ``[in, out]`` (``w_ij`` joins input ``i`` to output ``j``, Flax's kernel
    layout); a ``torch.nn.Linear`` weight is ``[out, in]``, i.e. ``W.T``.

    Args:
      W: ``[in, k]`` weights :math:`w_{ij}`.
      b: ``[k]`` biases.
      X: ``[n, in]`` inputs, one row per sample.
      y: ``[n, k]`` targets.

    Returns:
      ``[]`` the loss. Finite for finite inputs: the sigmoid saturates instead
      of overflowing, and its gradient there tends to 0 (vanishing gradient).

    Example:
      >>> float(dense_sigmoid_mse(jnp.zeros((2, 1)), jnp.zeros(1),
      ...                         jnp.array([[0., 0.], [1., 1.]]), jnp.array([[0.], [1.]])))
      0.25
    """
    W, b, X, y = _check_dense(W, b, X, y)
    return jnp.mean((jax.nn.sigmoid(_dense(X, W, b)) - y) ** 2)


def dense_sigmoid_mse_grads(W: ArrayLike, b: ArrayLike, X: ArrayLike, y: ArrayLike
                            ) -> tuple[jax.Array, jax.Array]:
    r"""Gradient of :func:`dense_sigmoid_mse` by the explicit chain rule (backpropagation).

    .. math:: \frac{\partial L}{\partial w_{ij}}
       = \frac{\partial L}{\partial a_j} \cdot \frac{\partial a_j}{\partial z_j}
         \cdot \frac{\partial z_j}{\partial w_{ij}},
       \qquad \frac{\partial L}{\partial a_j} = \frac{2 (a_j - y_j)}{n\,k}, \quad
       \frac{\partial a_j}{\partial z_j} = a_j (1 - a_j), \quad
       \frac{\partial z_j}{\partial w_{ij}} = x_i

    summed over the ``n`` samples (:math:`\partial z_j / \partial b_j = 1`). This
    is the backpropagation equation (the chain rule) written out for one layer; it equals
    ``jax.grad(dense_sigmoid_mse, argnums=(0, 1))``, which is the general path.

    Args:
      W: ``[in, k]`` weights (``[in, out]``; a torch Linear weight is ``W.T``).
      b: ``[k]`` biases.
      X: ``[n, in]`` inputs.
      y: ``[n, k]`` targets.

    Returns:
      ``(dW, db)`` of shapes ``[in, k]`` and ``[k]``. Always finite for finite
      inputs; where the sigmoid saturates (``|z|`` large) the factor
      :math:`a_j (1 - a_j)` and so the gradient go to 0.

    Example:
      >>> dW, db = dense_sigmoid_mse_grads(jnp.zeros((2, 1)), jnp.zeros(1),
      ...                                  jnp.array([[0., 0.], [1., 1.]]),
      ...                                  jnp.array([[0.], [1.]]))
      >>> dW.ravel(), db
      (Array([-0.125, -0.125], dtype=float32), Array([0.], dtype=float32))
    """
    W, b, X, y = _check_dense(W, b, X, y)
    z = _dense(X, W, b)                            # [n, k] pre-activations z_j
    a = jax.nn.sigmoid(z)                          # [n, k] activations a_j
    dL_da = 2.0 * (a - y) / y.size                 # dL/da_j of the mean squared error
    da_dz = a * (1.0 - a)                          # sigma'(z_j)
    dL_dz = dL_da * da_dz                          # the error signal delta_j
    dz_dw = X                                      # dz_j/dw_ij = x_i
    dW = jnp.matmul(dz_dw.T, dL_dz, precision=CLASSICAL)  # sum over samples of x_i delta_j
    db = jnp.sum(dL_dz, axis=0)                    # dz_j/db_j = 1
    return dW, db
