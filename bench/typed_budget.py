"""How often each README typed-answer example completes within the default token budget.

For each example (the README's `choices`, `json_schema` and `regex` requests, ~/detect's box
list, and an unbounded schema for contrast) the same question is asked with ``--seeds``
sampled decodings at the default max_new_tokens (128, the node's parameter) and, as the
baseline measured in the same run, at a generous budget (``--generous``, bounded by the KV
length). An answer that the budget cut is ``success: false`` (vlm Result.problem); the figure
is the share of answers that are complete.

    .venv/bin/python3 bench/typed_budget.py [--model-dir DIR] [--seeds 20]

Without --model-dir: the tiny random-weight test model `make pytest` leaves in
build/test_models (random weights wander: a worst case for unbounded schemas; a real model
stops far sooner). Prints a Markdown table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common import REPO, bench_parser, demo_image_bgr, machine, machine_line

DEFAULT_BUDGET = 128
PEOPLE = {'type': 'object', 'properties': {'people': {'type': 'integer', 'minimum': 0,
                                                      'maximum': 50}},
          'required': ['people'], 'additionalProperties': False}
UNBOUNDED = {'type': 'object', 'properties': {'name': {'type': 'string'}}, 'required': ['name']}


def examples(pipe) -> list:
    """(name, prompt, constraint fields) of each example."""
    from qwen_vl_ros.vlm.grounding import box_schema, grounding_prompt
    return [
        ('choices yes/no', 'Is the door open?', dict(choices=('yes', 'no'))),
        ('json_schema people', 'How many people are in the room?',
         dict(json_schema=json.dumps(PEOPLE))),
        ('regex clock', 'What time does the clock show?', dict(regex='[0-2][0-9]:[0-5][0-9]')),
        ('~/detect boxes (person, cup)', grounding_prompt(['person', 'cup']),
         dict(json_schema=json.dumps(box_schema(['person', 'cup'], '', pipe.vision_size)))),
        ('unbounded: name without maxLength, no additionalProperties', 'Name what you see.',
         dict(json_schema=json.dumps(UNBOUNDED))),
    ]


def _fits(pipe, frame, prompt) -> bool:
    from qwen_vl_ros.vlm.errors import PromptTooLongError
    try:
        pipe.score([frame], prompt, [0])
    except PromptTooLongError:
        return False
    return True


def main() -> int:
    p = bench_parser(__doc__)
    p.add_argument('--model-dir', type=Path,
                   default=REPO / 'build' / 'test_models' / 'tiny_onnx_cli')
    p.add_argument('--seeds', type=int, default=20)
    p.add_argument('--generous', type=int, default=512)
    args = p.parse_args()
    import cv2

    from qwen_vl_ros.vlm import GenerationOptions, Pipeline
    if not args.model_dir.is_dir():
        print(f'no model at {args.model_dir}: run `make pytest` once, or give --model-dir',
              file=sys.stderr)
        return 2
    pipe = Pipeline.load(str(args.model_dir), threads=1, progress=lambda m: None)
    # the demo photo; text only where the tiny model's 320-token prefill has no room for it
    frame = cv2.cvtColor(demo_image_bgr(), cv2.COLOR_BGR2RGB)
    generous = min(args.generous, pipe.decoder.kv_len - pipe.max_prompt_tokens)
    rows, figures = [], {}
    for name, prompt, fields in examples(pipe):
        done = {}
        for budget in (DEFAULT_BUDGET, generous):
            complete = tokens = 0
            frames = [frame] if _fits(pipe, frame, prompt) else []
            for seed in range(args.seeds):
                r = pipe.describe(frames, prompt, GenerationOptions(
                    max_new_tokens=budget, greedy=False, temperature=1.0, top_k=0, top_p=1.0,
                    seed=seed, **fields))
                complete += not r.problem
                tokens += len(r.token_ids)
            done[budget] = (complete, tokens / args.seeds)
        (c, t), (cg, tg) = done[DEFAULT_BUDGET], done[generous]
        ratio = f'{c / cg:.2f}' if cg else 'n/a'
        name += '' if frames else ' (text only)'
        rows.append(f'| {name} | {c}/{args.seeds} | {t:.0f} | {cg}/{args.seeds} | {tg:.0f} | '
                    f'{ratio} |')
        figures[name] = {'default': c, 'generous': cg, 'seeds': args.seeds}
    print(f'model: {args.model_dir}; sampled (temperature 1, {args.seeds} seeds); '
          f'{machine_line(machine())}')
    print(f'| example | complete at max_new_tokens {DEFAULT_BUDGET} | mean tokens | '
          f'complete at {generous} (baseline) | mean tokens | ratio |')
    print('|---|---|---|---|---|---|')
    print('\n'.join(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
