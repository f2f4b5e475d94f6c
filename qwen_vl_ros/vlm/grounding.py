"""Object grounding: Qwen2.5-VL's boxes, forced to parse, mapped back to the source image.

Asked to locate things "in JSON format", Qwen2.5-VL answers
``[{"bbox_2d": [x1, y1, x2, y2], "label": "..."}]`` in ABSOLUTE pixels of the image it was given,
i.e. of the model input after our resize (448x448 on the AX650N build; Qwen2-VL's 0-1000 scale
does not apply; Qwen2.5-VL technical report, section 2.2.1, and its cookbooks). Here:

1. the prompt is that grounding form, and the JSON Schema of the box list (labels from the
   request, four integer coordinates inside the model input) is enforced while decoding, so the
   answer always parses; an empty list is a valid answer;
2. each box is mapped from model-input pixels back to SOURCE image pixels through the exact
   inverse of the resize applied (``fit_geometry`` mirrors vision.fit_frame: stretch, letterbox,
   crop), clamped to the image, corners ordered, empty boxes dropped;
3. each box's score is the model's mean probability (softmax over the whole vocabulary at
   temperature 1, before the grammar mask) of the tokens that spell its label.

Pixel convention: a box [x1, y1, x2, y2] spans from pixel edge x1 to pixel edge x2 (x2 - x1 =
width in pixels), in the image's own pixel grid; model-input pixel u covers source
x in [(u - offset) / scale, (u + 1 - offset) / scale).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .constrain import ConstraintError
from .errors import ImageError
from .vision import RESIZE_MODES

MAX_BOXES = 32           # an answer lists at most this many boxes (schema maxItems)


@dataclass(frozen=True)
class Geometry:
    """How a source frame of (src_h, src_w) sits in the model input: input = src * scale + offset.

    ``scale_x, scale_y``: model-input pixels per source pixel; ``offset_x, offset_y``: where the
    source origin lands in the model input (negative for crop: the cut-off part); sizes in
    pixels.
    """

    src_h: int
    src_w: int
    dst_h: int
    dst_w: int
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def to_input(self, box):
        """Source-pixel box (x1, y1, x2, y2) -> model-input pixels (floats, not clamped)."""
        x1, y1, x2, y2 = box
        return (x1 * self.scale_x + self.offset_x, y1 * self.scale_y + self.offset_y,
                x2 * self.scale_x + self.offset_x, y2 * self.scale_y + self.offset_y)

    def to_source(self, box):
        """Model-input box -> source pixels: corners ordered, clamped; None when empty."""
        x1, y1, x2, y2 = (float(v) for v in box)
        x1, x2 = sorted(((x1 - self.offset_x) / self.scale_x, (x2 - self.offset_x) / self.scale_x))
        y1, y2 = sorted(((y1 - self.offset_y) / self.scale_y, (y2 - self.offset_y) / self.scale_y))
        x1, x2 = min(max(x1, 0.0), self.src_w), min(max(x2, 0.0), self.src_w)
        y1, y2 = min(max(y1, 0.0), self.src_h), min(max(y2, 0.0), self.src_h)
        if x2 <= x1 or y2 <= y1:
            return None
        return (x1, y1, x2, y2)


def fit_geometry(src_hw: tuple, dst_hw: tuple, mode: str = 'stretch') -> Geometry:
    """Return the affine map of vision.fit_frame(frame of ``src_hw``, ``dst_hw``, ``mode``).

    Same rounding as fit_frame (the test compares both on real images): letterbox scales by
    min(H/h, W/w), rounds the scaled size, pads evenly (top/left = floor of half the slack);
    crop scales by max(H/h, W/w), cuts the centred (round(H/scale), round(W/scale)) window
    (top/left = floor of half the cut), then resizes it to (H, W). Raises ImageError for an
    unknown mode or an empty size.
    """
    fh, fw = int(src_hw[0]), int(src_hw[1])
    h, w = int(dst_hw[0]), int(dst_hw[1])
    if fh < 1 or fw < 1 or h < 1 or w < 1:
        raise ImageError(f'empty size: source {fh}x{fw}, model input {h}x{w}')
    if mode not in RESIZE_MODES:
        raise ImageError(f'resize mode {mode!r} is not one of {", ".join(RESIZE_MODES)}')
    if mode == 'stretch' or (fh, fw) == (h, w):
        return Geometry(fh, fw, h, w, w / fw, h / fh, 0.0, 0.0)
    if mode == 'letterbox':
        scale = min(h / fh, w / fw)
        nh, nw = max(1, round(fh * scale)), max(1, round(fw * scale))
        top, left = (h - nh) // 2, (w - nw) // 2
        return Geometry(fh, fw, h, w, nw / fw, nh / fh, float(left), float(top))
    scale = max(h / fh, w / fw)
    ch, cw = min(fh, round(h / scale)), min(fw, round(w / scale))
    top, left = (fh - ch) // 2, (fw - cw) // 2
    sx, sy = w / cw, h / ch
    return Geometry(fh, fw, h, w, sx, sy, -left * sx, -top * sy)


# -- the request ------------------------------------------------------------------------------
def grounding_prompt(labels=(), expression: str = '') -> str:
    """Qwen2.5-VL's grounding instruction for ``labels`` and/or a referring ``expression``.

    The wording follows the Qwen2.5-VL cookbook's spatial-understanding prompts ("Locate every
    ... in the image, and output the coordinates in JSON format"). ConstraintError when both
    are empty.
    """
    labels = [str(x).strip() for x in labels if str(x).strip()]
    expression = expression.strip()
    # the box format itself is enforced by box_schema, so the instruction stays short
    fmt = 'and output the coordinates in JSON format.'
    if expression and labels:
        return f'Locate {expression} in the image, labelled as {", ".join(labels)}, {fmt}'
    if expression:
        return f'Locate {expression} in the image, {fmt}'
    if labels:
        return f'Locate every {", ".join(labels)} in the image, {fmt}'
    raise ConstraintError('a detection needs labels and/or a prompt (a referring expression)')


def box_schema(labels=(), expression: str = '', size: tuple = (448, 448),
               max_boxes: int = MAX_BOXES) -> dict:
    """JSON Schema of the answer: a list of {"bbox_2d": [x1, y1, x2, y2], "label": ...}.

    Coordinates are integers inside the model input of ``size`` = (H, W); labels are one of
    ``labels`` (or the expression itself when no labels are given).
    """
    h, w = size
    names = [str(x).strip() for x in labels if str(x).strip()] or [expression.strip()]
    x = {'type': 'integer', 'minimum': 0, 'maximum': int(w)}
    y = {'type': 'integer', 'minimum': 0, 'maximum': int(h)}
    return {
        'type': 'array',
        'maxItems': int(max_boxes),
        'items': {
            'type': 'object',
            'properties': {
                'bbox_2d': {'type': 'array', 'prefixItems': [x, y, x, y], 'items': False,
                            'minItems': 4, 'maxItems': 4},
                'label': {'enum': list(dict.fromkeys(names))},
            },
            'required': ['bbox_2d', 'label'],
            'additionalProperties': False,
        },
    }


# -- the answer -------------------------------------------------------------------------------
@dataclass
class Detection:
    """One box in SOURCE image pixels (x1 < x2, y1 < y2, floats), its label and score (0..1)."""

    label: str
    box: tuple
    score: float
    input_box: tuple = ()     # as the model wrote it, in model-input pixels
    index: int = -1           # its place in the answer's list (dropped boxes keep counting)


@dataclass
class Detections:
    """What a detect request produced: the boxes, the raw answer, and the generation result."""

    detections: list
    text: str
    complete: bool            # False: cut by the token budget (result.problem), whole boxes kept
    dropped: int = 0          # boxes empty after clamping to the image
    result: object = None
    notes: list = field(default_factory=list)


def parse_boxes(text: str) -> tuple:
    r"""Parse a (possibly cut short) answer -> ([(item dict, start, end)], complete).

    ``start, end`` = the character span of the item's label value (inside its quotes) in
    ``text``, found by reading the item's JSON (any spelling: ``"two\u000Alines"`` and
    ``"two\nlines"`` are the same label, spanning what the answer wrote); (0, 0) when the
    item has no string label. An answer cut short keeps the items that were finished.
    ValueError when the text is not such a list (cannot happen for answers decoded under
    ``box_schema``).
    """
    dec = json.JSONDecoder()
    s = text.lstrip()
    lead = len(text) - len(s)
    if not s.startswith('['):
        raise ValueError(f'not a JSON list: {text[:40]!r}')
    items, i = [], 1
    while True:
        while i < len(s) and s[i] in _JSON_BLANKS + ',':
            i += 1
        if i >= len(s):
            return items, False
        if s[i] == ']':
            return items, True
        try:
            item, end = dec.raw_decode(s, i)
        except json.JSONDecodeError:
            return items, False     # the last item was cut short
        start, stop = _label_span(s, i) if isinstance(item, dict) else (-1, -1)
        span = (lead + start, lead + stop) if start >= 0 else (0, 0)
        items.append((item, *span))
        i = end


_JSON_BLANKS = ' \t\r\n'     # JSON's whitespace (RFC 8259, section 2)


def _label_span(s: str, i: int) -> tuple:
    """(start, end) of the "label" string's characters in the JSON object at ``s[i]``.

    ``s[i:]`` starts with an object json.JSONDecoder read whole; (-1, -1) when it has no
    "label" key with a string value. Keys and values are read with the json module's own
    scanner, so escapes anywhere in them do not matter.
    """
    dec = json.JSONDecoder()

    def blank(j):
        while s[j] in _JSON_BLANKS:
            j += 1
        return j

    j = blank(i + 1)
    while s[j] != '}':
        key, j = json.decoder.scanstring(s, j + 1)      # s[j] is the key's opening quote
        j = blank(blank(j) + 1)                          # past the colon
        if key == 'label' and s[j] == '"':
            _, end = json.decoder.scanstring(s, j + 1)
            return j + 1, end - 1
        _, j = dec.raw_decode(s, j)
        j = blank(j)
        if s[j] == ',':
            j = blank(j + 1)
    return -1, -1


def token_spans(tokenizer, ids) -> list:
    """Character span of each token in tokenizer.decode(ids) (cumulative decoding)."""
    spans, before = [], 0
    for k in range(len(ids)):
        now = len(tokenizer.decode(ids[:k + 1], skip_special_tokens=True))
        spans.append((before, max(before, now)))
        before = max(before, now)
    return spans


def detect(pipeline, frame, labels=(), expression: str = '', options=None,
           should_stop=None) -> Detections:
    """Find ``labels`` / the referring ``expression`` in one RGB frame (HxWx3 uint8).

    Returns boxes in the frame's own pixels. ``options``: GenerationOptions (max_new_tokens,
    sampling); its constraint fields are replaced by the box schema. Raises ConstraintError
    for a request with neither labels nor expression, and what Pipeline.describe raises.
    """
    import dataclasses

    from .pipeline import GenerationOptions

    prompt = grounding_prompt(labels, expression)
    schema = box_schema(labels, expression, pipeline.vision_size)
    opts = dataclasses.replace(options or GenerationOptions(), choices=None, regex=None,
                               json_schema=schema, token_probs=True)
    result = pipeline.describe([frame], prompt, opts, should_stop=should_stop)
    geometry = fit_geometry(frame.shape[:2], pipeline.vision_size, pipeline.resize)
    items, complete = parse_boxes(result.text)
    ids = [t for t in result.token_ids if t not in pipeline.eos_ids]
    spans = token_spans(pipeline.tokenizer, ids)
    probs = result.token_probs[:len(ids)]
    found, dropped = [], 0
    for index, (item, start, end) in enumerate(items):
        box = geometry.to_source(item['bbox_2d'])
        if box is None:
            dropped += 1
            continue
        found.append(Detection(item['label'], box, label_score(spans, probs, start, end),
                               tuple(item['bbox_2d']), index))
    notes = []
    complete = complete and not result.problem
    if result.problem:
        notes.append(f'{result.problem}; {len(items)} whole box(es) in the partial answer')
    if dropped:
        notes.append(f'{dropped} box(es) empty inside the image dropped')
    return Detections(found, result.text, complete, dropped, result, notes)


def label_score(spans, probs, start: int, end: int) -> float:
    """Mean of ``probs`` over the tokens whose character ``spans`` overlap [start, end).

    ``spans``: token_spans of the answer; ``probs``: each token's model probability
    (Result.token_probs); ``start, end``: a label's span from parse_boxes. 0.0 when no token
    overlaps (an empty label).
    """
    inside = [p for (a, b), p in zip(spans, probs) if a < end and b > start]
    return float(sum(inside) / len(inside)) if inside else 0.0
