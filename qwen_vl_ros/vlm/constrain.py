"""Constrained decoding: answers that are valid by construction.

The answer is one of given strings, JSON valid against a schema, or a match of a regex.

The grammar engine is llguidance (https://github.com/guidance-ai/llguidance; what llama.cpp and
vLLM use): Rust with a numpy interface, no torch. It reads the Hugging Face tokenizer and gives,
for each step, the bit mask of the tokens that can continue a valid answer. Our sampler runs on
the host (the post model returns logits), so the mask costs no NPU time:

    logits (V,) --mask--> disallowed tokens = -inf --> sampler (greedy or sampled) --> token
    --> matcher.consume_token(token) --> grammar complete? stop (finish reason 'stop')

Rules kept here (each checked by test/test_constrain.py):
- the model's padded vocabulary rows (config vocab_size beyond the tokenizer's tokens) are
  never allowed;
- an end-of-sequence id (generation_config's eos_token_id) is allowed only where the grammar
  may end; a grammar that cannot go on ends generation without one (fewest decode steps);
- a schema or regex llguidance rejects is a ConstraintError before any model runs;
- an answer is a success only when it is complete: the model ended it (an end token where the
  grammar may end) or the grammar allows nothing more. One the token budget cut is not an
  answer: ``cut_short`` says why (max_new_tokens, tokens used, what would bound it) and every
  interface (CLI, service, action, timer, ~/detect) reports it as success false with that
  reason (Result.problem), keeping the partial text. A budget that ends where the grammar may
  end is checked with one more step: the answer is complete only if the model ends it there
  (with choices 'a' and 'ab', 'a' after one token is not yet 'a').
"""

from __future__ import annotations

import json

import numpy as np

from .errors import VLMError

# JSON layout of answers to a schema: Python's json.dumps style (what Qwen2.5-VL writes), and
# no free whitespace, so that a model cannot spend its tokens on blanks. A schema's own
# "x-guidance" settings win over these.
JSON_DEFAULTS = {'whitespace_flexible': False, 'item_separator': ', ', 'key_separator': ': '}


class ConstraintError(VLMError):
    """A choices list, JSON Schema or regex that cannot constrain an answer (with why)."""


def _llguidance():
    try:
        import llguidance
        import llguidance.hf  # noqa: F401 - the HF tokenizer bridge
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise ConstraintError(f'constrained answers need the llguidance package '
                              f'(pip install llguidance): {e}') from e
    return llguidance


def grammar_for(choices=None, json_schema=None, regex=None) -> str | None:
    """Return the llguidance grammar of at most one constraint, or None for none.

    ``choices``: sequence of non-empty strings (the answer is exactly one of them);
    ``json_schema``: a JSON Schema as text or dict (the answer is JSON valid against it);
    ``regex``: Rust regex syntax (https://docs.rs/regex), matched against the whole answer.
    Raises ConstraintError when more than one is given, for an empty or repeated choice, or
    for a schema or regex that llguidance rejects (its message says why).
    """
    given = [name for name, v in (('choices', choices), ('json_schema', json_schema),
                                  ('regex', regex)) if v]
    if not given:
        return None
    if len(given) > 1:
        raise ConstraintError(f'give at most one of choices, json_schema and regex, got '
                              f'{" and ".join(given)}')
    llg = _llguidance()
    if choices:
        choices = [str(c) for c in choices]
        if any(not c for c in choices):
            raise ConstraintError(f'choices must be non-empty strings, got {choices!r}')
        if len(set(choices)) != len(choices):
            raise ConstraintError(f'choices must differ from each other, got {choices!r}')
        grammar = llg.grammar_from('choice', choices)
    elif json_schema:
        if isinstance(json_schema, str):
            try:
                json_schema = json.loads(json_schema)
            except json.JSONDecodeError as e:
                raise ConstraintError(f'json_schema is not JSON: {e}') from e
        if not isinstance(json_schema, dict):
            raise ConstraintError(f'json_schema must be a JSON object, got '
                                  f'{type(json_schema).__name__}')
        try:
            grammar = llg.LLMatcher.grammar_from_json_schema(json_schema, defaults=JSON_DEFAULTS)
        except ValueError as e:
            raise ConstraintError(f'json_schema: {e}') from e
    else:
        grammar = llg.LLMatcher.grammar_from_regex(str(regex))
    # llguidance checks the grammar without a tokenizer (~1 ms): a bad schema or regex is
    # refused here, before a model is loaded or run
    problem = llg.LLMatcher.validate_grammar(grammar)
    if problem:
        kind = given[0]
        raise ConstraintError(f'{kind}: {_clean(problem)}')
    return grammar


class GrammarTokenizer:
    """llguidance's view of the HF tokenizer (built once per model: ~1 s at 151k tokens).

    ``vocab_rows`` = rows of the model's logits (config vocab_size, 151936 for Qwen2.5-VL-3B);
    the tokenizer knows fewer (151665): the rest are padding and never allowed.
    ``eos_ids``: the ids that end generation (generation_config's eos_token_id).
    """

    def __init__(self, hf_tokenizer, vocab_rows: int, eos_ids):
        llg = _llguidance()
        self.eos_ids = sorted(int(i) for i in eos_ids)
        self.words = len(hf_tokenizer)
        if self.words > vocab_rows:
            raise ConstraintError(f'the tokenizer has {self.words} tokens but the model only '
                                  f'{vocab_rows} logit rows')
        self.vocab_rows = int(vocab_rows)
        self.ll = llg.hf.from_tokenizer(hf_tokenizer, n_vocab=self.words,
                                        eos_token=self.eos_ids or None)

    def guide(self, grammar: str, keep_probs: bool = False) -> Guide:
        """Return a new Guide (one request's state); ConstraintError if llguidance rejects."""
        return Guide(self, grammar, keep_probs)


class Guide:
    """One request's grammar state: masks logits, follows the tokens chosen."""

    def __init__(self, tok: GrammarTokenizer, grammar: str, keep_probs: bool = False):
        llg = _llguidance()
        self.tok = tok
        self.matcher = llg.LLMatcher(tok.ll, grammar, log_level=0)
        if self.matcher.is_error():
            raise ConstraintError(_clean(self.matcher.get_error()))
        words32 = -(-tok.words // 32)
        self._bits = np.zeros(words32, np.int32)
        self._eos = np.asarray(tok.eos_ids, np.int64)
        self._raw = None
        self.keep_probs = keep_probs
        self.probs: list = []   # model probability of each chosen token (keep_probs)

    def allowed(self) -> np.ndarray:
        """Bool (vocab_rows,): the tokens that may come next (padded rows always False)."""
        m = self.matcher
        m.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        if m.is_error():
            raise ConstraintError(f'grammar engine: {_clean(m.get_error())}')
        # bit i of int32 word w = token 32*w + i; the words are little-endian in memory
        bits = np.unpackbits(self._bits.view(np.uint8), bitorder='little')
        out = np.zeros(self.tok.vocab_rows, bool)
        out[:self.tok.words] = bits[:self.tok.words]
        out[self._eos] = m.is_accepting()
        return out

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """Float32 logits (vocab_rows,) -> a copy with every disallowed token at -inf.

        Raises ConstraintError when no token can continue (cannot happen with a byte-level
        tokenizer and a grammar llguidance accepted, but never sample from nothing).
        """
        allowed = self.allowed()
        ids = np.flatnonzero(allowed)
        if not len(ids):
            raise ConstraintError('no token can continue the constrained answer')
        if self.keep_probs:
            self._raw = logits
        if 4 * len(ids) < len(allowed):
            # few tokens allowed (the usual case): scatter them into -inf, ~4x cheaper
            out = np.full(len(logits), -np.inf, np.float32)
            out[ids] = logits[ids]
            return out
        return np.where(allowed, logits, np.float32(-np.inf)).astype(np.float32, copy=False)

    def candidates(self, logits: np.ndarray) -> np.ndarray:
        """Return the ascending ids allowed next (int64), for Sampler(logits, candidates).

        Same choice as sampling from ``mask(logits)``, without building a masked copy of the
        whole vocabulary (the fast path of the decode loop). ``logits`` are kept for the
        token's probability when ``keep_probs``.
        """
        ids = np.flatnonzero(self.allowed())
        if not len(ids):
            raise ConstraintError('no token can continue the constrained answer')
        if self.keep_probs:
            self._raw = logits
        return ids

    def advance(self, token: int) -> bool:
        """Follow the chosen ``token``; True when the answer is complete (nothing may follow)."""
        if self.keep_probs and self._raw is not None:
            x = self._raw[:self.tok.words].astype(np.float64)
            top = x.max()
            self.probs.append(float(np.exp(x[token] - top) / np.exp(x - top).sum()))
        if token in self.tok.eos_ids:
            return True
        if not self.matcher.consume_token(int(token)):
            raise ConstraintError(f'token {token} breaks the grammar: '
                                  f'{_clean(self.matcher.get_error())}')
        return self.matcher.is_stopped()

    @property
    def complete(self) -> bool:
        """True when the tokens so far are a whole valid answer."""
        return self.matcher.is_accepting()


def _clean(message: str) -> str:
    return ' '.join(str(message).split()) or 'rejected by the grammar engine'


def cut_short(max_new_tokens: int, used: int, choices=None, json_schema=None, regex=None,
              kv_len: int | None = None) -> str:
    """Return why a typed answer that ran out of tokens is not an answer (one line).

    ``used``: tokens generated; ``kv_len``: set when the KV cache (not max_new_tokens) was full.
    The message names the budget, the tokens used and what would keep the answer inside it:
    for a schema, the places that let it grow without bound (``unbounded_parts``).
    """
    kind = 'choice' if choices else 'JSON answer' if json_schema else 'regex match'
    if kv_len is not None:
        budget = f'the KV cache (length {kv_len}) was full after {used} generated tokens'
    else:
        budget = f'max_new_tokens = {max_new_tokens} was reached ({used} tokens used)'
    if choices:
        bound = 'give max_new_tokens room for the longest choice'
    elif json_schema:
        parts = unbounded_parts(json_schema)
        bound = ('bound the answer (maxLength, maximum, maxItems, additionalProperties: false'
                 + (f'; unbounded here: {", ".join(parts)}' if parts else '') +
                 ') or raise max_new_tokens')
    else:
        bound = 'bound the regex\'s repetitions ({m,n} instead of + or *) or raise max_new_tokens'
    return f'{kind} cut short: {budget} before it was complete; {bound}'


def unbounded_parts(schema, path: str = '$', depth: int = 0) -> list:
    """Return where a JSON Schema lets an answer grow without bound, as short phrases.

    ``schema``: dict or its JSON text. A string without maxLength (and without enum, const
    or format), a number without maximum (it can grow digits), an array without maxItems, an
    object without ``additionalProperties: false``: each is named by its JSON path, e.g.
    ``$.name: string without maxLength``. Follows properties, items, prefixItems, anyOf /
    oneOf / allOf and local $ref (#/$defs/..., #/definitions/...), at most 8 levels deep.
    """
    root = json.loads(schema) if isinstance(schema, str) else schema
    out: list = []

    def walk(node, where, level, seen):
        if not isinstance(node, dict) or level > 8:
            return
        ref = node.get('$ref')
        if isinstance(ref, str) and ref.startswith('#/') and ref not in seen:
            target = root
            for key in ref[2:].split('/'):
                target = target.get(key, {}) if isinstance(target, dict) else {}
            walk(target, where, level + 1, seen | {ref})
        if 'enum' in node or 'const' in node:
            return
        types = node.get('type')
        types = set(types) if isinstance(types, list) else {types} if types else set()
        if 'string' in types and 'maxLength' not in node and 'format' not in node:
            out.append(f'{where}: string without maxLength')
        if types & {'integer', 'number'} and 'maximum' not in node and \
                'exclusiveMaximum' not in node:
            out.append(f'{where}: number without maximum')
        if 'array' in types and 'maxItems' not in node and node.get('items') is not False:
            out.append(f'{where}: array without maxItems')
        if 'object' in types and node.get('additionalProperties') is not False:
            out.append(f'{where}: object without additionalProperties: false')
        for key, sub in (node.get('properties') or {}).items():
            walk(sub, f'{where}.{key}', level + 1, seen)
        if isinstance(node.get('items'), dict):
            walk(node['items'], f'{where}[]', level + 1, seen)
        for i, sub in enumerate(node.get('prefixItems') or ()):
            walk(sub, f'{where}[{i}]', level + 1, seen)
        for key in ('anyOf', 'oneOf', 'allOf'):
            for sub in node.get(key) or ():
                walk(sub, where, level + 1, seen)

    walk(root, path, depth, frozenset())
    return list(dict.fromkeys(out))


def choice_index(choices, text: str) -> int:
    """Index of ``text`` in ``choices``, -1 when it is not one of them (e.g. cut short)."""
    try:
        return list(choices or ()).index(text)
    except ValueError:
        return -1
