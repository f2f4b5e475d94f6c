#!/usr/bin/env python3
"""Turn a `qwen-vl-export` directory into the axmodel layout the stub NPU runs.

    scripts/pack_npu_stub.py ONNX_DIR OUT_DIR

One .axmodel per model (every shape group of a decoder layer in one file, as a compiled model
holds them), in the container format of test/npu_stub/python/axmodel_pack.py; the configs,
tokenizer and embedding table are symlinked. Run the result with scripts/with_npu_stub.sh and
``--backend axengine``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'test' / 'npu_stub' / 'python'))
from axmodel_pack import pack_model_dir  # noqa: E402


def main(argv=None) -> int:
    """Pack ONNX_DIR into OUT_DIR; print OUT_DIR."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('onnx_dir', help='a qwen-vl-export output directory')
    p.add_argument('out_dir', help='where the .axmodel files go (created)')
    p.add_argument('--float-io', choices=('bfloat16', 'float32'), default='bfloat16',
                   help='declared type of float tensors (bfloat16: as compiled for the board)')
    args = p.parse_args(argv)
    print(pack_model_dir(args.onnx_dir, args.out_dir, args.float_io))
    return 0


if __name__ == '__main__':
    sys.exit(main())
