"""The run layer: the machinery that runs experiments, kept apart from the equations.

The equations (``jaxmath.probability``, ``linalg``, ``optim``, ``nn``, ``diffusion``, ...)
are pure functions and import nothing from here. This package holds what turns them into
runs on disk, one concept per module:

=====================  ======================================================================
:mod:`~.cli`           ``jaxmath run`` / ``jaxmath list`` (also ``python -m jaxmath``); loads
                       an experiment module from the file its config names
:mod:`~.startup`       before the first JAX computation: join a multi-process job
                       (:func:`~.startup.init_distributed`), expose N CPU devices
:mod:`~.config`        ``configs/<name>.py`` files, variants and ``--config.a.b=value``
                       overrides
:mod:`~.loop`          :func:`~.loop.train_loop`: a resumable training loop (progress,
                       metrics, held-out evaluation, latest and best checkpoints, profiles)
:mod:`~.steps`         the loop's compiled step: one call per update or a ``lax.scan``
:mod:`~.progress`      the loop's progress bar or lines
:mod:`~.best`          the best state by an evaluation metric (``checkpoints_best/``)
:mod:`~.checkpoint`    :class:`~.checkpoint.Checkpointer` (orbax)
:mod:`~.throughput`    steps/s, examples/s, FLOP/s and MFU of a run (the loop's rows and
                       progress line)
:mod:`~.files`         atomic file writes and ``metrics.jsonl`` (:class:`~.files.MetricsLog`)
:mod:`~.report`        ``summary.json``, plots and ``report.md``
:mod:`~.record`        the reproducibility record in ``config.json`` (commit, versions,
                       devices, seeds, command) behind ``jaxmath run --rerun``
:mod:`~.compare`       ``jaxmath compare``: runs and sweep members overlaid in one plot and
                       tabulated
:mod:`~.writers`       the rows also to TensorBoard (``workdir/tensorboard``) and W&B, on a
                       background thread (:func:`~.writers.from_config`)
:mod:`~.tensorboard`   TensorBoard event files, written without TensorFlow
:mod:`~.sweep`         hyperparameter sweeps as one compiled, vmapped, sharded program
                       (``jm.sweep``)
:mod:`~.sweep_train`   :func:`~.sweep_train.train_sweep`: sweeps of training runs that
                       resume mid-chunk after a kill and mark diverged members (their
                       progress files: :mod:`jaxmath.run.sweep_progress`)
:mod:`~.datasets`      toy 2-D datasets as keyed, jit-able samplers (``jm.datasets``)
:mod:`~.tour`          the blog post's examples evaluated with jaxmath beside NumPy
                       (``make tour``)
=====================  ======================================================================

Import what you need from its module, e.g. ``from jaxmath.run.loop import train_loop``;
this package imports none of them itself, so ``import jaxmath`` (which re-exports
``sweep`` and ``datasets``) does not load orbax or the command line.

A run writes into its workdir ``config.json``, ``metrics.jsonl``, ``checkpoints/``,
``summary.json``, ``plots/*.png`` and ``report.md``. Every file is written atomically,
so a run killed at any moment resumes from its last checkpoint and ends bit-identical to
an uninterrupted one (on CPU).
"""
