"""Check that this Python can run jaxmath's suite on a GPU, without installing anything.

    python3 -m benchmarks.gpu_check      # what `make test-gpu` and `make bench-gpu` run first

Exits 1 with what is missing: JAX without a GPU backend, or a package of the test
suite (the `dev` extras of pyproject.toml, JAX itself excepted).
"""

from __future__ import annotations

import importlib.util
import sys

# import name -> the pip requirement that provides it (pyproject.toml's runtime and dev extras)
NEEDED = {"flax": "flax", "optax": "optax", "chex": "chex", "ml_collections": "ml-collections",
          "orbax.checkpoint": "orbax-checkpoint", "tqdm": "tqdm", "matplotlib": "matplotlib",
          "sklearn": "scikit-learn", "scipy": "scipy", "pytest": "pytest",
          "xdist": "pytest-xdist", "hypothesis": "hypothesis", "torch": "torch",
          "diffusers": "diffusers"}


def missing() -> list[str]:
    return [req for name, req in NEEDED.items() if importlib.util.find_spec(name) is None]


def main() -> int:
    import jax

    problems = []
    if jax.default_backend() != "gpu":
        problems.append(f"JAX {jax.__version__} runs on {jax.default_backend()!r}, not a GPU "
                        f"(devices: {jax.devices()}); install a CUDA build, e.g. "
                        f"pip install 'jaxmath[cuda]'")
    absent = missing()
    if absent:
        problems.append("missing packages: " + " ".join(absent) + " (pip install them; "
                        "JAX is left as it is)")
    for problem in problems:
        print(f"gpu_check: {problem}", file=sys.stderr)
    if not problems:
        print(f"gpu_check: JAX {jax.__version__} on {jax.devices()[0].device_kind}, "
              f"{len(jax.devices())} device(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
