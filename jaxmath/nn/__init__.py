"""Neural-network functions: softmax, convolution and attention as pure JAX functions."""

from jaxmath.nn.attention import attention
from jaxmath.nn.conv import conv2d, convolve
from jaxmath.nn.softmax import log_softmax, softmax

__all__ = ["attention", "conv2d", "convolve", "log_softmax", "softmax"]
