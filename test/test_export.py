"""qwen-vl-export against CONTRACT.md (signatures) and transformers (numbers) on the tiny model.

The references are independent of the exporter: expected signatures are written out from the
contract's tables, pixel values come from transformers' image processor, positions from
`get_rope_index`, logits and KV rows from the HF model's own forward pass.
"""
import hashlib
import json
import math
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest

torch = pytest.importorskip('torch', reason='the exporter needs torch (pip install .[export])')
ort = pytest.importorskip('onnxruntime')
from transformers import AutoTokenizer  # noqa: E402
from hf_processor import image_processor_class, rope_index, video_frames_supported  # noqa: E402

from qwen_vl_ros.export import cli, tiny  # noqa: E402
from qwen_vl_ros.export.graph_io import SharedWeights, export_graph  # noqa: E402
from qwen_vl_ros.export.post import PostStandIn  # noqa: E402
from qwen_vl_ros.vlm.model_dir import find_model_files  # noqa: E402

BLOCKED = -65536.0
# History 48 also serves the chunk at 32 (rows 32..47 zero and masked), as CONTRACT.md allows.
CHUNKED = {'image_size': (112, 112), 'prefill_len': 16, 'histories': (16, 48, 80)}
REAL_MODEL = Path(__file__).resolve().parents[2] / 'shared' / 'qwen2_5_vl_3b'


# ---------------------------------------------------------------- helpers

def session(path) -> 'ort.InferenceSession':
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=['CPUExecutionProvider'])


def signature(path) -> tuple[list, list]:
    """[(name, shape, type)] of the inputs and of the outputs of an ONNX file."""
    sess = session(path)
    return ([(a.name, tuple(a.shape), a.type) for a in sess.get_inputs()],
            [(a.name, tuple(a.shape), a.type) for a in sess.get_outputs()])


def sizes(model_dir) -> dict:
    cfg = json.loads((Path(model_dir) / 'config.json').read_text())
    head_dim = cfg['hidden_size'] // cfg['num_attention_heads']
    return {'D': cfg['hidden_size'], 'KV': head_dim * cfg['num_key_value_heads'],
            'layers': cfg['num_hidden_layers'], 'V': cfg['vocab_size']}


def random_image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def contract_patches(frames: list[np.ndarray]) -> np.ndarray:
    """CONTRACT.md's recipe: RGB frames -> uint8 (groups, gh*gw, 392, 3)."""
    x = np.stack(frames).transpose(0, 3, 1, 2)  # (N, 3, H, W)
    if len(x) % 2:
        x = np.concatenate([x, x[-1:]])
    n, _, h, w = x.shape
    gh, gw = h // 14, w // 14
    x = x.reshape(n // 2, 2, 3, gh // 2, 2, 14, gw // 2, 2, 14)
    return x.transpose(0, 3, 6, 4, 7, 1, 5, 8, 2).reshape(n // 2, gh * gw, 392, 3)


def hf_pixels(frames: list[np.ndarray], model_dir) -> dict:
    """Preprocess as transformers does (no resize), with the checkpoint's mean/std."""
    pre = json.loads((Path(model_dir) / 'preprocessor_config.json').read_text())
    proc = image_processor_class()(do_resize=False, image_mean=pre['image_mean'],
                                 image_std=pre['image_std'], patch_size=14,
                                 temporal_patch_size=2, merge_size=2)
    if len(frames) == 1:
        out = proc(images=frames, return_tensors='pt')
        return {'pixel_values': out['pixel_values'], 'grid_thw': out['image_grid_thw']}
    if not video_frames_supported():
        pytest.skip("transformers 5.x's video processor needs torchvision (not installed here)")
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the video path warns about its deprecation
        out = proc(images=None, videos=[frames], return_tensors='pt')
    return {'pixel_values': out['pixel_values_videos'], 'grid_thw': out['video_grid_thw']}


def hf_visual(model, pixels: dict) -> np.ndarray:
    with torch.no_grad():
        out = model.model.visual(pixels['pixel_values'], grid_thw=pixels['grid_thw'])
    return getattr(out, 'pooler_output', out).numpy()


def run_vision(model_dir, frames: list[np.ndarray]) -> np.ndarray:
    """Call the exported vision model once per temporal group, as the runtime does."""
    (path,) = Path(model_dir).glob('qwen2_5_vl_vision_*.onnx')
    sess = session(path)
    patches = contract_patches(frames)
    return np.concatenate([sess.run(None, {'hidden_states': patches[g:g + 1]})[0]
                           for g in range(len(patches))])


def expected_layer_signature(s: dict, group: int, rows: int, kv_len: int, history: int = 0):
    """CONTRACT.md's decoder-layer table (float32 for bf16, indices uint32)."""
    f, D, KV = 'tensor(float)', s['D'], s['KV']
    if group == 0:
        cache, idx, n, seen = (1, kv_len, KV), (1, 1), 1, kv_len + 1
    else:
        cache = (1, history, KV) if history else (1, 1, D)
        idx, n, seen = (3, rows), rows, history + rows
    inputs = [('K_cache', cache, f), ('V_cache', cache, f), ('indices', idx, 'tensor(uint32)'),
              ('input', (1, n, D), f), ('mask', (1, n, seen), f)]
    outputs = [('K_cache_out', (1, n, KV), f), ('V_cache_out', (1, n, KV), f),
               ('output', (1, n, D), f)]
    return inputs, outputs


class StandIn:
    """Prefill (single or chunked, per CONTRACT.md) and decode through the exported graphs."""

    def __init__(self, model_dir):
        d = Path(model_dir)
        self.s = sizes(d)
        self.layers = [{int(p.stem.rsplit('_g', 1)[1]): session(p)
                        for p in d.glob(f'qwen2_5_vl_p*_l{i}_together_g*.onnx')}
                       for i in range(self.s['layers'])]
        self.post = session(d / 'qwen2_5_vl_post.onnx')
        self.embeddings = np.load(d / 'model.embed_tokens.weight.npy')
        shapes = {g: {a.name: a.shape for a in sess.get_inputs()}
                  for g, sess in self.layers[0].items()}
        self.chunk = shapes[1]['indices'][1]
        self.kv_len = shapes[0]['K_cache'][1]
        self.histories = {g: shapes[g]['K_cache'][1] for g in shapes if g >= 2}
        self.k = np.zeros((self.s['layers'], self.kv_len, self.s['KV']), np.float32)
        self.v = np.zeros_like(self.k)
        self.groups_used = []

    def _layers(self, group, x, indices, mask, history):
        """Run every layer in shape group `group`; return the last hidden rows and each K/V."""
        rows = []
        for i, layer in enumerate(self.layers):
            if group == 1:  # dummy cache: still fed, onnxruntime wants every input
                k_in = v_in = np.zeros((1, 1, self.s['D']), np.float32)
            else:
                k_in, v_in = self.k[i][None, :history], self.v[i][None, :history]
            k_out, v_out, x = layer[group].run(None, {
                'K_cache': k_in, 'V_cache': v_in, 'indices': indices, 'input': x, 'mask': mask})
            rows.append((k_out[0], v_out[0]))
        return x, rows

    def prefill(self, embeds: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Prompt rows -> logits of the last one; caches rows [0, T)."""
        total, c = len(embeds), self.chunk
        last = None
        for p in range(math.ceil(total / c)):
            h = p * c
            if h == 0:
                group, history = 1, 0
            else:
                group = min((g for g, hg in self.histories.items() if hg >= h),
                            key=self.histories.get)
                history = self.histories[group]
            self.groups_used.append(group)
            rows = min(c, total - h)
            x = np.zeros((1, c, self.s['D']), np.float32)
            x[0, :rows] = embeds[h:h + rows]
            indices = np.zeros((3, c), np.uint32)
            indices[:, :rows] = positions[:, h:h + rows]
            mask = np.full((1, c, history + c), BLOCKED, np.float32)
            for r in range(rows):
                mask[0, r, :h] = 0
                mask[0, r, history:history + r + 1] = 0
            x, kv = self._layers(group, x, indices, mask, history)
            for i, (k_rows, v_rows) in enumerate(kv):
                self.k[i, h:h + rows], self.v[i, h:h + rows] = k_rows[:rows], v_rows[:rows]
            last = x[:, rows - 1:rows]
        return self.post.run(None, {'input': last})[0][0, 0]

    def decode(self, embed: np.ndarray, slot: int, position: int) -> np.ndarray:
        """One token at cache row `slot` and rope position `position` -> its logits."""
        mask = np.full((1, 1, self.kv_len + 1), BLOCKED, np.float32)
        mask[0, 0, :slot] = 0
        mask[0, 0, self.kv_len] = 0
        indices = np.array([[position]], np.uint32)
        x, kv = self._layers(0, embed[None, None], indices, mask, self.kv_len)
        for i, (k_row, v_row) in enumerate(kv):
            self.k[i, slot], self.v[i, slot] = k_row[0], v_row[0]
        return self.post.run(None, {'input': x})[0][0, 0]


def image_prompt(tokenizer, n_image_tokens: int, question: str, answer: str):
    """Chat-templated ids of an image question (image_pad expanded) and of an answer."""
    content = [{'type': 'image'}, {'type': 'text', 'text': question}]
    messages = [{'role': 'user', 'content': content}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = text.replace('<|image_pad|>', '<|image_pad|>' * n_image_tokens)
    return tokenizer(text)['input_ids'], tokenizer(answer)['input_ids']


def check_teacher_forced(model_dir, model, image: np.ndarray, question: str, answer: str):
    """Prefill the prompt and decode the answer through the graphs; compare with HF's forward."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pixels = hf_pixels([image], model_dir)
    n_image = int(pixels['grid_thw'].prod()) // 4
    prompt, reply = image_prompt(tokenizer, n_image, question, answer)
    ids = torch.tensor([prompt + reply])
    with torch.no_grad():
        positions, _ = rope_index(model, ids, image_grid_thw=pixels['grid_thw'])
        ref = model(input_ids=ids, pixel_values=pixels['pixel_values'],
                    image_grid_thw=pixels['grid_thw'], position_ids=positions, use_cache=True)
    positions = positions[:, 0].numpy()
    ref_logits = ref.logits[0].numpy()

    runner = StandIn(model_dir)
    embeds = runner.embeddings[ids[0].numpy()]
    start = prompt.index(model.config.vision_start_token_id) + 1
    embeds[start:start + n_image] = run_vision(model_dir, [image])
    logits = [runner.prefill(embeds[:len(prompt)], positions[:, :len(prompt)])]
    first_position = positions[:, :len(prompt)].max() + 1
    for k in range(len(reply) - 1):
        slot = len(prompt) + k
        # CONTRACT: cache row = sequential slot, rope position = max(prompt positions) + 1 + k.
        assert (positions[:, slot] == first_position + k).all()
        logits.append(runner.decode(embeds[slot], slot, first_position + k))

    expected = ref_logits[len(prompt) - 1:len(prompt) + len(reply) - 1]
    top2 = np.sort(expected, axis=-1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-3, 'near-tied logits would make the test weak'
    np.testing.assert_allclose(np.stack(logits), expected, atol=1e-4, rtol=0)
    assert (np.argmax(logits, -1) == np.argmax(expected, -1)).all()
    # K/V rows are HF's post-rotary keys and values, heads side by side.
    total = len(prompt) + len(reply) - 1
    for i in range(runner.s['layers']):
        layer_cache = ref.past_key_values.layers[i]
        for ours, theirs in ((runner.k[i], layer_cache.keys), (runner.v[i], layer_cache.values)):
            theirs = theirs[0].transpose(0, 1).reshape(theirs.shape[2], -1).numpy()
            np.testing.assert_allclose(ours[:total], theirs[:total], atol=1e-4, rtol=0)
    return runner


# ---------------------------------------------------------------- the tiny checkpoint

def test_tiny_checkpoint_ids_tokenizer_and_configs(tiny_hf_dir, tmp_path):
    cfg = json.loads((tiny_hf_dir / 'config.json').read_text())
    tok = AutoTokenizer.from_pretrained(tiny_hf_dir)
    ids = tok.convert_tokens_to_ids
    specials = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|object_ref_start|>',
                '<|object_ref_end|>', '<|box_start|>', '<|box_end|>', '<|quad_start|>',
                '<|quad_end|>', '<|vision_start|>', '<|vision_end|>', '<|vision_pad|>',
                '<|image_pad|>', '<|video_pad|>']
    assert [ids(t) for t in specials] == list(range(ids(specials[0]), ids(specials[0]) + 14))
    assert ids(specials[0]) > 256 + 100  # a learned vocabulary precedes them, as in Qwen's
    assert cfg['vocab_size'] == len(tok)
    assert (cfg['image_token_id'], cfg['video_token_id']) == \
        (ids('<|image_pad|>'), ids('<|video_pad|>'))
    assert (cfg['vision_start_token_id'], cfg['vision_end_token_id']) == \
        (ids('<|vision_start|>'), ids('<|vision_end|>'))
    assert (cfg['bos_token_id'], cfg['eos_token_id']) == (ids('<|endoftext|>'), ids('<|im_end|>'))
    assert tok.eos_token_id == ids('<|im_end|>')
    gen = json.loads((tiny_hf_dir / 'generation_config.json').read_text())
    assert gen['eos_token_id'] == [ids('<|im_end|>'), ids('<|endoftext|>')]
    text = 'A red bus, 2 cats\nand a dog.'
    assert tok.decode(tok(text)['input_ids']) == text
    if (REAL_MODEL / 'chat_template.json').is_file():  # the embedded copy has not drifted
        real = json.loads((REAL_MODEL / 'chat_template.json').read_text())['chat_template']
        assert tok.chat_template == real
        assert json.loads((REAL_MODEL / 'preprocessor_config.json').read_text()) == \
            json.loads((tiny_hf_dir / 'preprocessor_config.json').read_text())

    tiny.main(['--out', str(tmp_path), '--seed', '0'])  # same seed, same bytes
    for name in ('model.safetensors', 'tokenizer.json', 'config.json'):
        assert (tmp_path / name).read_bytes() == (tiny_hf_dir / name).read_bytes()


def test_tiny_weights_have_no_default_init(tiny_hf_model):
    # HF's init would zero biases and set norm gains to 1, hiding bugs in both.
    for name, param in tiny_hf_model.named_parameters():
        std = float(param.detach().std())
        if name.endswith('bias'):
            assert 0.1 < std < 0.3 and float(param.detach().abs().mean()) > 0.05, name
        elif param.dim() == 1:  # RMSNorm gains
            assert 0.03 < std < 0.2 and abs(float(param.detach().mean()) - 1) < 0.1, name
        else:
            assert 0.15 < std < 0.25, name


# ---------------------------------------------------------------- signatures

def test_single_prefill_build_signatures(tiny_onnx_dir):
    s = sizes(tiny_onnx_dir)
    names = sorted(p.name for p in tiny_onnx_dir.glob('*.onnx'))
    assert names == sorted(['qwen2_5_vl_vision_448x448.onnx', 'qwen2_5_vl_post.onnx'] + [
        f'qwen2_5_vl_p320_l{i}_together_g{g}.onnx' for i in range(s['layers']) for g in (0, 1)])
    for i in range(s['layers']):
        for g in (0, 1):
            path = tiny_onnx_dir / f'qwen2_5_vl_p320_l{i}_together_g{g}.onnx'
            assert signature(path) == expected_layer_signature(s, g, rows=320, kv_len=1023)
    assert signature(tiny_onnx_dir / 'qwen2_5_vl_post.onnx') == (
        [('input', (1, 1, s['D']), 'tensor(float)')],
        [('output', (1, 1, s['V']), 'tensor(float)')])
    assert signature(tiny_onnx_dir / 'qwen2_5_vl_vision_448x448.onnx') == (
        [('hidden_states', (1, 1024, 392, 3), 'tensor(uint8)')],
        [('hidden_states_out', (256, s['D']), 'tensor(float)')])


def test_chunked_build_signatures(export_variant):
    d = export_variant(**CHUNKED)
    s = sizes(d)
    for i in range(s['layers']):
        groups = sorted(int(p.stem.rsplit('_g', 1)[1])
                        for p in d.glob(f'qwen2_5_vl_p16_l{i}_together_g*.onnx'))
        assert groups == [0, 1, 2, 3, 4]
        for g, history in zip(groups, (0, 0, 16, 48, 80)):
            path = d / f'qwen2_5_vl_p16_l{i}_together_g{g}.onnx'
            assert signature(path) == expected_layer_signature(s, g, 16, 1023, history)
    assert signature(d / 'qwen2_5_vl_vision_112x112.onnx')[0] == \
        [('hidden_states', (1, 64, 392, 3), 'tensor(uint8)')]


def test_model_dir_files(tiny_onnx_dir, tiny_hf_dir, tiny_hf_model):
    for name in ('config.json', 'generation_config.json', 'preprocessor_config.json',
                 'tokenizer.json', 'tokenizer_config.json'):
        assert (tiny_onnx_dir / name).read_bytes() == (tiny_hf_dir / name).read_bytes(), name
    template = json.loads((tiny_onnx_dir / 'chat_template.json').read_text())['chat_template']
    assert template == AutoTokenizer.from_pretrained(tiny_hf_dir).chat_template
    table = np.load(tiny_onnx_dir / 'model.embed_tokens.weight.npy')
    assert table.dtype == np.float32
    expected = tiny_hf_model.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(table, expected)


def test_bf16_embeddings_layout(export_variant, tiny_hf_model):
    d = export_variant(embeddings='bf16')
    assert not (d / 'model.embed_tokens.weight.npy').exists()
    raw = np.fromfile(d / 'model.embed_tokens.weight.bfloat16.bin', dtype=ml_dtypes.bfloat16)
    table = tiny_hf_model.get_input_embeddings().weight.detach()
    assert raw.size == table.numel()
    expected = table.to(torch.bfloat16).float().numpy()  # torch's rounding: round to nearest even
    np.testing.assert_array_equal(raw.reshape(table.shape).astype(np.float32), expected)


# ---------------------------------------------------------------- shared layer weights

def external_regions(path) -> dict:
    """{sha256 of the bytes: (location, offset, length)} of a graph's initializers."""
    model = onnx.load(str(path), load_external_data=False)
    assert not [n for n in model.graph.node if n.op_type == 'Constant'
                and n.attribute[0].t.ByteSize() > 1024], 'big constants stay in the graph'
    regions = {}
    for t in model.graph.initializer:
        assert t.data_location == onnx.TensorProto.EXTERNAL and not t.raw_data, t.name
        entry = {e.key: e.value for e in t.external_data}
        location, offset, length = entry['location'], int(entry['offset']), int(entry['length'])
        with open(Path(path).parent / location, 'rb') as f:
            f.seek(offset)
            data = f.read(length)
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        assert len(data) == length == np.prod(t.dims, dtype=np.int64) * itemsize, t.name
        regions.setdefault(hashlib.sha256(data).digest(), set()).add((location, offset, length))
    return regions


def self_contained_size(path) -> int:
    """Bytes of a graph with its external data inline (how every group file was written before)."""
    return onnx.load(str(path), load_external_data=True).ByteSize()


@pytest.mark.parametrize('variant', ['default', 'chunked'])
def test_layer_groups_share_one_weights_file(tiny_onnx_dir, export_variant, tiny_hf_model,
                                             variant):
    d, prefill, n_groups = ((tiny_onnx_dir, 320, 2) if variant == 'default'
                            else (export_variant(**CHUNKED), 16, 5))
    s = sizes(d)
    head_dim = s['D'] // tiny_hf_model.config.text_config.num_attention_heads
    # cos and sin tables for twice the largest context (decode: kv-len 1023 + 1 in both builds)
    rope_bytes = 2 * (2 * (1023 + 1)) * head_dim * 4
    assert sorted(f.name for f in d.glob('*.weights')) == \
        [f'qwen2_5_vl_p{prefill}_l{i}_together.weights' for i in range(s['layers'])]
    files = find_model_files(str(d))  # the weights files are no model files
    assert [sorted(layer) for layer in files.layers] == [list(range(n_groups))] * s['layers']
    assert all(path.endswith('.onnx') for layer in files.layers for path in layer.values())
    assert files.vision.endswith('_448x448.onnx' if variant == 'default' else '_112x112.onnx')
    assert files.post.endswith('qwen2_5_vl_post.onnx')

    layer_files, before = 0, 0
    for i, layer in enumerate(tiny_hf_model.model.language_model.layers):
        weights = d / f'qwen2_5_vl_p{prefill}_l{i}_together.weights'
        groups = [d / f'qwen2_5_vl_p{prefill}_l{i}_together_g{g}.onnx' for g in range(n_groups)]
        regions = [external_regions(path) for path in groups]
        # Every group holds the same tensors, in the same place of the same file.
        assert all(r == regions[0] for r in regions)
        assert all(len(places) == 1 and next(iter(places))[0] == weights.name
                   for places in regions[0].values())
        # The file is one copy of the layer's parameters plus its rope tables (and alignment).
        spans = sorted(next(iter(places))[1:] for places in regions[0].values())
        assert all(a + n <= b for (a, n), (b, _) in zip(spans, spans[1:])), 'no overlap'
        one_copy = sum(t.numel() * 4 for t in layer.parameters()) + rope_bytes
        assert sum(n for _, n in spans) == one_copy
        assert one_copy <= weights.stat().st_size < one_copy + 64 * len(spans)
        # The graphs themselves are small: the rope tables went to the weights file too. Before,
        # every group file held all of it (its size with the external data read back in).
        assert all(path.stat().st_size < 64 * 1024 for path in groups)
        layer_bytes = weights.stat().st_size + sum(path.stat().st_size for path in groups)
        inline = sum(self_contained_size(path) for path in groups)  # one copy per group
        assert layer_bytes < inline * (0.6 if n_groups == 2 else 0.3)
        layer_files, before = layer_files + layer_bytes, before + inline
    total = sum(f.stat().st_size for f in d.iterdir())
    before += total - layer_files
    assert total < before * (0.75 if n_groups == 2 else 0.4), (total, before)


def test_shared_weights_file_layout(tmp_path):
    """SharedWeights on hand-made graphs: each distinct tensor once, big ones 64 KiB aligned."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    big = rng.normal(size=(512, 600)).astype(np.float32)        # 1.2 MB: 64 KiB aligned
    bias = rng.normal(size=(600,)).astype(np.float32)
    table = rng.normal(size=(8, 600)).astype(np.float32)        # a Constant node, made external

    def graph(scale: float) -> onnx.ModelProto:
        x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 512])
        y = helper.make_tensor_value_info('y', TensorProto.FLOAT, [8, 600])
        nodes = [helper.make_node('Constant', [], ['table'],
                                  value=numpy_helper.from_array(table, 'table')),
                 helper.make_node('MatMul', ['x', 'big'], ['xw']),
                 helper.make_node('Add', ['xw', 'bias'], ['xb']),
                 helper.make_node('Mul', ['xb', 'scale'], ['xs']),
                 helper.make_node('Add', ['xs', 'table'], ['y'])]
        inits = [numpy_helper.from_array(big, 'big'), numpy_helper.from_array(bias, 'bias'),
                 numpy_helper.from_array(np.array(scale, np.float32), 'scale')]
        model = helper.make_model(helper.make_graph(nodes, 'g', [x], [y], inits),
                                  opset_imports=[helper.make_opsetid('', 17)])
        model.ir_version = 8
        return model

    weights = tmp_path / 'shared.weights'
    with SharedWeights(weights) as shared:
        shared.save(graph(1.0), tmp_path / 'a.onnx')
        shared.save(graph(2.0), tmp_path / 'b.onnx')
    a, b = (external_regions(tmp_path / n) for n in ('a.onnx', 'b.onnx'))
    assert len(a) == len(b) == 4 and len(set(a) | set(b)) == 5  # only the scales differ
    offsets = {n: off for places in a.values() for _, off, n in places}
    assert offsets[big.nbytes] % 65536 == 0
    assert all(off % 64 == 0 for off in offsets.values())
    distinct = big.nbytes + bias.nbytes + table.nbytes + 2 * 4
    assert distinct <= weights.stat().st_size < distinct + 65536 + 4 * 64
    x = rng.normal(size=(1, 512)).astype(np.float32)
    for name, scale in (('a.onnx', 1.0), ('b.onnx', 2.0)):
        (y,) = session(tmp_path / name).run(None, {'x': x})
        np.testing.assert_allclose(y, (x @ big + bias) * scale + table, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match='directory'):
        with SharedWeights(tmp_path / 'other.weights') as shared:
            (tmp_path / 'sub').mkdir()
            shared.save(graph(3.0), tmp_path / 'sub' / 'c.onnx')


# ---------------------------------------------------------------- numbers

@pytest.mark.parametrize('h,w', [(448, 448), (280, 196)])
def test_vision_matches_hf(export_variant, tiny_hf_model, h, w):
    d = export_variant(image_size=(h, w)) if (h, w) != (448, 448) else export_variant()
    image = random_image(h, w, seed=h + w)
    ours = run_vision(d, [image])
    expected = hf_visual(tiny_hf_model, hf_pixels([image], d))
    assert ours.shape == expected.shape == (h * w // 28 // 28, sizes(d)['D'])
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


def test_image_prompt_prefill_then_decode_matches_hf(tiny_onnx_dir, tiny_hf_model):
    runner = check_teacher_forced(
        tiny_onnx_dir, tiny_hf_model, random_image(448, 448, seed=1),
        'Describe this image.', 'The image shows a red bus on the street.')
    assert runner.groups_used == [1]


def test_chunked_prefill_then_decode_matches_hf(export_variant, tiny_hf_model):
    # 16 image tokens + 67 text tokens: six 16-row chunks (histories 0, 16, 32, ..., 80), the
    # last one part padding; the chunk at 32 runs in the 48-row group over a partly empty history.
    runner = check_teacher_forced(
        export_variant(**CHUNKED), tiny_hf_model, random_image(112, 112, seed=2),
        'Describe this image in one short sentence, please.', 'A cat sleeps on the sofa.')
    assert runner.groups_used == [1, 2, 3, 3, 4, 4]


def test_post_matches_hf_also_with_external_weights(tiny_onnx_dir, tiny_hf_model, tmp_path):
    # The real vision tower is over protobuf's 2 GB: its weights go to one .data file beside it.
    lm = tiny_hf_model.model.language_model
    x = np.random.default_rng(3).normal(size=(1, 1, sizes(tiny_onnx_dir)['D'])).astype(np.float32)
    with torch.no_grad():
        expected = tiny_hf_model.lm_head(lm.norm(torch.from_numpy(x))).numpy()
    external = tmp_path / 'post.onnx'
    export_graph(PostStandIn(lm.norm, tiny_hf_model.lm_head), (torch.from_numpy(x),), external,
                 ('input',), ('output',), max_inline_bytes=0)
    assert (tmp_path / 'post.onnx.data').stat().st_size > external.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ['post.onnx', 'post.onnx.data']
    for path in (tiny_onnx_dir / 'qwen2_5_vl_post.onnx', external):
        ours = session(path).run(None, {'input': x})[0]
        np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- the command line

def test_cli_video_build(tiny_hf_dir, tiny_hf_model, tmp_path):
    out = tmp_path / 'video'
    assert cli.main(['--hf-dir', str(tiny_hf_dir), '--out', str(out), '--video']) == 0
    assert (out / 'qwen2_5_vl_vision_308x308.onnx').is_file()
    assert (out / 'qwen2_5_vl_p512_l0_together_g1.onnx').is_file()
    # Four frames = two temporal groups, one vision call each, equal HF's whole-video features.
    frames = [random_image(308, 308, seed=10 + i) for i in range(4)]
    ours = run_vision(out, frames)
    assert ours.shape == (2 * 121, sizes(out)['D'])
    expected = hf_visual(tiny_hf_model, hf_pixels(frames, out))
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize('args, message', [
    (['--image-size', '300'], 'multiples of 28'),
    (['--image-size', '28x2x2'], 'not N or HxW'),
    (['--prefill-len', '16', '--prefill-history', '32', '16'], 'increasing'),
    (['--prefill-len', '512', '--prefill-history', '600'], 'exceeds kv-len'),
])
def test_cli_refuses_bad_options(tiny_hf_dir, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(['--hf-dir', str(tiny_hf_dir), '--out', str(tmp_path / 'x')] + args)
    assert message in str(exc.value) + capsys.readouterr().err
    assert not (tmp_path / 'x').exists()
