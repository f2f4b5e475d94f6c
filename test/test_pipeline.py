"""The pipeline on exported ONNX stand-ins equals transformers' Qwen2.5-VL, token for token.

The transformers values come from hf_cache.reference: computed where torch is, read back from a
torch run's files elsewhere (make test-jazzy).
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import hf_cache

from qwen_vl_ros.vlm import (  # noqa: E402
    GenerationOptions, ModelDirError, Pipeline, PromptTooLongError)

PROMPT = 'Describe this image.'
N = 24
GREEDY = GenerationOptions(max_new_tokens=N, greedy=True, repetition_penalty=1.0)


def frame(h, w, seed=0):
    """Make a random RGB frame (random pixels give the tiny vision tower something to see)."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope='module')
def pipe(tiny_onnx_dir):
    return Pipeline.load(str(tiny_onnx_dir), backend='onnxruntime', threads=1,
                         progress=lambda m: None)


def check_equal_to_hf(pipe, hf_dir, frames, prompt=PROMPT, second_per_grid_t=1.0):
    feed = hf_cache.reference(hf_dir, frames, prompt, N, second_per_grid_t)
    ref, ref_logits = feed['ids'].tolist(), feed['logits']
    # near-ties would make a token comparison meaningless
    assert hf_cache.min_top2_gap(ref_logits) > 1e-3
    opts = GenerationOptions(max_new_tokens=N, greedy=True, repetition_penalty=1.0,
                             second_per_grid_t=second_per_grid_t)
    result = pipe.describe(frames, prompt, opts)
    assert result.token_ids == ref
    assert result.finish_reason == 'length'
    assert result.prompt_tokens == feed['input_ids'].shape[0]
    logits = pipe.score(frames, prompt, ref, second_per_grid_t)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)
    return result, feed


def test_image_448_equals_transformers(pipe, tiny_hf_dir):
    result, feed = check_equal_to_hf(pipe, tiny_hf_dir, [frame(448, 448)])
    ids, positions = pipe.prompts.build(PROMPT, '', pipe._blocks_for(1))
    np.testing.assert_array_equal(ids, feed['input_ids'])
    np.testing.assert_array_equal(positions, feed['positions'])
    assert set(result.timings_ms) >= {'preprocess', 'vision', 'prefill', 'decode'}
    assert result.tokens_per_second > 0


def test_non_square_image_equals_transformers(export_variant, tiny_hf_dir):
    # 280 x 196: several 112-px windows in both directions, rows != columns
    p = Pipeline.load(str(export_variant(image_size=(280, 196))), threads=1,
                      progress=lambda m: None)
    assert p.vision_size == (280, 196)
    check_equal_to_hf(p, tiny_hf_dir, [frame(280, 196, seed=1)])


def test_text_only_prompt_equals_transformers(pipe, tiny_hf_dir):
    _, feed = check_equal_to_hf(pipe, tiny_hf_dir, [], prompt='What is a robot?')
    ids, positions = pipe.prompts.build('What is a robot?', '', ())
    np.testing.assert_array_equal(ids, feed['input_ids'])
    np.testing.assert_array_equal(positions, feed['positions'])


@pytest.mark.parametrize('second_per_grid_t', [1.0, 2.0])
def test_video_of_four_frames_equals_transformers(export_variant, tiny_hf_dir,
                                                  second_per_grid_t):
    p = Pipeline.load(str(export_variant(image_size=(112, 168))), threads=1,
                      progress=lambda m: None)
    frames = [frame(112, 168, seed=10 + s) for s in range(4)]
    _, feed = check_equal_to_hf(p, tiny_hf_dir, frames, 'What happens?', second_per_grid_t)
    blocks = p._blocks_for(4, second_per_grid_t)
    ids, positions = p.prompts.build('What happens?', '', blocks)
    np.testing.assert_array_equal(positions, feed['positions'])
    # the second frame pair's temporal index moved on by second_per_grid_t * tokens_per_second
    video = ids == p.files.config.video_token_id
    t_rows = positions[0][video]
    assert t_rows.max() - t_rows.min() == int(second_per_grid_t * 2)


def test_chunked_prefill_build_equals_transformers(export_variant, tiny_hf_dir):
    p = Pipeline.load(str(export_variant(image_size=(112, 112), prefill_len=16,
                                         histories=(16, 32, 48, 64))),
                      threads=1, progress=lambda m: None)
    assert (p.decoder.chunk, p.max_prompt_tokens) == (16, 80)
    assert len(p.decoder.prefill_groups) == 5
    check_equal_to_hf(p, tiny_hf_dir, [frame(112, 112, seed=3)])


def test_bf16_embedding_table_released_layout(export_variant, tmp_path):
    """Released layout: raw bf16 table, tokenizer in its own directory."""
    src = export_variant(embeddings='bf16')
    model_dir, tok_dir = tmp_path / 'model', tmp_path / 'tokenizer'
    model_dir.mkdir()
    tok_dir.mkdir()
    for f in os.listdir(src):
        is_tok = f.startswith(('tokenizer', 'special_tokens', 'chat_template'))
        shutil.copy(src / f, (tok_dir if is_tok else model_dir) / f)
    with pytest.raises(ModelDirError, match='tokenizer'):
        Pipeline.load(str(model_dir), progress=lambda m: None)
    p = Pipeline.load(str(model_dir), str(tok_dir), threads=1, progress=lambda m: None)
    assert isinstance(p.embeddings.table, np.memmap)
    # the same rows as the float32 table, rounded to bf16
    f32 = np.load(export_variant() / 'model.embed_tokens.weight.npy')
    import ml_dtypes
    np.testing.assert_array_equal(p.embeddings.lookup([5, 7], np.float32),
                                  f32[[5, 7]].astype(ml_dtypes.bfloat16).astype(np.float32))
    r = p.describe([frame(448, 448)], PROMPT, GREEDY)
    assert len(r.token_ids) == N


def test_long_prompt_refused_with_both_numbers(pipe):
    with pytest.raises(PromptTooLongError, match=r'is \d+ tokens .* at most 320'):
        pipe.describe([frame(448, 448)], 'robot ' * 200, GREEDY)
    # and the pipeline still serves
    assert len(pipe.describe([], 'hi', GREEDY).token_ids) == N


def test_max_new_tokens_and_eos_stop(tiny_onnx_dir, tmp_path, pipe):
    img = frame(448, 448, seed=5)
    short = pipe.describe([img], PROMPT, GenerationOptions(max_new_tokens=3, greedy=True))
    assert len(short.token_ids) == 3 and short.finish_reason == 'length'

    full = pipe.describe([img], PROMPT, GREEDY)
    stop_at = next(i for i in range(3, N) if full.token_ids[i] not in full.token_ids[:i])
    eos = full.token_ids[stop_at]
    # a copy of the model whose generation_config names that token as eos
    eos_dir = tmp_path / 'eos'
    shutil.copytree(tiny_onnx_dir, eos_dir)
    cfg = json.loads((eos_dir / 'generation_config.json').read_text())
    cfg['eos_token_id'] = [eos]
    (eos_dir / 'generation_config.json').write_text(json.dumps(cfg))
    p = Pipeline.load(str(eos_dir), threads=1, progress=lambda m: None)
    r = p.describe([img], PROMPT, GREEDY)
    assert r.finish_reason == 'stop'
    assert r.token_ids == full.token_ids[:stop_at + 1]


def test_kv_length_stop(export_variant):
    p = Pipeline.load(str(export_variant(image_size=(112, 112), prefill_len=48, kv_len=56)),
                      threads=1, progress=lambda m: None)
    r = p.describe([], 'hi', GenerationOptions(max_new_tokens=100, greedy=True))
    assert r.finish_reason == 'length'
    assert r.prompt_tokens + len(r.token_ids) == 56 + 1  # 56 cache rows + the last sampled token


def test_sampling_is_seedable_and_top_k_1_is_greedy(pipe):
    img = frame(448, 448, seed=7)
    greedy = pipe.describe([img], PROMPT, GenerationOptions(max_new_tokens=8, greedy=True,
                                                            repetition_penalty=1.0))
    k1 = pipe.describe([img], PROMPT, GenerationOptions(
        max_new_tokens=8, greedy=False, top_k=1, temperature=0.7, repetition_penalty=1.0,
        seed=1))
    assert k1.token_ids == greedy.token_ids
    hot = GenerationOptions(max_new_tokens=8, greedy=False, temperature=5.0, top_k=0,
                            top_p=1.0, seed=42)
    a, b = pipe.describe([img], PROMPT, hot), pipe.describe([img], PROMPT, hot)
    assert a.token_ids == b.token_ids
    assert a.token_ids != greedy.token_ids


def test_streaming_pieces_make_the_text(pipe):
    pieces = []
    r = pipe.describe([frame(448, 448)], PROMPT, GREEDY, on_text=pieces.append)
    assert ''.join(pieces) == r.text
    assert all(pieces)


def test_should_stop_cancels(pipe):
    tokens = []     # on_token: each generated token (should_stop is also asked before vision
    #                 and before each prefill chunk, so its calls are not decode steps)
    r = pipe.describe([frame(448, 448)], PROMPT, GREEDY, should_stop=lambda: len(tokens) >= 3,
                      on_token=tokens.append)
    assert r.finish_reason == 'cancelled' and len(r.token_ids) == 3 and r.token_ids == tokens


def test_missing_files_named_in_one_error(tiny_onnx_dir, tmp_path):
    broken = tmp_path / 'broken'
    shutil.copytree(tiny_onnx_dir, broken)
    os.remove(broken / 'qwen2_5_vl_post.onnx')
    os.remove(broken / 'model.embed_tokens.weight.npy')
    for f in broken.glob('*_l1_together_*'):
        f.unlink()
    with pytest.raises(ModelDirError) as err:
        Pipeline.load(str(broken), progress=lambda m: None)
    msg = str(err.value)
    for name in ('qwen2_5_vl_post.onnx', 'model.embed_tokens.weight.npy', '_l1_together'):
        assert name in msg
    assert 'expected a Qwen2.5-VL model directory' in msg


def test_wrong_backend_for_directory(tiny_onnx_dir):
    with pytest.raises(ModelDirError, match='axengine'):
        Pipeline.load(str(tiny_onnx_dir), backend='axengine', progress=lambda m: None)


def test_cli_json_matches_api(pipe, tiny_onnx_dir, tmp_path):
    import cv2
    img = frame(448, 448, seed=9)
    path = tmp_path / 'f.png'
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    out = subprocess.run(
        [sys.executable, '-m', 'qwen_vl_ros.cli.describe', '--model-dir', str(tiny_onnx_dir),
         '--backend', 'onnxruntime', '--image', str(path), '--max-new-tokens', '5', '--greedy',
         '--json'], capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout)
    want = pipe.describe([img], PROMPT, GenerationOptions(max_new_tokens=5, greedy=True))
    assert got['token_ids'] == want.token_ids
    assert got['text'] == want.text
    assert got['prompt_tokens'] == want.prompt_tokens
    assert got['finish_reason'] == 'length'
    assert {'preprocess', 'vision', 'prefill', 'decode'} <= set(got['timings_ms'])
    assert got['tokens_per_second'] > 0


def test_cli_error_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, '-m', 'qwen_vl_ros.cli.describe', '--model-dir', str(tmp_path),
         '--image', 'nope.jpg'], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert 'error' in out.stderr and 'nope.jpg' in out.stderr


def test_text_stream_never_splits_a_utf8_character(pipe):
    from qwen_vl_ros.vlm.streaming import TextStream
    text = 'Robot sees 猫 and 🤖 near the door: ça va.'
    ids = pipe.tokenizer(text, add_special_tokens=False)['input_ids']
    assert len(ids) > len(text) / 2  # byte-level pieces: characters span several tokens
    stream = TextStream(pipe.tokenizer)
    pieces = [stream.push(t) for t in ids]
    assert all('\ufffd' not in p for p in pieces)
    assert ''.join(pieces) == text
    assert '' in pieces  # some tokens completed no character on their own


def test_model_dir_error_names_the_axmodel_layout(tiny_onnx_dir, tmp_path):
    from qwen_vl_ros.vlm.model_dir import find_model_files
    shutil.copy(tiny_onnx_dir / 'config.json', tmp_path / 'config.json')
    with pytest.raises(ModelDirError, match='no .axmodel or .onnx'):
        find_model_files(str(tmp_path))
    (tmp_path / 'qwen2_5_vl_p320_l0_together.axmodel').touch()
    with pytest.raises(ModelDirError) as e:
        find_model_files(str(tmp_path))
    for missing in ('*vision*.axmodel', 'qwen2_5_vl_post.axmodel', 'qwen2_5_vl_p320_l1_together',
                    'model.embed_tokens.weight.npy', 'tokenizer'):
        assert missing in str(e.value)


def test_cli_never_imports_torch(tiny_onnx_dir):
    code = ('import sys; from qwen_vl_ros.cli.describe import main; '
            f'rc = main(["--model-dir", {str(tiny_onnx_dir)!r}, "--prompt", "hi", '
            '"--max-new-tokens", "2", "--json"]); '
            'sys.exit(rc or (3 if "torch" in sys.modules else 0))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])['generated_tokens'] == 2


def test_broken_chat_template_fails_the_load(tiny_onnx_dir, tmp_path):
    broken = tmp_path / 'model'
    shutil.copytree(tiny_onnx_dir, broken)
    (broken / 'chat_template.json').write_text(json.dumps(
        {'chat_template': '{{ messages[0]["content"] + 1 }}'}))
    with pytest.raises(ModelDirError, match='chat template does not render'):
        Pipeline.load(str(broken), progress=lambda m: None)
