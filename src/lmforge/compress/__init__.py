"""Transforms that make a trained model smaller or faster, applied from outside it: weight-only int8
quantization of the linear layers (`apply_quantization`). Importing this package lets
`models.registry.load_model` rebuild a quantized model from its run directory."""
from lmforge.compress.int8 import Int8Linear, dequantize, int8_matmul, quantize_per_channel
from lmforge.compress.quantize import (METHODS, QUANTIZATION_KEY, apply_quantization, linear_layers,
                                       quantization_of, rebuild_quantized)

__all__ = ["Int8Linear", "dequantize", "int8_matmul", "quantize_per_channel", "METHODS", "QUANTIZATION_KEY",
           "apply_quantization", "linear_layers", "quantization_of", "rebuild_quantized"]
