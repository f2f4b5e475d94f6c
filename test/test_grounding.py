"""Grounding in the core: box mapping through the real resize, the box answer, detect()."""

import json
import re

import cv2
import numpy as np
import pytest

from qwen_vl_ros.vlm import GenerationOptions, Pipeline
from qwen_vl_ros.vlm.constrain import ConstraintError
from qwen_vl_ros.vlm.grounding import (box_schema, detect, fit_geometry, grounding_prompt,
                                       parse_boxes)
from qwen_vl_ros.vlm.vision import fit_frame

SOURCES = [(301, 517), (517, 301), (1081, 1919), (97, 45), (448, 448), (449, 447), (33, 35)]
INPUTS = [(448, 448), (280, 196)]
MODES = ('stretch', 'letterbox', 'crop')


def boxes_inside(h, w, rng, n=6, margin=0.32):
    """Boxes (x1, y1, x2, y2) with integer pixel edges in the central part of an h x w image."""
    out = []
    for _ in range(n):
        x1 = int(rng.integers(int(w * margin), int(w * 0.5)))
        y1 = int(rng.integers(int(h * margin), int(h * 0.5)))
        x2 = int(rng.integers(max(x1 + 2, int(w * 0.55)), int(w * (1 - margin)) + 3))
        y2 = int(rng.integers(max(y1 + 2, int(h * 0.55)), int(h * (1 - margin)) + 3))
        out.append((x1, y1, min(x2, w), min(y2, h)))
    return out


def found_box(img):
    """Pixel-edge box of the bright pixels of a resized image (threshold at half)."""
    ys, xs = np.nonzero(img[:, :, 0] > 127)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('size', INPUTS, ids=lambda s: f'{s[0]}x{s[1]}')
def test_box_through_the_real_resize_comes_back_within_one_pixel(mode, size):
    """A box drawn in the source, resized by fit_frame, found and mapped back: within 1 px.

    1 px of the coarser grid: a source pixel, or a model-input pixel when the frame is
    shrunk (the model can only name whole input pixels).
    """
    rng = np.random.default_rng(0)
    for src in SOURCES:
        h, w = src
        for box in boxes_inside(h, w, rng):
            img = np.zeros((h, w, 3), np.uint8)
            x1, y1, x2, y2 = box
            img[y1:y2, x1:x2] = 255
            fitted = fit_frame(img, size, mode, fill=(0, 0, 0))
            geometry = fit_geometry(src, size, mode)
            back = geometry.to_source(found_box(fitted))
            tol = (max(1.0, 1.0 / geometry.scale_x) + 1e-6,
                   max(1.0, 1.0 / geometry.scale_y) + 1e-6)
            err = np.abs(np.subtract(back, box))
            assert (err[[0, 2]] <= tol[0]).all() and (err[[1, 3]] <= tol[1]).all(), (
                src, size, mode, box, back)


@pytest.mark.parametrize('mode', MODES)
def test_inverse_is_exact_on_the_visible_part(mode):
    rng = np.random.default_rng(1)
    for src in SOURCES:
        g = fit_geometry(src, (448, 448), mode)
        for box in boxes_inside(*src, rng):
            box = tuple(v + 0.25 for v in box[:2]) + tuple(v - 0.25 for v in box[2:])
            assert np.allclose(g.to_source(g.to_input(box)), box, atol=1e-9)


def test_clamped_ordered_and_empty_boxes():
    g = fit_geometry((300, 600), (448, 448), 'letterbox')   # 448x224 image, bands of 112
    assert (g.scale_x, g.offset_y) == (448 / 600, 112.0)
    # swapped corners come back ordered; parts in the padding are clamped to the image
    assert np.allclose(g.to_source((448, 336, 0, 100)), (0, 0, 600, 300))
    assert g.to_source((10, 0, 100, 112)) is None          # wholly in the top band
    assert g.to_source((50, 200, 50, 300)) is None         # zero width
    c = fit_geometry((300, 600), (448, 448), 'crop')        # the centre 300x300 is kept
    assert np.allclose(c.to_source((0, 0, 448, 448)), (150, 0, 450, 300))
    s = fit_geometry((301, 517), (448, 448), 'stretch')
    assert np.allclose(s.to_source((0, 0, 448, 448)), (0, 0, 517, 301))


def test_geometry_matches_fit_frame_for_degenerate_sizes():
    """Frames far from square, e.g. 1 x 900: fit_frame's own rounding (max(1, ...))."""
    for src in [(1, 900), (900, 1), (3, 2)]:
        for mode in MODES:
            img = np.full(src + (3,), 255, np.uint8)
            fitted = fit_frame(img, (448, 448), mode, fill=(0, 0, 0))
            g = fit_geometry(src, (448, 448), mode)
            x1, y1, x2, y2 = g.to_input((0, 0, src[1], src[0]))
            fx1, fy1, fx2, fy2 = found_box(fitted)
            assert (max(0, round(x1)), max(0, round(y1))) == (fx1, fy1), (src, mode)
            assert (min(448, round(x2)), min(448, round(y2))) == (fx2, fy2), (src, mode)


def test_parse_boxes_complete_cut_short_and_label_spans():
    text = '[{"bbox_2d": [1, 2, 30, 40], "label": "cup"}, {"bbox_2d": [5, 6, 7, 8], "label": "pe'
    items, complete = parse_boxes(text)
    assert not complete and len(items) == 1
    item, start, end = items[0]
    assert item == {'bbox_2d': [1, 2, 30, 40], 'label': 'cup'} and text[start:end] == 'cup'
    items, complete = parse_boxes('[]')
    assert complete and items == []
    full = '[{"bbox_2d": [1, 2, 3, 4], "label": "a \\"b\\""}]'
    items, complete = parse_boxes(full)
    assert complete and items[0][0]['label'] == 'a "b"'
    with pytest.raises(ValueError):
        parse_boxes('```json')


# oracles written from JSON's grammar (RFC 8259): an item's start, a label's raw string value
ITEM = re.compile(r'\{')   # items are the answer's only objects
LABEL_VALUE = re.compile(r'"label": "((?:[^"\\]|\\.)*)"')


@pytest.mark.parametrize('spelling', ['two\\nlines', 'two\\u000Alines', 'two\\u000alines',
                                      'tab\\u0009here', '\\u0063up', 'a \\"b\\"'])
def test_label_spans_follow_any_json_spelling(spelling):
    """The label's span is where the answer wrote it, however JSON escapes spell it."""
    from qwen_vl_ros.vlm.grounding import label_score
    text = ('[{"bbox_2d": [1, 2, 30, 40], "label": "cup"}, '
            f'{{"bbox_2d": [5, 6, 70, 80], "label": "{spelling}"}}, '
            f'{{"label": "{spelling}", "bbox_2d": [5, 6, 70, 80]}}]')
    items, complete = parse_boxes(text)
    assert complete and len(items) == 3
    for item, start, end in items[1:]:
        assert item['label'] == json.loads(f'"{spelling}"')
        assert text[start:end] == spelling
    # scored from that span: the mean probability of the tokens that overlap it
    spans = [(k, k + 1) for k in range(len(text))]         # one token per character
    probs = [0.5 if k < items[1][1] else 0.25 for k in range(len(text))]
    assert label_score(spans, probs, items[1][1], items[1][2]) == 0.25
    assert label_score(spans, probs, items[0][1], items[0][2]) == 0.5
    assert label_score(spans, probs, 3, 3) == 0.0


def test_detection_ids_are_the_boxes_index_in_the_answer(small_pipe):
    """Boxes dropped (empty inside the image: in the letterbox band) keep their number."""
    detect_io = pytest.importorskip('qwen_vl_ros.ros.detect')
    if not detect_io.AVAILABLE:
        pytest.skip(detect_io.MISSING)
    from std_msgs.msg import Header
    # letterboxed into rows 92..132 of the 224x224 input: boxes above them are dropped
    img = np.random.default_rng(4).integers(0, 256, (54, 300, 3), np.uint8)
    checked = 0
    for seed in range(16):
        found = detect(small_pipe, img, ['cup', 'person'], '', GenerationOptions(
            max_new_tokens=160, greedy=False, temperature=3.0, top_k=0, top_p=1.0,
            repetition_penalty=1.0, seed=seed))
        answer = [m.start() for m in ITEM.finditer(found.text)]
        kept = [d.index for d in found.detections]
        assert kept == sorted(kept) and len(set(kept)) == len(kept)
        arr = detect_io.detections_msg(found, Header(frame_id='cam'))
        assert [d.id for d in arr.detections] == [str(i) for i in kept]
        for d in found.detections:      # the box written at that place in the answer
            written = json.loads(found.text[answer[d.index]:].split('}', 1)[0] + '}')
            assert tuple(written['bbox_2d']) == d.input_box and written['label'] == d.label
        if found.dropped and kept and kept != list(range(len(kept))):
            checked += 1
    assert checked, 'no answer in 16 dropped a box before a kept one: nothing was checked'


def test_prompt_and_schema():
    assert 'cup, person' in grounding_prompt(['cup', 'person'])
    assert 'the red cup' in grounding_prompt([], 'the red cup')
    with pytest.raises(ConstraintError, match='labels and/or a prompt'):
        grounding_prompt([], ' ')
    schema = box_schema(['cup', 'cup', 'person'], '', (280, 196))
    item = schema['items']['properties']
    assert item['label'] == {'enum': ['cup', 'person']}
    assert [c['maximum'] for c in item['bbox_2d']['prefixItems']] == [196, 280, 196, 280]


@pytest.fixture(scope='module')
def small_pipe(export_variant):
    # 224x224 input: the tiny tokenizer's long prompts fit the 320-token prefill
    return Pipeline.load(str(export_variant(image_size=(224, 224))), threads=1,
                         resize='letterbox', progress=lambda m: None)


def test_detect_on_the_tiny_model(small_pipe):
    """Every answer parses; boxes in the source image, labels from the request, scores right.

    The score is the mean model probability of the label's tokens (checked with score()).
    """
    pipe = small_pipe
    img = np.random.default_rng(3).integers(0, 256, (301, 517, 3), np.uint8)
    labels = ['cup', 'person']
    seen = 0
    for seed in range(10):
        found = detect(pipe, img, labels, '', GenerationOptions(
            max_new_tokens=60, greedy=False, temperature=3.0, top_k=0, top_p=1.0,
            repetition_penalty=1.0, seed=seed))
        # cut short (max_new_tokens) or complete, the whole boxes are kept
        assert found.complete == (found.result.finish_reason == 'stop')
        if found.complete:
            answer = json.loads(found.text)
        else:
            answer = json.loads(found.text[:found.text.rindex('}') + 1] + ']')
            assert 'cut short' in found.notes[0]
        assert len(answer) == len(found.detections) + found.dropped
        probs = None
        for d in found.detections:
            assert d.label in labels
            x1, y1, x2, y2 = d.box
            assert 0 <= x1 < x2 <= 517 and 0 <= y1 < y2 <= 301
            assert all(0 <= v <= 224 for v in d.input_box)
            if probs is None:
                logits = pipe.score([img], grounding_prompt(labels), found.result.token_ids)
                x = logits.astype(np.float64)
                p = np.exp(x - x.max(1, keepdims=True))
                probs = (p / p.sum(1, keepdims=True))[
                    np.arange(len(found.result.token_ids)), found.result.token_ids]
            seen += 1
        if found.detections:
            # the label's tokens: those whose text lies inside the label value as written
            text, ids = found.text, found.result.token_ids
            first = found.detections[0]
            at, end = LABEL_VALUE.search(text, list(ITEM.finditer(text))[first.index].start()
                                         ).span(1)
            pos, inside = 0, []
            for k, t in enumerate(ids):
                piece = pipe.tokenizer.decode([t])
                if pos < end and pos + len(piece) > at:
                    inside.append(k)
                pos += len(piece)
            assert first.score == pytest.approx(probs[inside].mean(), rel=1e-4)
    assert seen, 'no box in 10 sampled answers: nothing was checked'


def test_detect_without_labels_or_prompt_is_refused_before_the_model(small_pipe):
    img = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ConstraintError):
        detect(small_pipe, img, [], '')


def test_found_box_helper_sees_a_drawn_rectangle():
    img = np.zeros((20, 30, 3), np.uint8)
    cv2.rectangle(img, (3, 4), (9, 14), (255, 255, 255), -1)
    assert found_box(img) == (3, 4, 10, 15)


def test_cli_detect_prints_boxes_in_the_image_pixels(export_variant, tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    model = export_variant(image_size=(224, 224))
    image = tmp_path / 'odd.png'
    cv2.imwrite(str(image), np.random.default_rng(5).integers(0, 256, (97, 131, 3), np.uint8))
    script = Path(sys.executable).parent / 'qwen-vl-describe'
    for seed in range(4):
        r = subprocess.run([str(script), '--model-dir', str(model), '--threads', '1',
                            '--image', str(image), '--detect', 'cup,person', '--resize', 'crop',
                            '--temperature', '3.0', '--top-k', '0', '--top-p', '1.0',
                            '--seed', str(seed), '--max-new-tokens', '60'],
                           capture_output=True, text=True, timeout=300)
        # a box list cut by the budget: exit 1, success false, the whole boxes still printed
        assert r.returncode in (0, 1), r.stderr
        out = json.loads(r.stdout)
        assert out['success'] == (r.returncode == 0) == out['complete']
        assert r.returncode == 0 or 'max_new_tokens = 60' in out['message'] in r.stderr
        assert out['image_size'] == [131, 97] and out['text'].startswith('[')
        for d in out['detections']:
            x1, y1, x2, y2 = d['box']
            assert d['label'] in ('cup', 'person') and 0 <= x1 < x2 <= 131 and 0 <= y1 < y2 <= 97
    r = subprocess.run([str(script), '--model-dir', str(model), '--image', str(image),
                        '--refer', ' '], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and 'labels and/or a prompt' in r.stderr
    assert 'loading' not in r.stderr   # refused before the model is loaded
