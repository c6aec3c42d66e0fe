"""Diffusion models: the forward (noising) process."""

from jaxmath.diffusion.forward import forward_diffuse

__all__ = ["forward_diffuse"]
