"""qwen-vl-describe: one description from the shell, without a ROS graph.

    qwen-vl-describe --model-dir DIR --image a.jpg [--image b.jpg ...] [--prompt TEXT] [--json]
                     [--follow-up TEXT ...]

Several images are one video (in the order given). Each --follow-up is a further question about
the same images, answered after the first one; it reuses their vision features (and, on a
chunked-prefill build, the KV rows of the common prompt prefix).

--stream prints the text as it is generated. With --json the output is JSON Lines: one
{"delta": "..."} object per piece of text as it comes, then the question's result object (the
one --json prints without --stream); with --follow-up, the same again for each question. The
deltas of a question join to its result's "text". Options that the chosen way of running would
not use (e.g. --stream with --bag or --detect) are refused, never ignored.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ..image_msg import decode_compressed
from ..vlm import GenerationOptions, ImageError, Pipeline, VLMError
from ..vlm.constrain import grammar_for
from ..vlm.prompt import DEFAULT_PROMPT, keep_torch_out
from ..vlm.runtime import BACKENDS
from ..vlm.runtime.npu_choice import NPU_PROVIDERS
from ..vlm.vision import RESIZE_MODES
from .combinations import UsageError, check_combinations



def add_model_args(p: argparse.ArgumentParser) -> None:
    """Add the options shared by every command that loads a model."""
    p.add_argument('--model-dir', required=True, help='axmodel or exported ONNX model directory')
    p.add_argument('--tokenizer-dir', help='tokenizer directory (released layout)')
    p.add_argument('--backend', choices=BACKENDS, default='auto')
    p.add_argument('--provider', action='append', dest='providers',
                   help='onnxruntime execution provider (repeatable)')
    p.add_argument('--npu-provider', choices=NPU_PROVIDERS, default='auto',
                   help="axengine: pyaxengine's provider, the board's NPU "
                   "(AxEngineExecutionProvider) or an M.2 card (AXCLRTExecutionProvider); "
                   'auto = as pyaxengine picks')
    p.add_argument('--npu-device', type=int, default=0,
                   help='axengine on M.2 cards: the card index (0 = the first)')
    p.add_argument('--threads', type=int, default=0, help='onnxruntime intra-op threads')
    p.add_argument('--system-prompt', default='', help="system prompt ('' = the template's)")
    p.add_argument('--resize', choices=RESIZE_MODES, default='stretch')
    p.add_argument('--bit-depth', type=int, default=0,
                   help='bits 16-bit images really hold (12 for a 12-bit sensor); 0 = auto')


def add_generation_args(p: argparse.ArgumentParser) -> None:
    """Add sampling options; unset ones come from the model's generation_config.json."""
    p.add_argument('--prompt', default=DEFAULT_PROMPT)
    p.add_argument('--max-new-tokens', type=int, default=128)
    p.add_argument('--greedy', action='store_true', help='argmax decoding, no sampling')
    p.add_argument('--temperature', type=float)
    p.add_argument('--top-k', type=int)
    p.add_argument('--top-p', type=float)
    p.add_argument('--repetition-penalty', type=float)
    p.add_argument('--seed', type=int)
    p.add_argument('--second-per-grid-t', type=float, default=1.0,
                   help='video: seconds one pair of frames spans (rope temporal step)')
    typed = p.add_mutually_exclusive_group()
    typed.add_argument('--choices', type=split_choices,
                       help='the answer is exactly one of these comma-separated strings '
                            '(e.g. yes,no; write \\, for a comma inside one)')
    typed.add_argument('--json-schema', type=read_json_schema,
                       help='the answer is JSON valid against this JSON Schema (a file or '
                            'the schema text)')
    typed.add_argument('--regex', help='the answer fully matches this regex (Rust syntax)')


def split_choices(text: str) -> tuple:
    r"""Return 'yes,no' as ('yes', 'no'); a backslash-comma is a comma inside a choice."""
    parts = [p.replace('\0', ',') for p in text.replace('\\,', '\0').split(',')]
    return tuple(p.strip() for p in parts if p.strip())


def read_json_schema(text: str) -> str:
    """--json-schema: the text of a file when ``text`` names one, else ``text`` itself."""
    if not text.lstrip().startswith('{') and os.path.isfile(text):
        with open(text, encoding='utf-8') as f:
            return f.read()
    return text


def load_pipeline(args, progress=None) -> Pipeline:
    """Load the model the shared options name."""
    return Pipeline.load(args.model_dir, args.tokenizer_dir, args.backend, args.providers,
                         threads=args.threads, system_prompt=args.system_prompt,
                         resize=args.resize, progress=progress,
                         npu_provider=args.npu_provider, npu_device=args.npu_device)


def generation_options(args) -> GenerationOptions:
    """GenerationOptions from the shared sampling options."""
    return GenerationOptions(
        max_new_tokens=args.max_new_tokens, greedy=True if args.greedy else None,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, seed=args.seed,
        second_per_grid_t=args.second_per_grid_t, choices=getattr(args, 'choices', None),
        json_schema=getattr(args, 'json_schema', None), regex=getattr(args, 'regex', None))


def read_rgb(path: str, bit_depth: int = 0):
    """Read an image file as HxWx3 uint8 RGB.

    Decoded by image_msg.decode_compressed, the node's decoder for CompressedImage, so that a
    file and the same bytes on the topic are accepted or refused alike. Raises ImageError.
    """
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise ImageError(f'cannot read image {path!r}: {e.strerror or e}') from None
    try:
        return decode_compressed(data, '', bit_depth=bit_depth)
    except ImageError as e:
        raise ImageError(f'{path}: {e}') from None


def result_dict(result, **extra) -> dict:
    """Return the JSON form of a Result (what --json prints and bag annotation writes)."""
    return dict(extra, text=result.text, token_ids=result.token_ids,
                prompt_tokens=result.prompt_tokens, generated_tokens=len(result.token_ids),
                finish_reason=result.finish_reason,
                timings_ms={k: round(v, 3) for k, v in result.timings_ms.items()},
                tokens_per_second=round(result.tokens_per_second, 3),
                choice_index=result.choice_index,
                success=not result.problem, message=result.problem)


def build_parser() -> argparse.ArgumentParser:
    """Build the command line of qwen-vl-describe."""
    p = argparse.ArgumentParser(prog='qwen-vl-describe', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_generation_args(p)
    p.add_argument('--image', action='append', default=[],
                   help='image file; repeat for a video (frames in order); without --image '
                        'and --bag the question is asked about no image (text only)')
    p.add_argument('--bag', help='annotate a rosbag2 recording instead of image files')
    p.add_argument('--topic', help='--bag: the Image or CompressedImage topic')
    p.add_argument('--every', type=float, help='--bag: seconds between frames (default 1)')
    p.add_argument('--out', help='--bag: JSONL file to write (default: stdout)')
    p.add_argument('--json', action='store_true', help='print one JSON object')
    p.add_argument('--stream', action='store_true',
                   help='print text as it is generated; with --json: one {"delta": ...} line '
                        'per piece, then the result object (JSON Lines)')
    p.add_argument('--detect', type=split_choices, metavar='LABELS',
                   help='find these comma-separated objects in the one --image: prints the '
                        'boxes (source pixels) as JSON, as ~/detect answers')
    p.add_argument('--refer', default='', metavar='EXPRESSION',
                   help='with or instead of --detect: a referring expression to locate')
    p.add_argument('--follow-up', action='append', default=[], metavar='TEXT',
                   help='a further question about the same images (repeatable); with --json '
                        'one JSON object per question, one per line')
    return p


def check_options(args) -> None:
    """Raise VLMError (OptionsError) for an option value nothing could be served with.

    Called before anything loads, for every way of running (image, --detect, --bag).
    """
    from ..vlm.errors import OptionsError
    generation_options(args).check()
    if args.threads < 0:
        raise OptionsError(f'--threads must be >= 0 (0 = onnxruntime default), got '
                           f'{args.threads}')
    if args.bit_depth and not 8 <= args.bit_depth <= 16:
        raise OptionsError(f'--bit-depth: bit_depth must be 0 (auto) or 8..16, got '
                           f'{args.bit_depth}')
    if args.every is not None and not args.every >= 0:
        raise OptionsError(f'--every must be >= 0 (0 = every frame), got {args.every}')


def not_an_answer(result) -> int:
    """Say on stderr why a typed answer is not one (Result.problem); return the exit code 1."""
    print(f'qwen-vl-describe: error: {result.problem} (partial answer: {result.text!r})',
          file=sys.stderr, flush=True)
    return 1


def error_line(error: BaseException) -> str:
    """One line for any error: a VLMError's own message; others with their class name."""
    text = ' '.join(str(error).split())
    if isinstance(error, (VLMError, UsageError)):
        return text or type(error).__name__
    return f'{type(error).__name__}: {text}' if text else type(error).__name__


def detect_main(args) -> int:
    """--detect / --refer: one image in, its boxes (source pixels) out, one JSON object."""
    from ..vlm.grounding import box_schema, detect, grounding_prompt
    if len(args.image) != 1:
        raise VLMError('--detect / --refer take exactly one --image')
    frame = read_rgb(args.image[0], args.bit_depth)
    grounding_prompt(args.detect or (), args.refer)        # refuse before loading
    grammar_for(json_schema=box_schema(args.detect or (), args.refer))
    pipe = load_pipeline(args, progress=lambda m: print(m, file=sys.stderr))
    found = detect(pipe, frame, args.detect or (), args.refer, generation_options(args))
    print(json.dumps({
        'detections': [{'label': d.label, 'box': [round(v, 2) for v in d.box],
                        'score': round(d.score, 6), 'input_box': list(d.input_box)}
                       for d in found.detections],
        'image_size': [int(frame.shape[1]), int(frame.shape[0])],
        'text': found.text, 'complete': found.complete, 'notes': found.notes,
        **{k: v for k, v in result_dict(found.result).items() if k != 'text'}},
        ensure_ascii=False))
    return not_an_answer(found.result) if found.result.problem else 0


def main(argv=None) -> int:
    """Entry point of qwen-vl-describe: exit 0, or 2 with one ``error:`` line for any failure.

    1 when a typed answer (or --detect's box list) was cut by the token budget: it is not an
    answer (``success: false`` and ``message`` in --json; an ``error:`` line on stderr). With
    ``--bag``: 1 when frames were selected but none could be described.
    """
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except Exception as e:  # any failure (a VLMError or a bug) is one line and exit code 2
        logging.getLogger('qwen_vl_ros').debug('qwen-vl-describe failed', exc_info=True)
        print(f'qwen-vl-describe: error: {error_line(e)}', file=sys.stderr, flush=True)
        return 2


def _run(args) -> int:
    keep_torch_out()
    logging.basicConfig(level=logging.INFO, format='%(message)s', stream=sys.stderr)
    check_combinations(args)       # UsageError: nothing given is ignored silently
    check_options(args)            # OptionsError: nothing loads for what cannot be served
    if args.bag:
        from .annotate_bag import annotate_bag
        return annotate_bag(args)
    if args.detect or args.refer:
        return detect_main(args)
    if not args.image and not args.prompt:
        raise VLMError('give --image FILE and/or --prompt TEXT')
    frames = [read_rgb(p, args.bit_depth) for p in args.image]
    options = generation_options(args)
    grammar_for(options.choices, options.json_schema, options.regex)  # refuse before loading
    pipe = load_pipeline(args, progress=lambda m: print(m, file=sys.stderr))

    def on_text(piece):
        if args.json:   # JSON Lines: a reader tells a delta from a result by its keys
            print(json.dumps({'delta': piece}, ensure_ascii=False), flush=True)
        else:
            print(piece, end='', flush=True)

    code = 0
    for prompt in [args.prompt] + args.follow_up:
        result = pipe.describe(frames, prompt, options,
                               on_text=on_text if args.stream else None)
        if args.json:
            extra = {} if not args.follow_up else dict(
                prompt=prompt, vision_cached=result.vision_cached,
                reused_prompt_tokens=result.reused_prompt_tokens)
            print(json.dumps(result_dict(result, **extra), ensure_ascii=False), flush=True)
        elif args.stream:
            print(flush=True)
        elif not result.problem:    # a cut typed answer is not printed as if it were one
            print(result.text, flush=True)
        if result.problem:
            code = not_an_answer(result)
    return code


if __name__ == '__main__':
    sys.exit(main())
