"""Transforms that make a trained model smaller or faster, applied from outside it: weight-only int8 and
group-wise int4 quantization of the linear layers (`apply_quantization`), int4 optionally calibrated on
text; low-rank factorisation of the blocks' linear layers, plain or whitened by calibration inputs
(`apply_low_rank`). Importing this package lets `models.registry.load_model` rebuild a quantized or
factorised model from its run directory."""
from lmforge.compress.int4 import DEFAULT_GROUP_SIZE, GROUP_SIZES, Int4Linear, int4_matmul
from lmforge.compress.int8 import Int8Linear, dequantize, int8_matmul, quantize_per_channel
from lmforge.compress.lowrank import (LOW_RANK_KEY, LowRankLinear, apply_low_rank, carry_low_rank, factorise,
                                      input_gram)
from lmforge.compress.quantize import (METHODS, QUANTIZATION_KEY, apply_quantization, linear_layers,
                                       quantization_of, rebuild_quantized)

__all__ = ["DEFAULT_GROUP_SIZE", "GROUP_SIZES", "Int4Linear", "int4_matmul", "Int8Linear", "dequantize",
           "int8_matmul", "quantize_per_channel", "METHODS", "QUANTIZATION_KEY", "apply_quantization",
           "linear_layers", "quantization_of", "rebuild_quantized", "LOW_RANK_KEY", "LowRankLinear", "apply_low_rank",
           "carry_low_rank", "factorise", "input_gram"]
