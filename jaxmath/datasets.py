"""The former path of :mod:`jaxmath.run.datasets` (the toy datasets belong to the run layer).

Kept only while ``tests/test_diffusion_model.py`` still imports ``jaxmath.datasets``;
new code imports :mod:`jaxmath.run.datasets` or uses ``jm.datasets``.
"""

from jaxmath.run.datasets import TOY_2D, eight_gaussians, gaussian_mixture, swiss_roll, two_moons

__all__ = ["TOY_2D", "eight_gaussians", "gaussian_mixture", "swiss_roll", "two_moons"]
