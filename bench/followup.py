"""Bench 7: a follow-up question about the same frame against a fresh question.

    python bench/followup.py --chunked-dir REAL/onnx_chunked --onnx-dir REAL/onnx [--runs 3]

Models: bench/standins.py at the real shapes (36 layers, hidden 2048, KV 1023, vision 448x448),
as a chunked-prefill build (chunk 128, histories 128..512, AXERA's chunk_prefill_512) and as the
seed's single-prefill build (p320). One image (AXERA's demo photo), the real tokenizer and chat
template when ../shared is there.

- fresh: "Describe this image." with nothing kept (vision cache and KV prefix emptied);
- follow-up: "Is there a person in the picture?" right after it, about the same frame.

Counted for each, up to the first token: runtime calls per model and shape group, layer-steps
(one decoder layer run on one prefill chunk), host wall time on the stand-ins (whose graphs only
move data). The follow-up must give the same tokens as the same question asked fresh. Turned
into an ESTIMATED board time with the model card's stage times (CONTRACT.md): chunked build
(M.2 card, 280-token prompt): vision 788 ms per call, (1964 - 788) ms / (3 chunks x 36 layers)
per layer-step; p320 build (AX650N board): vision 780 ms, (2857 - 780) ms / 36 layers per
layer-step.

Target (chunked build): the follow-up needs at most 1/3 of the fresh question's layer-steps
to its first token, and no vision call.
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    bench_parser, demo_image_bgr, machine, machine_line, median, verdict, write_result)

from qwen_vl_ros.vlm import GenerationOptions, Pipeline  # noqa: E402

FRESH = 'Describe this image.'
FOLLOW = 'Is there a person in the picture?'
OPTS = GenerationOptions(max_new_tokens=8, greedy=True, repetition_penalty=1.0)
# Model card stage times (CONTRACT.md "Published performance"), ms: an estimate, not a measure.
CARD = {'chunked_vision_call': 788.0,                      # M.2 card, chunked build
        'chunked_layer_step': (1964.0 - 788.0) / (3 * 36),
        'single_vision_call': 780.0,                       # AX650N board, p320 build
        'single_layer_step': (2857.0 - 780.0) / 36}


class CallCounter:
    """Count the runtime calls of a pipeline by (model, shape group), and their wall time."""

    def __init__(self, pipe: Pipeline):
        self.counts = collections.Counter()
        self.inside = 0.0
        dec = pipe.decoder
        for role, sess in [('vision', pipe.vision), ('post', dec.post)] + \
                [('layer', layer) for layer in dec.layers]:
            real = sess.run

            def spy(feed, group=0, _real=real, _role=role):
                self.counts[(_role, group)] += 1
                t0 = time.perf_counter()
                try:
                    return _real(feed, group)
                finally:
                    self.inside += time.perf_counter() - t0
            sess.run = spy
        self._decode_group = dec.decode_group

    def take(self) -> tuple:
        """Return (counts, seconds inside the runtime) since the last take."""
        out = (self.counts, self.inside)
        self.counts, self.inside = collections.Counter(), 0.0
        return out

    def to_first_token(self, counts) -> dict:
        """Count the calls before the first token: vision, prefill groups, one post."""
        return {f'{role} g{g}': n for (role, g), n in sorted(counts.items())
                if not (role == 'layer' and g == self._decode_group)}


def measure(model_dir: Path, image, runs: int) -> dict:
    """Fresh vs follow-up on one build: counts to first token, host times, token identity."""
    pipe = Pipeline.load(str(model_dir), backend='onnxruntime', threads=1,
                         progress=lambda m: None)
    calls = CallCounter(pipe)
    single_token = GenerationOptions(max_new_tokens=1, greedy=True)

    def fresh(prompt, opts=single_token):
        pipe.vision_cache.clear()
        pipe.prefix_cache.forget()
        return pipe.describe([image], prompt, opts)

    want = fresh(FOLLOW, OPTS).token_ids          # the follow-up's answer when asked fresh
    rows = {'fresh': [], 'follow_up': []}
    for _ in range(runs):
        calls.take()
        a = fresh(FRESH)
        rows['fresh'].append((a, *calls.take()))
        b = pipe.describe([image], FOLLOW, single_token)
        rows['follow_up'].append((b, *calls.take()))
    fresh(FRESH)
    same = pipe.describe([image], FOLLOW, OPTS).token_ids == want   # reused: same tokens
    out = {'chunk': pipe.decoder.chunk, 'groups': len(pipe.decoder.prefill_groups),
           'token_identical': same}
    for name, rs in rows.items():
        r, counts, _ = rs[-1]
        calls_ft = calls.to_first_token(counts)
        out[name] = {
            'prompt_tokens': r.prompt_tokens, 'reused_prompt_tokens': r.reused_prompt_tokens,
            'vision_cached': r.vision_cached, 'calls_to_first_token': calls_ft,
            'vision_calls': counts[('vision', 0)],
            'layer_steps': sum(n for k, n in calls_ft.items() if k.startswith('layer')),
            'host_ttft_ms': median([x.timings_ms['time_to_first_token'] for x, _, _ in rs]),
            'runtime_ms': median([1e3 * t for _, _, t in rs]),
        }
    return out


def board_estimate(r: dict, chunked: bool) -> float:
    """ESTIMATED time to first token on the board from the counts and the model card (ms)."""
    build = 'chunked' if chunked else 'single'
    return (r['vision_calls'] * CARD[f'{build}_vision_call'] +
            r['layer_steps'] * CARD[f'{build}_layer_step'])


def main(argv=None) -> int:
    """Run both builds, print the figures, write the JSON result."""
    p = bench_parser(__doc__)
    p.add_argument('--chunked-dir', required=True, type=Path)
    p.add_argument('--onnx-dir', required=True, type=Path)
    p.add_argument('--runs', type=int, default=3)
    args = p.parse_args(argv)
    image = cv2.cvtColor(demo_image_bgr(), cv2.COLOR_BGR2RGB)
    res = {'chunked': measure(args.chunked_dir, image, args.runs),
           'single': measure(args.onnx_dir, image, args.runs)}
    c = res['chunked']
    ratio = c['follow_up']['layer_steps'] / c['fresh']['layer_steps']
    targets = {'layer_steps_le_third': ratio <= 1 / 3,
               'no_vision_call': c['follow_up']['vision_calls'] == 0,
               'token_identical': c['token_identical'] and res['single']['token_identical']}
    print(f'bench 7, follow-up question vs fresh question about one 448x448 frame '
          f'(median of {args.runs} runs)')
    print(f'  machine: {machine_line(machine())}')
    for build, r in res.items():
        kind = (f"chunked prefill (chunk {r['chunk']}, {r['groups']} prefill groups)"
                if build == 'chunked' else f"single prefill (p{r['chunk']})")
        print(f'  {kind}; follow-up tokens equal a fresh run: {r["token_identical"]}')
        for name in ('fresh', 'follow_up'):
            x = r[name]
            calls = ', '.join(f'{k} x{n}' for k, n in x['calls_to_first_token'].items())
            est = board_estimate(x, build == 'chunked')
            print(f"    {name:9s} prompt {x['prompt_tokens']} tokens ({x['reused_prompt_tokens']} "
                  f"kept), vision {'cached' if x['vision_cached'] else 'run'}; calls to first "
                  f"token: {calls}")
            print(f"              layer-steps {x['layer_steps']:3d}; host time to first token "
                  f"{x['host_ttft_ms']:.1f} ms (runtime {x['runtime_ms']:.1f} ms); "
                  f'board ESTIMATE {est:.0f} ms')
    print(f"  chunked: follow-up / fresh layer-steps = {ratio:.3f} (target <= 1/3: "
          f"{verdict(targets['layer_steps_le_third'])}); vision calls "
          f"{c['follow_up']['vision_calls']} (target 0: {verdict(targets['no_vision_call'])})")
    print('  board ESTIMATE (from the model card, not measured on a board) = vision calls x '
          f"{CARD['chunked_vision_call']:.0f} / {CARD['single_vision_call']:.0f} ms + "
          f"layer-steps x {CARD['chunked_layer_step']:.1f} / {CARD['single_layer_step']:.1f} ms "
          '(chunked / p320)')
    write_result(args.json, 'followup', dict(res, runs=args.runs, ratio_layer_steps=ratio,
                                             card_ms=CARD, targets=targets,
                                             estimate_ms={b: {n: board_estimate(
                                                 res[b][n], b == 'chunked')
                                                 for n in ('fresh', 'follow_up')}
                                                 for b in res}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
