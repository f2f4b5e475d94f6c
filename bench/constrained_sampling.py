"""Bench 6: host cost of a typed answer's constraint per token, at the real vocabulary.

    python bench/constrained_sampling.py [--tokens N] [--json FILE]

Per token, on float32 logits of the real row count (151936): the plain sampler (greedy, and
sampled with temperature / top-k / top-p) against the same sampler behind the grammar
(llguidance mask computed and applied, token consumed), in the same run, interleaved. The
tokenizer is the real Qwen2.5-VL-3B one (151643 tokens + specials) from ../shared, or a
synthetic byte-level vocabulary of the same size when that is absent. Grammars: the box list
of ~/detect, a JSON Schema with free strings, a regex, and yes/no choices. Target: at most
1 ms added per token at the median.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REAL_CONFIG, bench_parser, machine, machine_line, median,  # noqa: E402
                    percentile, verdict, write_result)

from qwen_vl_ros.vlm.constrain import GrammarTokenizer, grammar_for  # noqa: E402
from qwen_vl_ros.vlm.grounding import box_schema  # noqa: E402
from qwen_vl_ros.vlm.sampling import Sampler, SamplingOptions  # noqa: E402

ROWS = 151936
TARGET_MS = 1.0
GRAMMARS = {
    'detect boxes (JSON Schema)': dict(json_schema=box_schema(['person', 'cup', 'door'], '',
                                                              (448, 448))),
    'JSON Schema, free strings': dict(json_schema={
        'type': 'object', 'properties': {'summary': {'type': 'string', 'maxLength': 200},
                                         'people': {'type': 'integer'},
                                         'door_open': {'type': 'boolean'}},
        'required': ['summary', 'people', 'door_open']}),
    'regex': dict(regex=r'[A-Z][a-z ,]{0,80}\.( [A-Z][a-z ,]{0,80}\.){0,3}'),
    'choices yes/no': dict(choices=('yes', 'no')),
}


def tokenizer():
    """Return (HF tokenizer, eos ids, what it is): the real one, or a synthetic one."""
    from qwen_vl_ros.vlm.prompt import load_tokenizer
    if (REAL_CONFIG / 'vocab.json').is_file():
        gen = json.loads((REAL_CONFIG / 'generation_config.json').read_text())
        return load_tokenizer(str(REAL_CONFIG)), gen['eos_token_id'], 'Qwen2.5-VL-3B (real)'
    return synthetic_tokenizer(151643)


def synthetic_tokenizer(n: int):
    """Return a byte-level BPE vocabulary of ``n`` random ASCII pieces and Qwen's specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from qwen_vl_ros.export.tokenizer import QWEN_SPECIAL_TOKENS
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    rng = np.random.default_rng(0)
    letters = np.array(list('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'
                            ',.:"{}[]Ġ_-'))
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    while len(vocab) < n:
        piece = ''.join(rng.choice(letters, int(rng.integers(2, 9))))
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(QWEN_SPECIAL_TOKENS))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token='<|im_end|>')
    eos = [hf.convert_tokens_to_ids('<|im_end|>'), hf.convert_tokens_to_ids('<|endoftext|>')]
    return hf, eos, f'synthetic byte-level ({len(hf)} tokens)'


def run(gt: GrammarTokenizer, grammar: str, opts: SamplingOptions, tokens: int, seed: int):
    """Per-token ms of (plain sampler, constrained sampler) on the same random logits."""
    rng = np.random.default_rng(seed)
    plain, constrained = [], []
    guide = gt.guide(grammar)
    sampler_a, sampler_b = Sampler(opts), Sampler(opts)
    for _ in range(tokens):
        logits = rng.normal(0, 3, ROWS).astype(np.float32)
        t0 = time.perf_counter()
        sampler_a(logits)
        t1 = time.perf_counter()
        token = sampler_b(logits, guide.candidates(logits))
        done = guide.advance(token)
        t2 = time.perf_counter()
        plain.append(1e3 * (t1 - t0))
        constrained.append(1e3 * (t2 - t1))
        if done:
            guide = gt.guide(grammar)    # answer complete: the next request's answer
    return plain, constrained


def main(argv=None) -> int:
    """Run the bench; print the figures; write the JSON result."""
    p = bench_parser(__doc__)
    p.add_argument('--tokens', type=int, default=400)
    args = p.parse_args(argv)
    hf, eos, what = tokenizer()
    t0 = time.perf_counter()
    gt = GrammarTokenizer(hf, ROWS, eos)
    build_s = time.perf_counter() - t0
    settings = {'greedy': SamplingOptions(do_sample=False),
                'sampled (T 0.7, top-k 50, top-p 0.9)': SamplingOptions(
                    do_sample=True, temperature=0.7, top_k=50, top_p=0.9, seed=0)}
    print('bench 6, typed answers: host cost of the grammar per token, vocabulary rows '
          f'{ROWS}')
    print(f'  machine: {machine_line(machine())}')
    print(f'  tokenizer: {what}; llguidance view built once per model in {build_s:.2f} s')
    rows, worst = [], 0.0
    for gname, spec in GRAMMARS.items():
        grammar = grammar_for(**spec)
        for sname, opts in settings.items():
            plain, con = run(gt, grammar, opts, args.tokens, seed=len(rows))
            added = [c - p for c, p in zip(con, plain)]
            row = dict(grammar=gname, sampling=sname, plain_ms=median(plain),
                       constrained_ms=median(con), added_median_ms=median(added),
                       added_p95_ms=percentile(added, 95))
            rows.append(row)
            worst = max(worst, row['added_median_ms'])
            print(f'  {gname:28s} {sname:38s} plain {row["plain_ms"]:6.3f} ms  constrained '
                  f'{row["constrained_ms"]:6.3f} ms  added median {row["added_median_ms"]:6.3f}'
                  f' ms, p95 {row["added_p95_ms"]:6.3f} ms')
    ok = worst <= TARGET_MS
    print(f'  worst added median {worst:.3f} ms per token (target <= {TARGET_MS} ms: '
          f'{verdict(ok)})')
    write_result(args.json, 'constrained_sampling', {
        'tokenizer': what, 'rows': ROWS, 'build_s': build_s, 'results': rows,
        'worst_added_median_ms': worst, 'target_ms': TARGET_MS, 'met': ok})
    return 0


if __name__ == '__main__':
    sys.exit(main())
