"""8-bit weights: MatMul -> onnxruntime's MatMulNBits (com.microsoft), bits=8.

The board runs Qwen2.5-VL-3B as a w8a16 build (8-bit weights, 16-bit float activations). The PC
stand-in of that is onnxruntime's MatMulNBits with bits=8: every MatMul whose B is a constant
weight (q/k/v/o projections, the MLP, lm_head) keeps its weight as symmetric 8-bit blocks of
BLOCK_SIZE input rows, each with a float32 scale. onnxruntime.quantization does the quantizing
(its MatMulNBitsQuantizer with the default round-to-nearest algorithm); nothing here
re-implements it. Attention's activation x activation MatMuls have no constant B and stay
float32. The vision tower's Linear layers come out of torch as Gemm (2-D input), which the
quantizer does not take: `gemm_to_matmul` turns each into MatMul (+ Add for the bias) first.

Where this differs from the board: the multiply. onnxruntime (1.22-1.32) has a fast x86 kernel
for 8-bit weights only at accuracy_level 4, which quantizes each BLOCK_SIZE block of the
activation row to int8 with its own float scale at run time (dynamic w8a8); at level 1
(float32 activations, w8a32) it dequantizes the whole weight on every call. Measured on one
real-size decoder layer, 1-token decode, 2 cores (onnxruntime 1.32): level 1 272 ms, level 4
5.1 ms with pre-packed weights (257 ms without), output cosine vs float32 0.9999 (level 1:
0.99997). A 3.75 B model at level 1 decoded 10.5 s/token, 14x slower than transformers float32,
so level 4 it is; the whole model's agreement with float32 is measured by `make fullsize`
(bench/FULLSIZE.md). Pre-packing is what makes level 4 fast: runtime/onnx.py keeps one packed
copy per layer, the decode group's; the prefill groups read the unpacked 8-bit file, which
onnxruntime dequantizes per call and multiplies in float32 (w8a32: prefill is compute-bound).
"""
import logging

import onnx
from onnx import helper, numpy_helper

# Blocks of 128 input channels per scale: onnxruntime's default and a common w8 granularity.
BLOCK_SIZE = 128
# MatMulNBits' accuracy_level 4: int8 compute, activations quantized per block at run time
# (the only fast 8-bit kernel onnxruntime has on x86; see above).
ACCURACY_LEVEL = 4


def quantize_matmul_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return `model` (changed in place) with every constant-weight MatMul as 8-bit MatMulNBits.

    Gemms with a stored weight become MatMuls first (`gemm_to_matmul`).

    Raises ImportError when onnxruntime lacks its quantization tools (onnxruntime >= 1.22 has
    8-bit MatMulNBits on the CPU).
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )
    config = DefaultWeightOnlyQuantConfig(block_size=BLOCK_SIZE, is_symmetric=True,
                                          accuracy_level=ACCURACY_LEVEL, bits=8)
    gemm_to_matmul(model)
    quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=BLOCK_SIZE, is_symmetric=True,
                                     accuracy_level=ACCURACY_LEVEL, algo_config=config)
    # The quantizer logs one INFO line per MatMul: thousands at full size.
    logging.getLogger('onnxruntime.quantization').setLevel(logging.WARNING)
    quantizer.process()
    return quantizer.model.model


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite each Gemm with a stored weight B as MatMul(A, B or B^T) + Add(C); return how many.

    Gemm (ONNX operator spec): Y = alpha * A' B' + beta * C with A' = A or A^T (transA), B' = B or
    B^T (transB). Only alpha = beta = 1 and transA = 0 are rewritten (what torch exports for
    nn.Linear: transB = 1); others are left as they are. MatMul's B is (in, out), as the
    quantizer wants it: a transB weight is stored transposed.
    """
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    rewritten, nodes = 0, []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != 'Gemm' or node.input[1] not in weights
                or attrs.get('alpha', 1.0) != 1.0 or attrs.get('beta', 1.0) != 1.0
                or attrs.get('transA', 0)):
            nodes.append(node)
            continue
        name = node.input[1]
        if attrs.get('transB', 0):
            # B^T replaces B in place when this Gemm is its only reader (one copy at a time:
            # the vision tower is 2.7 GB of float32), else sits beside it
            b = numpy_helper.to_array(weights[name]).T.copy()
            if readers[name] > 1:
                name = f'{name}_t'
                graph.initializer.append(numpy_helper.from_array(b, name))
            else:
                weights[name].CopyFrom(numpy_helper.from_array(b, name))
            del b
        out = node.output[0]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else ''
        product = f'{out}_matmul' if bias else out
        nodes.append(helper.make_node('MatMul', [node.input[0], name], [product],
                                      name=f'{node.name}_matmul'))
        if bias:
            nodes.append(helper.make_node('Add', [product, bias], [out], name=f'{node.name}_bias'))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten
