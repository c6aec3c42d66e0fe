"""jaxmath's experiments: one module each, with ``run(config, workdir) -> summary``."""
