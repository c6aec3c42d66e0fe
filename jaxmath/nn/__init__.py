"""Neural-network functions and Flax modules: softmax, convolution, attention, transformers."""

from jaxmath.nn.attention import attention, attention_implementation, multi_head_attention
from jaxmath.nn.blockwise_attention import blockwise_attention
from jaxmath.nn.conv import conv2d, convolve
from jaxmath.nn.conv_layer import Conv2D
from jaxmath.nn.mha import MultiHeadAttention
from jaxmath.nn.pallas_attention import pallas_attention
from jaxmath.nn.softmax import log_softmax, softmax
from jaxmath.nn.transformer import (
    Transformer,
    TransformerBlock,
    TransformerLM,
    sinusoidal_positions,
)

__all__ = [
    "Conv2D",
    "MultiHeadAttention",
    "Transformer",
    "TransformerBlock",
    "TransformerLM",
    "attention",
    "attention_implementation",
    "blockwise_attention",
    "conv2d",
    "convolve",
    "log_softmax",
    "multi_head_attention",
    "pallas_attention",
    "sinusoidal_positions",
    "softmax",
]
