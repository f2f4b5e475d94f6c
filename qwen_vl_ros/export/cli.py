"""qwen-vl-export: a Hugging Face Qwen2.5-VL checkpoint -> ONNX stand-ins of the AX650N models.

Usage: qwen-vl-export --hf-dir DIR --out DIR [--image-size 448 | --image-size 280x196]
[--prefill-len 320] [--kv-len 1023] [--video] [--prefill-history H1 H2 ...]
[--embeddings npy|bf16] [--weights float32|int8]
"""
import argparse
import sys

from .files import EMBEDDING_KINDS

IMAGE_DEFAULTS = {'image_size': (448, 448), 'prefill_len': 320}
VIDEO_DEFAULTS = {'image_size': (308, 308), 'prefill_len': 512}


def parse_size(text: str) -> tuple[int, int]:
    """'448' -> (448, 448); '280x196' -> (280, 196) as (H, W)."""
    try:
        parts = [int(p) for p in text.lower().split('x')]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f'image size {text!r} is not N or HxW')
    return parts[0], parts[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='qwen-vl-export', description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--hf-dir', required=True,
                        help='Hugging Face Qwen2.5-VL checkpoint directory')
    parser.add_argument('--out', required=True, help='output model directory')
    parser.add_argument('--image-size', type=parse_size, default=None,
                        help='vision input size, N or HxW, multiples of 28 '
                             '(default 448, video 308)')
    parser.add_argument('--prefill-len', type=int, default=None,
                        help='prefill rows P, or chunk size C with --prefill-history '
                             '(default 320, video 512)')
    parser.add_argument('--kv-len', type=int, default=1023, help='decode KV cache rows N')
    parser.add_argument('--video', action='store_true',
                        help='video build: defaults 308x308 frames and prefill 512')
    parser.add_argument('--prefill-history', type=int, nargs='+', default=(), metavar='H',
                        help='chunked build: one prefill group per history size H')
    parser.add_argument('--embeddings', choices=EMBEDDING_KINDS, default='npy',
                        help='float32 .npy (demo layout) or raw bf16 .bin (released layout)')
    parser.add_argument('--weights', choices=('float32', 'int8'), default='float32',
                        help='MatMul weights of the decoder, lm_head and vision tower: '
                             'float32, or int8 (8-bit blocks, like the board\'s w8a16 build: '
                             'about a quarter of the memory; README: Run on a PC)')
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    defaults = VIDEO_DEFAULTS if args.video else IMAGE_DEFAULTS
    try:
        from .exporter import ExportOptions, export_checkpoint
    except ImportError as exc:
        sys.exit(f'qwen-vl-export needs torch and onnx (pip install .[export]): {exc}')
    try:
        options = ExportOptions(
            image_size=args.image_size or defaults['image_size'],
            prefill_len=args.prefill_len or defaults['prefill_len'],
            kv_len=args.kv_len,
            histories=tuple(args.prefill_history),
            embeddings=args.embeddings,
            weights=args.weights)
        export_checkpoint(args.hf_dir, args.out, options)
    except (ValueError, OSError) as exc:
        sys.exit(f'qwen-vl-export: {exc}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
