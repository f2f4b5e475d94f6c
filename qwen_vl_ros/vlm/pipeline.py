"""Frames and a prompt in, text out: the Qwen2.5-VL axmodel pipeline from top to bottom.

model files -> runtime sessions -> frames to patches -> vision features
-> prompt ids and rope positions -> embeddings with the vision rows spliced in
-> prefill -> decode with the KV cache -> text
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from .decoder import DecoderStack
from .embeddings import EmbeddingTable
from .constrain import GrammarTokenizer, choice_index, cut_short, grammar_for
from .errors import ImageError, ModelDirError, OptionsError, PromptTooLongError
from .model_dir import find_model_files
from .prompt import PromptBuilder, VisionBlock, load_tokenizer
from .reuse import PrefixCache, VisionCache, patch_digest
from .runtime import select_runtime
from .sampling import Sampler, SamplingOptions
from .streaming import TextStream
from .vision import RESIZE_MODES, check_frame, fit_frame, frames_to_patches

log = logging.getLogger('qwen_vl_ros')


@dataclass
class GenerationOptions:
    """Per-request settings; None = the model's generation_config.json (or HF's default)."""

    max_new_tokens: int = 128
    greedy: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    second_per_grid_t: float = 1.0   # video: seconds per temporal group (AXERA's demo: 1.0)
    # Typed answers (constrain.py; at most one): exactly one of these strings, JSON valid
    # against this schema (text or dict), or a full match of this regex (Rust syntax).
    choices: tuple | None = None
    json_schema: str | dict | None = None
    regex: str | None = None
    token_probs: bool = False   # keep each chosen token's model probability (Result)

    def check(self) -> GenerationOptions:
        """Return self, or raise OptionsError for a value no request can be served with.

        max_new_tokens >= 1; temperature > 0 (0 is no temperature: greedy is ``greedy``);
        top_k >= 0; 0 < top_p <= 1; repetition_penalty > 0; second_per_grid_t > 0; seed >= 0
        (numpy's generator). The ranges are transformers' GenerationConfig.validate ones.
        """
        bad = [f'{name} must be {rule}, got {value!r}' for name, value, rule, ok in (
            ('max_new_tokens', self.max_new_tokens, 'at least 1', lambda v: v >= 1),
            ('temperature', self.temperature, '> 0 (for argmax decoding ask for greedy)',
             lambda v: v > 0),
            ('top_k', self.top_k, '>= 0 (0 = no top-k filter)', lambda v: v >= 0),
            ('top_p', self.top_p, 'in (0, 1]', lambda v: 0 < v <= 1),
            ('repetition_penalty', self.repetition_penalty, '> 0 (1 = none)', lambda v: v > 0),
            ('second_per_grid_t', self.second_per_grid_t, '> 0', lambda v: v > 0),
            ('seed', self.seed, '>= 0', lambda v: v >= 0),
        ) if value is not None and not (_finite(value) and ok(value))]
        if bad:
            raise OptionsError('; '.join(bad))
        return self

    def resolve(self, gen_cfg: dict) -> SamplingOptions:
        """Fill unset fields from generation_config the way transformers does."""
        def pick(value, key, default):
            return value if value is not None else gen_cfg.get(key, default)
        do_sample = (not self.greedy) if self.greedy is not None else \
            bool(gen_cfg.get('do_sample', False))
        return SamplingOptions(
            do_sample=do_sample,
            temperature=float(pick(self.temperature, 'temperature', 1.0)),
            top_k=int(pick(self.top_k, 'top_k', 50)),
            top_p=float(pick(self.top_p, 'top_p', 1.0)),
            repetition_penalty=float(pick(self.repetition_penalty, 'repetition_penalty', 1.0)),
            seed=self.seed)


@dataclass
class Result:
    """What one request produced, with where the time went."""

    text: str
    token_ids: list
    prompt_tokens: int
    finish_reason: str  # 'stop' (eos id), 'length' (max_new_tokens / KV length), 'cancelled'
    timings_ms: dict = field(default_factory=dict)
    tokens_per_second: float = 0.0
    choice_index: int = -1      # with choices: which one the text is (-1: none, e.g. cut short)
    token_probs: list = field(default_factory=list)   # options.token_probs, constrained only
    vision_cached: bool = False      # the vision features came from the cache (reuse.py)
    reused_prompt_tokens: int = 0    # prompt rows kept in the KV cache, not prefilled again
    # Typed answers (constrain.py): why this is not an answer ('' = it is one, or free text).
    # Set when the token budget cut the answer before it was complete: every interface then
    # reports success false with this reason and keeps the partial text (finish 'length').
    problem: str = ''


class Pipeline:
    """A loaded model: call ``describe`` from one thread (runtime sessions are single-threaded)."""

    def __init__(self, files, runtime, vision, decoder: DecoderStack, embeddings, tokenizer,
                 system_prompt: str = '', resize: str = 'stretch', vision_cache_frames: int = 2):
        self.files = files
        self.runtime = runtime
        self.vision = vision
        self.decoder = decoder
        self.embeddings = embeddings
        self.tokenizer = tokenizer
        self.prompts = PromptBuilder(tokenizer, files.config)
        self.system_prompt = system_prompt
        if resize not in RESIZE_MODES:
            raise ImageError(f'resize mode {resize!r} is not one of {", ".join(RESIZE_MODES)}')
        self.resize = resize
        cfg = files.config
        self.vision_input = vision.inputs(0)[0]
        self.vision_size = self._vision_size()
        self.grid = (self.vision_size[0] // cfg.patch_size, self.vision_size[1] // cfg.patch_size)
        eos = files.generation_config.get('eos_token_id', tokenizer.eos_token_id)
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.fill = tuple(int(round(m * 255)) for m in files.image_mean)
        self._grammar_tokenizer = None
        # Work kept for follow-up questions about the same frame (reuse.py)
        self.vision_cache = VisionCache(vision_cache_frames)
        self.prefix_cache = PrefixCache(decoder.can_resume,
                                        (cfg.image_token_id, cfg.video_token_id))

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir: str, tokenizer_dir: str | None = None, backend: str = 'auto',
             providers=None, provider_options=None, threads: int = 0, system_prompt: str = '',
             resize: str = 'stretch', kv_len: int = 1023, progress=None,
             vision_cache_frames: int = 2, npu_provider: str = 'auto',
             npu_device: int = 0) -> Pipeline:
        """Find, check and open every model file; ``progress(str)`` hears each stage.

        ``kv_len`` is used only by the older pyaxengine API, which cannot report model shapes.
        ``vision_cache_frames``: vision features of this many frame sets kept (0 = none).
        ``npu_provider`` / ``npu_device``: pyaxengine's provider and M.2 card index
        (runtime/npu_choice.py); ``runtime.where`` then says what runs the models.
        """
        say = progress or log.info
        t0 = time.perf_counter()
        files = find_model_files(model_dir, tokenizer_dir)
        cfg = files.config
        runtime = select_runtime(backend, files.backend_kind, providers, provider_options,
                                 threads, npu_provider, npu_device)
        say(f'loading {model_dir} with {runtime.name}: {cfg.num_layers} layers, '
            f'hidden {cfg.hidden_size}, vocab {cfg.vocab_size}')
        vision = runtime.open({-1: files.vision}, 'vision', files, kv_len)
        say(f'vision model loaded ({time.perf_counter() - t0:.1f} s)')
        layers = []
        for i, paths in enumerate(files.layers):
            layers.append(runtime.open(paths, 'layer', files, kv_len))
            if (i + 1) % max(1, cfg.num_layers // 4) == 0 or i + 1 == cfg.num_layers:
                say(f'decoder layers loaded: {i + 1}/{cfg.num_layers} '
                    f'({time.perf_counter() - t0:.1f} s)')
        post = runtime.open({-1: files.post}, 'post', files, kv_len)
        decoder = DecoderStack(layers, post)
        embeddings = EmbeddingTable(files.embeddings, cfg.vocab_size, cfg.hidden_size)
        if decoder.hidden != cfg.hidden_size or decoder.kv_dim != cfg.kv_dim:
            raise ModelDirError(
                f'layer models take hidden {decoder.hidden} / kv_dim {decoder.kv_dim} but '
                f'config.json says {cfg.hidden_size} / {cfg.kv_dim}')
        tokenizer = load_tokenizer(files.tokenizer_dir)
        pipe = cls(files, runtime, vision, decoder, embeddings, tokenizer, system_prompt, resize,
                   vision_cache_frames)
        say(f'model ready in {time.perf_counter() - t0:.1f} s: vision {pipe.vision_size[0]}x'
            f'{pipe.vision_size[1]}, prefill {decoder.chunk} x {len(decoder.prefill_groups)} '
            f'group(s), prompt up to {decoder.max_prompt} tokens, KV length {decoder.kv_len}')
        kv = decoder.kv[0].where if decoder.kv else 'on the host (fed to each run)'
        say(f'models run on {runtime.where or runtime.name}; KV cache {kv}')
        return pipe

    def _vision_size(self) -> tuple:
        """(H, W) the vision model was compiled for, from its input shape (and file name)."""
        cfg = self.files.config
        shape = self.vision_input.shape
        per_patch = cfg.temporal_patch_size * cfg.patch_size ** 2
        if len(shape) != 4 or shape[2] != per_patch or shape[3] != 3:
            raise ModelDirError(f'{self.files.vision}: input {shape} is not (1, patches, '
                                f'{per_patch}, 3) uint8 NHWC patches')
        seq, p = shape[1], cfg.patch_size
        hint = self.files.vision_size_hint
        if hint and (hint[0] // p) * (hint[1] // p) == seq:
            return hint
        side = math.isqrt(seq)
        if side * side != seq:
            raise ModelDirError(f'{self.files.vision}: {seq} patches is not square; name the '
                                'file *_<H>x<W>.* to give its size')
        return side * p, side * p

    @property
    def max_prompt_tokens(self) -> int:
        """Longest prompt (text + vision tokens) the compiled prefill accepts."""
        return self.decoder.max_prompt

    # -- one request ------------------------------------------------------------------------
    def _prepare(self, frames, prompt: str, second_per_grid_t: float, clock: dict,
                 frame_keys=None, should_stop=None):
        """Frames and prompt -> (ids, rope positions, embeddings with vision spliced in, key).

        ``key`` names the vision content (None without frames); ``clock['vision_cached']``
        tells whether its features came from the cache. ``frame_keys`` (one hashable per
        frame) name the frames; without them the patch bytes do. ``should_stop()`` True
        before the vision model runs raises _Stopped (a request cancelled before it began).
        """
        cfg = self.files.config
        dec = self.decoder
        # frames -> patches (first: a bad frame is refused before any model runs)
        frames = list(frames or [])
        if frame_keys is not None and len(frame_keys) != len(frames):
            raise ValueError(f'{len(frame_keys)} frame keys for {len(frames)} frames')
        patches, key, feats = None, None, None
        if frames:
            key = (self.resize, self.vision_size, tuple(frame_keys)) if frame_keys else None
            feats = self.vision_cache.get(key) if key is not None else None
            if feats is not None:
                for f in frames:   # a kept frame is still a frame: refuse what is not one
                    check_frame(f)
            else:
                fitted = [fit_frame(f, self.vision_size, self.resize, self.fill) for f in frames]
                patches = frames_to_patches(fitted, cfg.patch_size, cfg.spatial_merge_size,
                                            cfg.temporal_patch_size)
                if key is None:
                    key = (self.resize, self.vision_size, patch_digest(patches))
                    feats = self.vision_cache.get(key)
        clock['vision_cached'] = feats is not None
        blocks = self._blocks_for(len(frames), second_per_grid_t)

        # prompt -> ids and positions; refuse what cannot be prefilled
        ids, positions = self.prompts.build(prompt, self.system_prompt, blocks)
        dec.check_prompt(len(ids))
        embeds = self.embeddings.lookup(ids, dec.dtype)
        clock['preprocessed'] = time.perf_counter()

        # vision features (one call per temporal group, unless kept), spliced over the pad run
        if frames:
            if feats is None and should_stop is not None and should_stop():
                raise _Stopped(len(ids))
            if feats is None:
                feats = [self.vision.run({self.vision_input.name: patches[g:g + 1]})[0]
                         for g in range(len(patches))]
                feats = np.concatenate(feats).reshape(-1, dec.hidden).astype(dec.dtype,
                                                                               copy=False)
            pad = cfg.image_token_id if blocks[0].kind == 'image' else cfg.video_token_id
            where = np.flatnonzero(ids == pad)
            if len(where) != len(feats):
                raise ModelDirError(f'the vision model gave {len(feats)} tokens, the prompt has '
                                    f'{len(where)} pads: model and config disagree')
            embeds[where] = feats
            self.vision_cache.put(key, feats)
        clock['vision'] = time.perf_counter()
        return ids, positions, embeds, key

    def _prefill(self, ids, positions, embeds, key, should_stop=None) -> tuple:
        """Prefill what the KV cache does not hold yet; return (first logits, rows reused).

        ``should_stop()`` is asked before each prefill chunk; True raises _Stopped (the
        cache then holds no prompt a follow-up may reuse; the vision features stay good).
        """
        dec = self.decoder
        kept = self.prefix_cache.reusable(ids, positions, key, dec.cache_epoch)
        start = dec.chunk_starts(len(ids), kept)[0]
        self.prefix_cache.forget()   # the rows change now; recorded again once they are right
        try:
            hidden = dec.prefill(embeds, positions, start, should_stop)
            logits = None if hidden is None else dec.logits(hidden)
        except BaseException:
            self.vision_cache.drop(key)   # e.g. NaN features: NaN first logits; keep none
            raise
        if logits is None:
            raise _Stopped(len(ids), start)
        self.prefix_cache.hold(ids, positions, key, dec.cache_epoch)
        return logits, start

    def _blocks_for(self, n_frames: int, second_per_grid_t: float = 1.0) -> tuple:
        """Return the prompt's vision blocks for ``n_frames`` (none, one image, or one video)."""
        if not n_frames:
            return ()
        groups = -(-n_frames // self.files.config.temporal_patch_size)
        kind = 'image' if n_frames == 1 else 'video'
        return (VisionBlock(kind, groups, *self.grid, second_per_grid_t),)

    def _step(self, token: int, slot: int, position: int) -> np.ndarray:
        """Feed one token at cache row ``slot`` / rope ``position``; return the next logits."""
        dec = self.decoder
        return dec.logits(dec.decode_step(self.embeddings.lookup([token], dec.dtype), slot,
                                          position))

    def guide(self, opts: GenerationOptions):
        """Return the constraint state of ``opts`` (None: unconstrained); ConstraintError if bad.

        llguidance's view of the tokenizer is built at the first constrained request.
        """
        grammar = grammar_for(opts.choices, opts.json_schema, opts.regex)
        if grammar is None:
            return None
        return self.grammar_tokenizer().guide(grammar, keep_probs=opts.token_probs)

    def grammar_tokenizer(self) -> GrammarTokenizer:
        """Return llguidance's view of the tokenizer, built at the first call (~5 s, 151k)."""
        if self._grammar_tokenizer is None:
            t0 = time.perf_counter()
            self._grammar_tokenizer = GrammarTokenizer(
                self.tokenizer, self.files.config.vocab_size, self.eos_ids)
            log.info(f'typed answers: the grammar engine read the tokenizer in '
                     f'{time.perf_counter() - t0:.1f} s (once per model)')
        return self._grammar_tokenizer

    def describe(self, frames, prompt: str, options: GenerationOptions | None = None,
                 on_text=None, should_stop=None, frame_keys=None, on_token=None) -> Result:
        """Answer ``prompt`` about ``frames`` (0 = text only, 1 = image, more = video).

        ``on_text(piece)`` is called with each newly completed piece of text while decoding,
        ``on_token(token_id)`` with each generated token (the first comes from the prefill);
        ``should_stop()`` is asked before the vision model, before each prefill chunk (a
        chunked-prefill build has several) and before each decode step, and ends the request
        early with finish reason 'cancelled' when it returns True (before the first token:
        no tokens, empty text). With ``choices`` / ``json_schema`` /
        ``regex`` the logits are masked before sampling and generation ends (finish reason
        'stop') as soon as the answer is complete; a bad constraint raises ConstraintError
        before any model runs. A typed answer the budget cut (max_new_tokens or the KV length)
        has ``Result.problem`` set (constrain.cut_short) and choice_index -1: not an answer.
        ``frame_keys``: one hashable per frame naming its content (e.g. topic, stamp,
        frame_id), for the vision cache; without them the frames are known by
        their patch bytes. A follow-up question reuses the frame's vision features and the
        prompt's common prefix in the KV cache (reuse.py).
        """
        opts = (options or GenerationOptions()).check()
        guide = self.guide(opts)
        dec = self.decoder
        clock = {'start': time.perf_counter()}
        try:
            ids, positions, embeds, key = self._prepare(frames, prompt, opts.second_per_grid_t,
                                                        clock, frame_keys, should_stop)
            # prefill (what the cache does not hold) -> first logits
            sampler = Sampler(opts.resolve(self.files.generation_config), ids)
            logits, reused = self._prefill(ids, positions, embeds, key, should_stop)
        except _Stopped as stopped:
            return _cancelled_before_the_first_token(clock, stopped)
        t_first = time.perf_counter()

        # decode: slot = next cache row, position = next rope position (they differ)
        stream = TextStream(self.tokenizer)
        out: list = []
        finish = 'length'
        total = len(ids)
        dec.start_decode(total)
        position = int(positions.max()) + 1
        while True:
            token = sampler(logits) if guide is None else sampler(logits,
                                                                  guide.candidates(logits))
            out.append(token)
            if on_token is not None:
                on_token(token)
            if token in self.eos_ids:
                finish = 'stop'
                break
            if on_text is not None:
                piece = stream.push(token)
                if piece:
                    on_text(piece)
            if guide is not None and guide.advance(token):
                finish = 'stop'   # the grammar allows nothing more: no end token to wait for
                break
            slot = total + len(out) - 1
            if len(out) >= opts.max_new_tokens or slot >= dec.kv_len:
                break
            if should_stop is not None and should_stop():
                finish = 'cancelled'
                break
            logits = self._step(token, slot, position + len(out) - 1)
        problem = ''
        if guide is not None and finish == 'length':
            # the budget ran out before the typed answer ended: a success only if complete
            finish, problem = self._typed_end(guide, sampler, opts, out, total, position)
        if on_text is not None:
            tail = stream.flush()   # a last token may end mid-character: send what is held
            if tail:
                on_text(tail)
        t_end = time.perf_counter()

        steps = len(out) - 1  # decode steps run: the first token came from the prefill
        decode_s = t_end - t_first
        start, pre, vis = clock['start'], clock['preprocessed'], clock['vision']
        text = self.tokenizer.decode(out, skip_special_tokens=True)
        return Result(
            text=text,
            token_ids=[int(t) for t in out],
            prompt_tokens=total,
            finish_reason=finish,
            timings_ms={'preprocess': 1e3 * (pre - start), 'vision': 1e3 * (vis - pre),
                        'prefill': 1e3 * (t_first - vis), 'decode': 1e3 * decode_s,
                        'time_to_first_token': 1e3 * (t_first - start)},
            tokens_per_second=steps / decode_s if steps and decode_s > 0 else 0.0,
            choice_index=choice_index(opts.choices, text) if opts.choices and not problem
            else -1,
            token_probs=guide.probs if guide is not None else [],
            vision_cached=clock['vision_cached'], reused_prompt_tokens=reused, problem=problem)

    def _typed_end(self, guide, sampler, opts: GenerationOptions, out: list, total: int,
                   position: int) -> tuple:
        """(finish reason, problem) of a typed answer whose token budget ran out.

        Where the grammar may end, one more decode step asks the model whether it ends the
        answer there (the end token is not added: the answer stays within max_new_tokens);
        it is then complete ('stop', no problem). Otherwise ('length', cut_short's reason).
        """
        dec = self.decoder
        slot = total + len(out) - 1
        kv_full = slot >= dec.kv_len
        if guide.complete and not kv_full:
            logits = self._step(out[-1], slot, position + len(out) - 1)
            if sampler(logits, guide.candidates(logits)) in self.eos_ids:
                return 'stop', ''
        return 'length', cut_short(opts.max_new_tokens, len(out), opts.choices,
                                   opts.json_schema, opts.regex,
                                   dec.kv_len if kv_full else None)

    def score(self, frames, prompt: str, continuation, second_per_grid_t: float = 1.0,
              frame_keys=None):
        """Teacher forcing: float32 logits (len(continuation), V) before each given token.

        Row 0 comes from the prefill; row k from feeding continuation[k-1]. For checking the
        pipeline against a reference, and for ranking candidate answers.
        """
        dec = self.decoder
        ids, positions, embeds, key = self._prepare(frames, prompt, second_per_grid_t, {},
                                                    frame_keys)
        rows = [self._prefill(ids, positions, embeds, key)[0]]
        dec.start_decode(len(ids))
        position = int(positions.max()) + 1
        for k, token in enumerate(continuation[:-1]):
            slot = len(ids) + k
            if slot >= dec.kv_len:
                raise PromptTooLongError(f'{len(ids)} prompt + {len(continuation)} tokens '
                                         f'exceed the KV length {dec.kv_len}')
            rows.append(self._step(int(token), slot, position + k))
        return np.stack(rows)


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except TypeError:
        return False


class _Stopped(Exception):
    """should_stop() said stop before the first token (before vision, or between chunks)."""

    def __init__(self, prompt_tokens: int, reused: int = 0):
        super().__init__('cancelled before the first token')
        self.prompt_tokens = prompt_tokens
        self.reused = reused


def _cancelled_before_the_first_token(clock: dict, stopped: _Stopped) -> Result:
    """Return the Result of a request stopped before its first token: no tokens, no text."""
    now = time.perf_counter()
    start = clock['start']
    pre = clock.get('preprocessed', now)
    vis = clock.get('vision', now)
    return Result(text='', token_ids=[], prompt_tokens=stopped.prompt_tokens,
                  finish_reason='cancelled',
                  timings_ms={'preprocess': 1e3 * (pre - start), 'vision': 1e3 * (vis - pre),
                              'prefill': 1e3 * (now - vis), 'decode': 0.0,
                              'time_to_first_token': 0.0},
                  vision_cached=clock.get('vision_cached', False),
                  reused_prompt_tokens=stopped.reused)
