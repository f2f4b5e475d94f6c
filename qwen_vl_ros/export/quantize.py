"""8-bit weights, float activations: MatMul -> onnxruntime's MatMulNBits (com.microsoft).

The board runs Qwen2.5-VL-3B as a w8a16 build (8-bit weights, 16-bit float activations). The PC
stand-in of that is onnxruntime's MatMulNBits with bits=8: every MatMul whose B is a constant
weight (q/k/v/o projections, the MLP, lm_head) keeps its weight as symmetric 8-bit blocks of
BLOCK_SIZE input rows, each with a float32 scale, and multiplies with float32 activations
(accuracy level ACCURACY_LEVEL). onnxruntime.quantization does the quantizing (its
MatMulNBitsQuantizer with the default round-to-nearest algorithm); nothing here re-implements it.
Attention's activation x activation MatMuls have no constant B and stay float32.
"""
import logging

import onnx

# Blocks of 128 input channels per scale: onnxruntime's default and a common w8 granularity.
BLOCK_SIZE = 128
# MatMulNBits' accuracy_level 1 = float32 compute: activations are never quantized (w8a32);
# level 4 would quantize them to int8 per block (w8a8), which the board's w8a16 does not do.
ACCURACY_LEVEL = 1


def quantize_matmul_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return `model` (changed in place) with every constant-weight MatMul as 8-bit MatMulNBits.

    Raises ImportError when onnxruntime lacks its quantization tools (onnxruntime >= 1.22 has
    8-bit MatMulNBits on the CPU).
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )
    config = DefaultWeightOnlyQuantConfig(block_size=BLOCK_SIZE, is_symmetric=True,
                                          accuracy_level=ACCURACY_LEVEL, bits=8)
    quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=BLOCK_SIZE, is_symmetric=True,
                                     accuracy_level=ACCURACY_LEVEL, algo_config=config)
    # The quantizer logs one INFO line per MatMul: thousands at full size.
    logging.getLogger('onnxruntime.quantization').setLevel(logging.WARNING)
    quantizer.process()
    return quantizer.model.model
