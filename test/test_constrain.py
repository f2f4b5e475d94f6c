"""Typed answers (choices, JSON Schema, regex) on the tiny model through the whole pipeline.

The allowed sets are checked against oracles written here from the definitions (a choice's
prefixes, Python's `regex` partial matching), not against llguidance's own answers; greedy is
checked against the unconstrained logits of `score` (teacher forcing).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import regex as pyregex

from qwen_vl_ros.vlm import GenerationOptions, Pipeline
from qwen_vl_ros.vlm.constrain import ConstraintError, GrammarTokenizer, grammar_for

PROMPT = 'Is there a cup on the table?'
REAL = Path(__file__).resolve().parents[2] / 'shared' / 'qwen2_5_vl_3b'

SCHEMA = {
    'type': 'object',
    'properties': {
        'count': {'type': 'integer', 'minimum': 0, 'maximum': 20},
        'open': {'type': 'boolean'},
        'colour': {'enum': ['red', 'green', 'blue']},
    },
    'required': ['count', 'open', 'colour'],
    'additionalProperties': False,
}
REGEX = r'[0-9]{1,3}( cups| cats)?'
CHOICES = ('yes', 'no', 'maybe so')

# every sampling setting tried, each with several seeds
SAMPLING = [
    dict(greedy=True),
    dict(greedy=False, temperature=1.0, top_k=0, top_p=1.0),
    dict(greedy=False, temperature=5.0, top_k=0, top_p=1.0),
    dict(greedy=False, temperature=0.7, top_k=3, top_p=1.0),
    dict(greedy=False, temperature=2.0, top_k=50, top_p=0.8),
    dict(greedy=False, temperature=1.5, repetition_penalty=1.5),
]
SEEDS = (0, 1, 2)


def frame(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope='module')
def pipe(tiny_onnx_dir):
    return Pipeline.load(str(tiny_onnx_dir), backend='onnxruntime', threads=1,
                         progress=lambda m: None)


def check_schema_answer(text):
    value = json.loads(text)
    assert set(value) == {'count', 'open', 'colour'}
    assert isinstance(value['count'], int) and 0 <= value['count'] <= 20
    assert isinstance(value['open'], bool)
    assert value['colour'] in ('red', 'green', 'blue')


@pytest.mark.parametrize('sampling', SAMPLING, ids=lambda s: ','.join(f'{k}={v}' for k, v in
                                                                       s.items()))
def test_answers_valid_for_every_sampling_setting_and_seed(pipe, sampling):
    img = frame(300, 401, seed=5)
    for seed in SEEDS:
        r = pipe.describe([img], PROMPT, GenerationOptions(
            max_new_tokens=12, choices=CHOICES, seed=seed, **sampling))
        assert r.finish_reason == 'stop' and r.text in CHOICES, (seed, r.text)
        assert r.choice_index == CHOICES.index(r.text)
        r = pipe.describe([img], PROMPT, GenerationOptions(
            max_new_tokens=16, regex=REGEX, seed=seed, **sampling))
        assert r.finish_reason == 'stop' and pyregex.fullmatch(REGEX, r.text), (seed, r.text)
        assert r.choice_index == -1
        r = pipe.describe([img], PROMPT, GenerationOptions(
            max_new_tokens=64, json_schema=json.dumps(SCHEMA), seed=seed, **sampling))
        assert r.finish_reason == 'stop', (seed, r.text)
        check_schema_answer(r.text)


def token_texts(tokenizer):
    n = len(tokenizer)
    special = set(tokenizer.all_special_ids)
    return [None if i in special else tokenizer.decode([i]) for i in range(n)]


def oracle_allowed(prefix_text, texts, eos_ids, can_continue, is_complete, rows):
    """Return the allowed next tokens by definition: continue a valid answer or end one."""
    allowed = np.zeros(rows, bool)
    for i, t in enumerate(texts):
        if t and can_continue(prefix_text + t):
            allowed[i] = True
    if is_complete(prefix_text):
        allowed[sorted(eos_ids)] = True
    return allowed


KINDS = {
    'choices': (dict(choices=CHOICES),
                lambda s: any(c.startswith(s) for c in CHOICES), lambda s: s in CHOICES),
    'regex': (dict(regex=REGEX),
              lambda s: pyregex.fullmatch(REGEX, s, partial=True) is not None,
              lambda s: pyregex.fullmatch(REGEX, s) is not None),
}


@pytest.mark.parametrize('kind', sorted(KINDS))
def test_greedy_takes_the_best_allowed_token_at_every_step(pipe, kind):
    """Greedy = argmax of the unconstrained logits (score) over the tokens the grammar allows.

    The allowed sets are the engine's, replayed along the answer; each must lie inside the
    definition's (the oracle) and be non-empty.
    """
    options, can_continue, is_complete = KINDS[kind]
    img = frame(448, 448, seed=11)
    texts = token_texts(pipe.tokenizer)
    rows = pipe.files.config.vocab_size
    for prompt in (PROMPT, 'How many cups are there?', 'Describe this image.'):
        r = pipe.describe([img], prompt, GenerationOptions(
            max_new_tokens=16, greedy=True, repetition_penalty=1.0, **options))
        assert r.finish_reason == 'stop'
        logits = pipe.score([img], prompt, r.token_ids)   # unconstrained, teacher forcing
        assert logits.shape == (len(r.token_ids), rows)
        guide = pipe.guide(GenerationOptions(**options))
        for k, token in enumerate(r.token_ids):
            prefix = pipe.tokenizer.decode(r.token_ids[:k], skip_special_tokens=True)
            allowed = guide.allowed()
            sound = oracle_allowed(prefix, texts, pipe.eos_ids, can_continue, is_complete,
                                   rows)
            assert allowed.any() and not (allowed & ~sound).any(), (k, prefix)
            best = int(np.argmax(np.where(allowed, logits[k], -np.inf)))
            assert token == best, (prompt, k, prefix, token, best)
            guide.advance(token)
        final = pipe.tokenizer.decode(r.token_ids, skip_special_tokens=True)
        assert is_complete(final)


@pytest.mark.parametrize('kind', sorted(KINDS))
def test_engine_mask_is_sound_and_never_empty(pipe, kind):
    """Every token llguidance allows keeps the answer valid; an end token only when complete.

    llguidance may leave out a spelling the tokenizer never produces where the grammar forces
    the next characters (e.g. a lone space before a word): the allowed set is a non-empty
    subset of the definition's, equal to it where nothing is forced (first step).
    """
    options, can_continue, is_complete = KINDS[kind]
    texts = token_texts(pipe.tokenizer)
    rows = pipe.files.config.vocab_size
    for seed in range(3):
        r = pipe.describe([frame(200, 200, 3)], PROMPT, GenerationOptions(
            max_new_tokens=16, greedy=False, temperature=3.0, top_k=0, seed=seed, **options))
        guide = pipe.guide(GenerationOptions(**options))
        for k, token in enumerate(r.token_ids):
            prefix = pipe.tokenizer.decode(r.token_ids[:k], skip_special_tokens=True)
            want = oracle_allowed(prefix, texts, pipe.eos_ids, can_continue, is_complete, rows)
            got = guide.allowed()
            assert got.any() and not (got & ~want).any(), (k, prefix)
            assert got[sorted(pipe.eos_ids)].all() == is_complete(prefix)
            if k == 0:
                assert np.array_equal(got, want)
            guide.advance(token)


def counting(monkeypatch, obj, name, calls):
    original = getattr(obj, name)

    def wrapped(*a, **kw):
        calls[name] = calls.get(name, 0) + 1
        return original(*a, **kw)

    monkeypatch.setattr(obj, name, wrapped)


def test_yes_no_stops_after_the_fewest_decode_steps(pipe, monkeypatch):
    calls = {}
    counting(monkeypatch, pipe.decoder, 'decode_step', calls)
    counting(monkeypatch, pipe.decoder, 'prefill', calls)
    img = frame(448, 448, seed=2)
    for seed in range(4):
        calls.clear()
        r = pipe.describe([img], 'Is the door open? Answer yes or no.', GenerationOptions(
            max_new_tokens=32, choices=('yes', 'no'), greedy=seed == 0, temperature=2.0,
            seed=seed))
        assert r.text in ('yes', 'no') and r.finish_reason == 'stop'
        # the first token comes from the prefill; one decode step per further token, and
        # none to wait for an end token after the answer is complete
        assert not set(r.token_ids) & pipe.eos_ids
        assert calls == {'prefill': 1, 'decode_step': len(r.token_ids) - 1} or (
            len(r.token_ids) == 1 and calls == {'prefill': 1})
        fewest = min(len(pipe.tokenizer.encode(c)) for c in ('yes', 'no') if c == r.text)
        assert len(r.token_ids) >= fewest
    # a one-token answer in the tiny vocabulary: only the prefill runs
    one = [c for c in ('no', 'a', 'the') if len(pipe.tokenizer.encode(c)) == 1][0]
    calls.clear()
    r = pipe.describe([img], PROMPT, GenerationOptions(max_new_tokens=32, choices=(one,)))
    assert r.text == one and r.token_ids == pipe.tokenizer.encode(one)
    assert calls == {'prefill': 1}


@pytest.mark.parametrize('bad, why', [
    (dict(regex='[a-'), 'unclosed character class'),
    (dict(regex='(x'), 'regex'),
    (dict(json_schema='{"type": "strin"}'), 'strin'),
    (dict(json_schema='{not json'), 'not JSON'),
    (dict(json_schema='[1, 2]'), 'JSON object'),
    (dict(choices=('yes', '')), 'non-empty'),
    (dict(choices=('yes', 'yes')), 'differ'),
    (dict(choices=('yes', 'no'), regex='y.*'), 'at most one'),
])
def test_bad_constraint_is_a_clear_error_before_any_model_runs(pipe, monkeypatch, bad, why):
    calls = {}
    counting(monkeypatch, pipe.vision, 'run', calls)
    counting(monkeypatch, pipe.decoder, 'prefill', calls)
    with pytest.raises(ConstraintError, match=why):
        pipe.describe([frame(64, 64)], PROMPT, GenerationOptions(**bad))
    assert calls == {}


def test_special_characters_in_choices(pipe):
    choices = ('a.b', '(x)|y', '50%', 'naïve', '"quoted"', 'back\\slash')
    for seed in range(3):
        r = pipe.describe([frame(64, 64, seed)], PROMPT, GenerationOptions(
            max_new_tokens=24, choices=choices, greedy=False, temperature=3.0, seed=seed))
        assert r.text in choices and r.choice_index == choices.index(r.text)


def test_padded_vocabulary_rows_are_never_allowed(pipe):
    """Logit rows beyond the tokenizer's tokens (the real model pads 151665 to 151936)."""
    words = len(pipe.tokenizer)
    rows = words + 77
    tok = GrammarTokenizer(pipe.tokenizer, rows, pipe.eos_ids)
    for grammar in (grammar_for(regex='.*'), grammar_for(json_schema={'type': 'string'})):
        guide = tok.guide(grammar)
        logits = np.zeros(rows, np.float32)
        logits[words:] = 1e6     # the padded rows would win every draw
        masked = guide.mask(logits)
        assert np.isneginf(masked[words:]).all()
        assert np.isfinite(masked[:words]).any()
        assert not guide.allowed()[words:].any()
        assert guide.candidates(logits).max() < words     # the decode loop's fast path
        from qwen_vl_ros.vlm.sampling import Sampler, SamplingOptions
        for opts in (SamplingOptions(), SamplingOptions(do_sample=True, top_k=0, seed=1),
                     SamplingOptions(do_sample=True, top_k=5, top_p=0.5, seed=2)):
            assert Sampler(opts)(logits, guide.candidates(logits)) < words


def test_cut_short_answer_says_length_and_no_choice(pipe):
    long = ('the cup on the left of the table',)
    r = pipe.describe([frame(64, 64)], PROMPT, GenerationOptions(
        max_new_tokens=2, choices=long, greedy=True))
    assert r.finish_reason == 'length' and r.choice_index == -1
    assert long[0].startswith(r.text)


@pytest.mark.skipif(not REAL.is_dir(), reason=f'the real Qwen2.5-VL-3B tokenizer is not at '
                    f'{REAL} (the team\'s ../shared; absent in a user\'s clone)')
def test_real_tokenizer_yes_no_is_one_token_and_padding_never_allowed():
    from qwen_vl_ros.vlm.prompt import load_tokenizer
    tokenizer = load_tokenizer(str(REAL))
    cfg = json.loads((REAL / 'config.json').read_text())
    gen = json.loads((REAL / 'generation_config.json').read_text())
    rows = cfg.get('vocab_size') or cfg['text_config']['vocab_size']
    assert rows == 151936 and len(tokenizer) < rows
    tok = GrammarTokenizer(tokenizer, rows, gen['eos_token_id'])
    for answer in ('yes', 'no'):
        guide = tok.guide(grammar_for(choices=('yes', 'no')))
        allowed = guide.allowed()
        assert not allowed[len(tokenizer):].any()
        (token,) = tokenizer.encode(answer)
        assert allowed[token]
        assert guide.advance(token)     # complete after one token: no decode step at all


def run_cli(tiny_onnx_dir, *args):
    import subprocess
    import sys
    script = Path(sys.executable).parent / 'qwen-vl-describe'
    return subprocess.run([str(script), '--model-dir', str(tiny_onnx_dir), '--threads', '1',
                           *args], capture_output=True, text=True, timeout=300)


def test_cli_typed_answers(tiny_onnx_dir, tmp_path):
    import cv2
    image = tmp_path / 'frame.png'
    cv2.imwrite(str(image), frame(120, 90, seed=8))
    out = run_cli(tiny_onnx_dir, '--image', str(image), '--json', '--choices', 'yes,no',
                  '--temperature', '3.0', '--seed', '5')
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer['text'] in ('yes', 'no') and answer['finish_reason'] == 'stop'
    assert answer['choice_index'] == ('yes', 'no').index(answer['text'])
    schema = tmp_path / 'schema.json'
    schema.write_text(json.dumps(SCHEMA))
    out = run_cli(tiny_onnx_dir, '--image', str(image), '--json', '--json-schema', str(schema),
                  '--max-new-tokens', '64')
    assert out.returncode == 0, out.stderr
    check_schema_answer(json.loads(out.stdout)['text'])
    out = run_cli(tiny_onnx_dir, '--image', str(image), '--regex', '[0-9]{1,3} cups?',
                  '--max-new-tokens', '12', '--greedy')
    assert out.returncode == 0 and pyregex.fullmatch('[0-9]{1,3} cups?', out.stdout.strip())
    out = run_cli(tiny_onnx_dir, '--image', str(image), '--regex', '[0-9')
    assert out.returncode == 2
    assert 'regex' in out.stderr and 'unclosed character class' in out.stderr
    assert 'loading' not in out.stderr   # refused before the model is loaded
