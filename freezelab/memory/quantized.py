"""Facts of a quantized base: what a 4- or 8-bit bitsandbytes weight stores, and what its matmuls allocate.

Read from bitsandbytes 0.49 (`functional.quantize_4bit`, `quantize_blockwise`, `autograd.MatMul4Bit`,
`nn.Int8Params`, `autograd.MatMul8bitLt`); modelled, not measured (no GPU run of a quantized base exists
here), and identical in the analytic and the simulated estimate:

* 4-bit (nf4 / fp4): the packed weight, 0.5 byte per element (`(n + 1) // 2` uint8); one fp32 absmax per
  block of 64 elements; the 16-entry fp32 code of the data type. With double quantization the absmax
  is stored as uint8 (one byte per block) around an fp32 offset, with one fp32 absmax per 256 blocks and
  a copy of the 256-entry fp32 dynamic code.
* 8-bit (LLM.int8): the int8 weight, 1 byte per element, and one fp32 scale per output row (SCB).
* The matmuls dequantize the weight into an out x in transient in the layer's dtype, in forward and
  again in backward when the input needs a gradient (bitsandbytes 0.50's fused 4-bit GEMM skips the
  forward one); nothing but the packed weight is saved for backward. LLM.int8's forward (input cast to
  fp16, int8 quantized, int32 product) is counted as the same single transient: an approximation.

Every tensor is rounded to the allocator's 512-byte blocks.
"""

from __future__ import annotations

import math

from freezelab.lora import Quantization, QuantBits
from freezelab.memory.cuda_facts import rounded

BLOCKSIZE_4BIT = 64          # Params4bit / Linear4bit default blocksize
NESTED_BLOCKSIZE = 256       # quantize_blockwise(absmax - offset, blocksize=256)
CODE_4BIT = 16               # get_4bit_type: 16 fp32 values (nf4 / fp4)
DYNAMIC_CODE = 256           # create_dynamic_map(): 256 fp32 values, copied into each nested state


def storage_tensors(numel: int, rows: int, quant: Quantization) -> list[tuple[int, int]]:
    """(elements, bytes per element) of every tensor one quantized weight of `numel` elements and `rows`
    output rows keeps."""
    if quant.bits == QuantBits.INT8:
        return [(numel, 1), (rows, 4)]
    blocks = math.ceil(numel / BLOCKSIZE_4BIT)
    packed = [((numel + 1) // 2, 1), (CODE_4BIT, 4)]
    if not quant.double_quant:
        return [*packed, (blocks, 4)]
    return [*packed, (blocks, 1), (math.ceil(blocks / NESTED_BLOCKSIZE), 4), (DYNAMIC_CODE, 4), (1, 4)]


def storage_bytes(numel: int, rows: int, quant: Quantization) -> int:
    return sum(rounded(n * e) for n, e in storage_tensors(numel, rows, quant))


def dequant_transient(numel: int, elem: int) -> int:
    """The dequantized weight a matmul allocates, in the layer's dtype (`elem` bytes per element)."""
    return rounded(numel * elem)
