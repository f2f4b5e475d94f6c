"""A corpus of typed answers: every answer is valid for its constraint or not a success.

Built from the kinds of issue 19 and from public bug reports of grammar engines (enums of
unicode values, choices that prefix each other, $ref/$defs, nullable anyOf, anchored regexes,
schemas that let the answer grow, budgets of 1 to 8 tokens). For each case, budget and decoding
(greedy, and sampled with several seeds) on the tiny model, Result is either

- a success (``problem`` empty): the text is valid, checked by an oracle written here from
  the definitions (json + hand-written schema checks, Python's ``regex`` for full matches), and
  equal to the answer the same decoding gives with a generous budget (a success is complete:
  more tokens would not have changed it); or
- not a success: ``problem`` names max_new_tokens and the tokens used, finish reason
  ``length``, the partial text kept (a prefix of the generous answer), choice_index -1.

A constraint llguidance rejects is a ConstraintError before any model runs (a reason too).
"""

import json

import pytest
import regex as pyregex

from qwen_vl_ros.vlm import GenerationOptions, Pipeline
from qwen_vl_ros.vlm.constrain import ConstraintError, grammar_for

BUDGETS = tuple(range(1, 9))
GENEROUS = 96
DECODINGS = [dict(greedy=True)] + [dict(greedy=False, temperature=1.5, top_k=0, top_p=1.0,
                                        seed=seed) for seed in (1, 2, 3)]
PROMPT = 'Answer the question about the room.'


def is_int(v, lo=None, hi=None):
    return isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo) and \
        (hi is None or v <= hi)


def json_check(check):
    def valid(text):
        try:
            value = json.loads(text)
        except ValueError:
            return False
        return check(value)
    return valid


def obj(value, keys):
    return isinstance(value, dict) and set(value) == set(keys)


# name -> (constraint fields, oracle(text) -> bool)
CASES = {
    'choices_unicode': (dict(choices=('ja', 'nein', 'vielleicht', 'peut-être', 'да')), None),
    'choices_prefixes': (dict(choices=('a', 'ab', 'abc', 'abcd efgh')), None),
    'choices_cjk_prefixes': (dict(choices=('日本', '日本語', '中文')), None),
    'choices_long': (dict(choices=('the cup on the left of the table',
                                   'the cup on the right of the table')), None),
    'enum_unicode': (dict(json_schema={'enum': ['café', 'naïve', '日本語', '🤖', 'a"b']}),
                     json_check(lambda v: v in ['café', 'naïve', '日本語', '🤖', 'a"b'])),
    'defs_ref': (dict(json_schema={
        '$defs': {'colour': {'enum': ['red', 'green', 'blue']},
                  'count': {'type': 'integer', 'minimum': 0, 'maximum': 9}},
        'type': 'object',
        'properties': {'colour': {'$ref': '#/$defs/colour'}, 'n': {'$ref': '#/$defs/count'}},
        'required': ['colour', 'n'], 'additionalProperties': False}),
        json_check(lambda v: obj(v, ['colour', 'n']) and v['colour'] in ('red', 'green', 'blue')
                   and is_int(v['n'], 0, 9))),
    'nullable_anyof': (dict(json_schema={'anyOf': [{'type': 'integer', 'minimum': 0,
                                                    'maximum': 99}, {'type': 'null'}]}),
                       json_check(lambda v: v is None or is_int(v, 0, 99))),
    'readme_people': (dict(json_schema={
        'type': 'object', 'properties': {'people': {'type': 'integer', 'minimum': 0,
                                                    'maximum': 50}},
        'required': ['people'], 'additionalProperties': False}),
        json_check(lambda v: obj(v, ['people']) and is_int(v['people'], 0, 50))),
    'unbounded_object': (dict(json_schema={
        'type': 'object', 'properties': {'name': {'type': 'string'}}, 'required': ['name']}),
        json_check(lambda v: isinstance(v, dict) and isinstance(v.get('name'), str))),
    'unbounded_integer': (dict(json_schema={'type': 'integer', 'minimum': 0}),
                          json_check(lambda v: is_int(v, 0))),
    'bounded_array': (dict(json_schema={'type': 'array', 'items': {'enum': ['x', 'y']},
                                        'maxItems': 3}),
                      json_check(lambda v: isinstance(v, list) and len(v) <= 3 and
                                 all(x in ('x', 'y') for x in v))),
    'regex_clock': (dict(regex='[0-2][0-9]:[0-5][0-9]'), None),
    'regex_anchored': (dict(regex='^(yes|no)$'), None),
    'regex_anchored_digits': (dict(regex=r'^\d{1,4}$'), None),
    'regex_prefixes': (dict(regex='a|ab|abc'), None),
    'regex_unbounded': (dict(regex='[a-z]+'), None),
}


def oracle(fields, check):
    """Return the validity check of a case, from the definitions (not from llguidance)."""
    if check is not None:
        return check
    if 'choices' in fields:
        return lambda text: text in fields['choices']
    return lambda text: pyregex.fullmatch(fields['regex'], text) is not None


@pytest.fixture(scope='module')
def pipe(tiny_onnx_dir):
    return Pipeline.load(str(tiny_onnx_dir), backend='onnxruntime', threads=1,
                         progress=lambda m: None)


@pytest.mark.parametrize('name', sorted(CASES))
def test_every_answer_valid_or_not_a_success(pipe, name):
    fields, check = CASES[name]
    try:
        grammar_for(**fields)
    except ConstraintError as e:      # refused with a reason before any model runs
        assert str(e), name
        return
    valid = oracle(fields, check)
    cut = ok = 0
    for decoding in DECODINGS:
        opts = dict(fields, **decoding)
        whole = pipe.describe([], PROMPT, GenerationOptions(max_new_tokens=GENEROUS, **opts))
        for budget in BUDGETS:
            r = pipe.describe([], PROMPT, GenerationOptions(max_new_tokens=budget, **opts))
            what = (name, decoding, budget, r.text, r.finish_reason, r.problem)
            assert len(r.token_ids) <= budget, what
            if not r.problem:
                ok += 1
                assert r.finish_reason == 'stop' and valid(r.text), what
                assert r.text == whole.text, what          # complete: no more was coming
                if 'choices' in fields:
                    assert r.choice_index == fields['choices'].index(r.text), what
                continue
            cut += 1
            assert r.finish_reason == 'length' and r.choice_index == -1, what
            assert f'max_new_tokens = {budget}' in r.problem, what
            assert f'({len(r.token_ids)} tokens used)' in r.problem, what
            assert whole.token_ids[:len(r.token_ids)] == r.token_ids, what   # partial kept
        if not whole.problem:
            assert valid(whole.text), (name, decoding, whole.text)
    assert cut, f'{name}: no budget of 1-8 tokens cut an answer: the case checks nothing'


def test_budget_that_ends_where_the_grammar_may_end_asks_the_model(pipe):
    """Choices 'a' and 'ab': 'a' after one token is an answer only if the model ends there.

    Whatever the model prefers, the one-token answer is a success exactly when the generous
    answer has one token besides its end token (and then it is that answer).
    """
    eos = pipe.eos_ids
    for choices in (('a', 'ab'), ('a', 'ab', 'abc'), ('日本', '日本語')):
        for decoding in DECODINGS:
            opts = dict(choices=choices, **decoding)
            whole = pipe.describe([], PROMPT, GenerationOptions(max_new_tokens=8, **opts))
            r = pipe.describe([], PROMPT, GenerationOptions(max_new_tokens=1, **opts))
            one = len([t for t in whole.token_ids if t not in eos]) == 1
            assert (not r.problem) == one, (choices, decoding, r.text, r.problem, whole.text)
            assert r.problem or r.text == whole.text


def test_cut_short_names_the_budget_and_what_would_bound_the_answer():
    from qwen_vl_ros.vlm.constrain import cut_short, unbounded_parts
    schema = {'type': 'object', 'properties': {
        'name': {'type': 'string'}, 'n': {'type': 'integer'},
        'tags': {'type': 'array', 'items': {'$ref': '#/$defs/tag'}},
        'ok': {'type': 'string', 'maxLength': 8}, 'colour': {'enum': ['red']}},
        '$defs': {'tag': {'type': 'string'}}, 'additionalProperties': False}
    assert unbounded_parts(schema) == [
        '$.name: string without maxLength', '$.n: number without maximum',
        '$.tags: array without maxItems', '$.tags[]: string without maxLength']
    text = cut_short(6, 6, json_schema=json.dumps(schema))
    assert 'max_new_tokens = 6' in text and '(6 tokens used)' in text
    for bound in ('maxLength', 'maximum', 'maxItems', 'additionalProperties: false'):
        assert bound in text
    assert '$.name: string without maxLength' in text
    assert 'object without additionalProperties' in ' '.join(
        unbounded_parts({'type': 'object', 'properties': {}}))
    assert 'KV cache (length 1023)' in cut_short(6, 40, regex='[a-z]+', kv_len=1023)
    assert 'longest choice' in cut_short(2, 2, choices=('yes', 'no'))
