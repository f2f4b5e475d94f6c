"""The axengine backend on AXERA's own pyaxengine, every release, over stub NPU libraries.

Each test runs a release from ../shared/pyaxengine/ unmodified, in a subprocess whose
environment comes from test/npu_stub/build.py (what scripts/with_npu_stub.sh uses): real cffi
over libax_sys.so / libax_engine.so built here from C, whose CMM has a CPU and a device side and
whose "NPU" runs the ONNX stand-ins (test/npu_stub/README.md). Fresh CMM holds garbage unless a
test says otherwise.

- the matrix: token parity with transformers for an image, a 4-frame video and a chunked
  prefill build under 0.1.2rc0, 0.1.3rc0 and 0.1.3.rc3, in-buffer KV on and off; the older
  0.1.0rc1 / 0.1.1rc0 refused at load in one line; the older load_from_model wheel (its
  compiled runner replaced by test/npu_stub/legacy_runner.py) on the host cache;
- the failures a board would show, each with the case that exposes it: garbage, NaN and 0x5A
  CMM under the in-buffer cache, output views (video), pyaxengine's prints on stdout
  (--json, --bag), a driver that refuses interior flushes, a tuple of providers, a KV object
  outliving its session, layer outputs in another order or missing (these two on onnxruntime);
- on bf16 I/O (as compiled for the board): in-buffer equals plain run, moves far fewer bytes,
  a missing row flush changes the answer, the last KV row is used the same way;
- the M.2 card (libaxcl_rt.so alone, test/npu_stub/axcl_rt.c): pyaxengine picks
  AXCLRTExecutionProvider by itself, the matrix and the bf16 equality hold there, no decode
  step moves a whole cache over the link (the stub's axclrtMemcpy counters), the stub's device
  memory rules, the CLI on the second of two cards with AX_STUB_LINK_STATS.

Parity runs pack the models with float32 I/O (the NPU stub then computes exactly what
onnxruntime does); the bf16 runs check the bf16 path against itself.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('torch', reason='the tiny stand-ins are exported with torch')
hf = pytest.importorskip('hf_reference', reason='needs torch + transformers (the reference)')

from qwen_vl_ros.vlm import ModelDirError, Pipeline  # noqa: E402

HERE = Path(__file__).resolve().parent
STUB = HERE / 'npu_stub'
PYAX = Path(__file__).resolve().parents[2] / 'shared' / 'pyaxengine'
CURRENT = 'pyaxengine-0.1.3.rc3'
SHAPE_GROUP_RELEASES = ['pyaxengine-0.1.2rc0', 'pyaxengine-0.1.3rc0', CURRENT]
OLD_RELEASES = ['pyaxengine-0.1.0rc1', 'pyaxengine-0.1.1rc0']
LEGACY = 'axengine-legacy-0.2.0a0'
PROMPT = 'Describe this image.'
N = 24

IMAGE = {'frames': [[448, 448, 1]], 'prompt': PROMPT, 'n': N}
VIDEO = {'frames': [[112, 168, 10 + s] for s in range(4)], 'prompt': 'What happens?', 'n': N,
         'second_per_grid_t': 2.0}
CHUNKED_IMAGE = {'frames': [[112, 112, 3]], 'prompt': PROMPT, 'n': N}
VIDEO_EXPORT = {'image_size': (112, 168)}
CHUNKED_EXPORT = {'image_size': (112, 112), 'prefill_len': 16, 'histories': (16, 32, 48, 64)}


def tarball(release: str) -> Path:
    """Return the release's tarball; skip with the reason where ../shared is absent."""
    path = PYAX / f'{release}.tar.gz'
    if not path.exists():
        pytest.skip(f'{path} is absent: AXERA\'s pyaxengine releases live in ../shared '
                    '(not in a clone of this repository)')
    return path


def _build_module():
    spec = importlib.util.spec_from_file_location('npu_stub_build', STUB / 'build.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stub_env(release: str, card: bool = False, **extra) -> dict:
    """Environment running ``release`` over the stub NPU (built once per source hash).

    ``card``: the M.2 card's libaxcl_rt alone (AXCLRTExecutionProvider).
    """
    env = _build_module().stub_env(tarball(release), card=card)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def drive(release: str, spec: dict, tmp_path, card: bool = False, **env) -> dict:
    """Run test/npu_stub/drive.py under ``release``; return its JSON result."""
    spec_path, out_path = tmp_path / 'spec.json', tmp_path / 'out.json'
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, str(STUB / 'drive.py'), str(spec_path),
                           str(out_path)], env=stub_env(release, card, **env),
                          capture_output=True, text=True, timeout=600)
    assert out_path.exists(), proc.stderr[-3000:]
    out = json.loads(out_path.read_text())
    out['stderr'] = proc.stderr
    return out


@pytest.fixture(scope='module')
def packed(tmp_path_factory):
    """Pack an ONNX stand-in directory for the stub NPU (once per directory and I/O type)."""
    sys.path.insert(0, str(STUB / 'python'))
    try:
        from axmodel_pack import pack_model_dir
    finally:
        sys.path.remove(str(STUB / 'python'))
    cache = {}

    def pack(onnx_dir, float_io='float32'):
        key = (str(onnx_dir), float_io)
        if key not in cache:
            cache[key] = str(pack_model_dir(onnx_dir, tmp_path_factory.mktemp('axmodel'),
                                            float_io))
        return cache[key]

    return pack


@pytest.fixture(scope='module')
def reference(tiny_hf_dir):
    """Give transformers' greedy tokens for a case (cached), checked free of near-ties."""
    cache = {}

    def tokens(case):
        key = json.dumps(case, sort_keys=True)
        if key not in cache:
            frames = [np.random.default_rng(s).integers(0, 256, (h, w, 3), dtype=np.uint8)
                      for h, w, s in case['frames']]
            ref, logits, _ = hf.generate(str(tiny_hf_dir), frames, case['prompt'], case['n'],
                                         case.get('second_per_grid_t', 1.0))
            assert hf.min_top2_gap(logits) > 1e-3
            cache[key] = ref
        return cache[key]

    return tokens


@pytest.fixture(scope='module')
def models(tiny_onnx_dir, export_variant, packed):
    """Pack the matrix's three builds with float32 I/O: (model dir, case) by name."""
    return {'image': (packed(tiny_onnx_dir), IMAGE),
            'video': (packed(export_variant(**VIDEO_EXPORT)), VIDEO),
            'chunked': (packed(export_variant(**CHUNKED_EXPORT)), CHUNKED_IMAGE)}


# The board under every release with shape groups; the M.2 card (libaxcl_rt alone) under the
# current one (older releases' AXCLRT run() reads outputs through a CMM struct the card's IO
# handle does not have: README, "Raspberry Pi 5 / ROCK 5B+ with an M.2 card").
MATRIX = [pytest.param(r, False, id=r) for r in SHAPE_GROUP_RELEASES] + \
    [pytest.param(CURRENT, True, id=f'{CURRENT}-card')]


def _check_link_per_token(runs):
    """Check that in-buffer decode never moves a whole cache over the link; plain run does."""
    fast, plain = runs['1']['per_token'], runs['0']['per_token']
    cache, layers = runs['1']['cache_bytes'], runs['1']['layers']
    assert fast['steps'] > 0 and plain['steps'] == fast['steps']
    assert fast['h2d_bytes'] / fast['steps'] < cache / 4, (fast, cache)
    assert fast['d2h_bytes'] / fast['steps'] < cache / 4, (fast, cache)
    assert plain['h2d_bytes'] / plain['steps'] >= 2 * layers * cache, (plain, cache)


@pytest.mark.parametrize('release,card', MATRIX)
def test_matrix_token_parity_with_transformers(release, card, models, reference, tmp_path):
    jobs = [{'model_dir': model_dir, 'cases': [case], 'in_buffer': [True, False]}
            for model_dir, case in models.values()]
    out = drive(release, {'jobs': jobs}, tmp_path, card)
    assert out['error'] is None, (out['error'], out['stderr'][-2000:])
    jobs = dict(zip(models, out['jobs']))
    provider = 'AXCLRTExecutionProvider (M.2 card 0' if card else 'AxEngineExecutionProvider'
    for name, runs in jobs.items():  # plain run first: output views break the video here
        assert runs['0']['where'].startswith(provider), runs['0']['where']  # picked by itself
        assert runs['0']['tokens'] == [reference(models[name][1])], (name, 'plain run')
    for name, runs in jobs.items():  # garbage in fresh CMM breaks the in-buffer cache here
        assert runs['1']['kv'] and not runs['0']['kv'], name
        assert runs['1']['tokens'] == [reference(models[name][1])], (name, 'in-buffer KV')
        if card:
            _check_link_per_token(runs)


def test_in_buffer_kv_whatever_fresh_cmm_holds(models, reference, tmp_path):
    model_dir, case = models['image']
    fills = ['nan', '5a', 'zero']
    jobs = [{'model_dir': model_dir, 'cases': [case], 'env': {'AX_STUB_CMM_FILL': fill}}
            for fill in fills]
    out = drive(CURRENT, {'jobs': jobs}, tmp_path)
    assert out['error'] is None, out['error']
    for fill, runs in zip(fills, out['jobs']):
        assert runs['1']['kv'], fill
        assert runs['1']['tokens'] == [reference(case)], fill


@pytest.mark.parametrize('release', OLD_RELEASES)
def test_release_without_shape_group_refused_at_load(release, models, tmp_path):
    out = drive(release, {'model_dir': models['image'][0], 'cases': [IMAGE]}, tmp_path)
    err = out['error'] or ''
    assert err.startswith('ModelDirError') and '\n' not in err, err
    assert release in err and 'shape_group' in err and '0.1.2rc0 or newer' in err


def test_legacy_wheel_runs_on_the_host_cache(bf16_runs, tmp_path):
    spec, current = bf16_runs
    out = drive(LEGACY, dict(spec, in_buffer=[True]), tmp_path)
    assert out['error'] is None, (out['error'], out['stderr'][-2000:])
    assert out['runs']['1']['kv'] is False  # its buffers are compiled code: whole caches fed
    assert out['runs']['1']['tokens'] == current['1']['tokens']


def test_driver_refusing_interior_flush_falls_back_to_plain_run(models, reference, tmp_path):
    model_dir, case = models['chunked']
    out = drive(CURRENT, {'model_dir': model_dir, 'cases': [case]}, tmp_path,
                AX_STUB_CMM_STRICT=1)
    assert out['error'] is None, (out['error'], out['stderr'][-2000:])
    assert out['runs']['1']['kv'] is False
    assert out['runs']['1']['tokens'] == [reference(case)]
    assert 'refuses a flush inside a buffer' in out['stderr']


def test_tuple_of_providers_accepted(models, reference, tmp_path):
    model_dir, case = models['image']
    out = drive(CURRENT, {'model_dir': model_dir, 'cases': [dict(case, n=4)],
                          'providers': ['AxEngineExecutionProvider'], 'providers_tuple': True},
                tmp_path)
    assert out['error'] is None, out['error']
    assert out['runs']['1']['tokens'] == [reference(case)[:4]]


def test_kv_cache_keeps_its_session_alive(models, tmp_path):
    out = drive(CURRENT, {'model_dir': models['image'][0], 'action': 'keepalive'}, tmp_path)
    assert out['error'] is None, (out['error'], out['stderr'][-2000:])
    assert out['keepalive'] == 'same'


def test_cli_json_stdout_stays_clean(models, reference, tmp_path):
    import cv2
    model_dir, case = models['image']
    h, w, seed = case['frames'][0]
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'f.png'), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    proc = subprocess.run(
        [str(HERE.parent / 'scripts' / 'with_npu_stub.sh'), str(tarball(CURRENT)), '--',
         sys.executable, '-m', 'qwen_vl_ros.cli.describe', '--backend', 'axengine',
         '--model-dir', model_dir, '--image', str(tmp_path / 'f.png'), '--max-new-tokens', '6',
         '--greedy', '--repetition-penalty', '1.0', '--json'],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)['token_ids'] == reference(case)[:6]
    assert '[INFO] Using provider' in proc.stderr  # pyaxengine's prints: in the log


def test_cli_bag_jsonl_on_stdout_stays_clean(models, tmp_path):
    from qwen_vl_ros.bagtools import write_camera_bag
    write_camera_bag(tmp_path / 'bag', frames=3, fps=1.0, width=64, height=48)
    proc = subprocess.run(
        [str(HERE.parent / 'scripts' / 'with_npu_stub.sh'), str(tarball(CURRENT)), '--',
         sys.executable, '-m', 'qwen_vl_ros.cli.describe', '--backend', 'axengine',
         '--model-dir', models['image'][0], '--bag', str(tmp_path / 'bag'), '--every', '0',
         '--max-new-tokens', '3', '--greedy'],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [len(d['token_ids']) for d in lines] == [3, 3, 3]


def _bf16_cases(size):
    return [{'frames': [size + [1]], 'prompt': PROMPT, 'n': N},
            {'frames': [], 'prompt': 'Say hello.', 'n': N},
            {'frames': [size + [2]], 'prompt': 'What is in it?', 'n': N},
            {'frames': [size + [1]], 'prompt': PROMPT, 'n': N}]


@pytest.fixture(scope='module')
def bf16_runs(tiny_onnx_dir, packed, tmp_path_factory):
    """Run the current release on bf16 I/O, in-buffer and plain: (spec, its runs)."""
    spec = {'model_dir': packed(tiny_onnx_dir, 'bfloat16'), 'cases': _bf16_cases([448, 448]),
            'in_buffer': [True, False]}
    out = drive(CURRENT, spec, tmp_path_factory.mktemp('bf16'))
    assert out['error'] is None, (out['error'], out['stderr'][-2000:])
    return spec, out['runs']


def _check_in_buffer_equals_plain(runs):
    fast, plain = runs['1'], runs['0']
    assert fast['kv'] and not plain['kv']
    assert fast['tokens'] == plain['tokens']
    assert fast['tokens'][0] == fast['tokens'][3]  # a stale cache never leaks
    moved = {k: r['flush_bytes'] + r['invalidate_bytes'] for k, r in (('f', fast), ('p', plain))}
    assert moved['f'] * 5 < moved['p']


def test_bf16_in_buffer_equals_plain_run(bf16_runs):
    """On bf16 I/O: same tokens both ways, a stale cache never leaks, far fewer bytes moved."""
    _check_in_buffer_equals_plain(bf16_runs[1])


def test_card_bf16_in_buffer_equals_plain_run(bf16_runs, tmp_path):
    """The card on bf16 I/O: the same tokens as the board, in-buffer and plain.

    A stale cache never leaks, and far fewer bytes cross the link in-buffer.
    """
    spec, board = bf16_runs
    out = drive(CURRENT, spec, tmp_path, card=True)
    assert out['error'] is None, (out['error'], out['stderr'][-2000:])
    fast, plain = out['runs']['1'], out['runs']['0']
    assert fast['kv'] and not plain['kv']
    assert fast['tokens'] == plain['tokens'] == board['1']['tokens']
    _check_link_per_token(out['runs'])
    moved = [r['link']['host_to_device']['bytes'] + r['link']['device_to_host']['bytes']
             for r in (fast, plain)]
    assert moved[0] * 5 < moved[1], moved


def test_card_memory_rules(tmp_path):
    """The card stub's memory rules, through pyaxengine's own cffi handle.

    Fresh device memory is garbage (or what AX_STUB_AXCL_FILL says), axclrtMemcpy copies
    exactly its range and counts it, refuses a range past a block, and a host write through a
    device pointer kills the process saying why.
    """
    out = drive(CURRENT, {'action': 'card_probe'}, tmp_path, card=True)
    assert out['error'] is None, (out['error'], out['stderr'][-2000:])
    probe = out['card_probe']
    assert probe['fresh_distinct'] > 200 and probe['written_exactly'] and probe['past_end_refused']
    assert probe['link']['host_to_device'] == {'bytes': 100, 'calls': 1}
    assert probe['link']['device_to_host'] == {'bytes': 2 * 4096, 'calls': 2}
    zero = drive(CURRENT, {'action': 'card_probe'}, tmp_path, card=True, AX_STUB_AXCL_FILL='zero')
    assert zero['card_probe']['fresh_distinct'] == 1 and zero['card_probe']['fresh_first'] == 0
    early = tmp_path / 'early.json'
    spec = {'action': 'card_probe', 'touch': True, 'out_early': str(early)}
    (tmp_path / 'touch.json').write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, str(STUB / 'drive.py'), str(tmp_path / 'touch.json'),
                           str(tmp_path / 'touch_out.json')], env=stub_env(CURRENT, card=True),
                          capture_output=True, text=True, timeout=300)
    assert early.exists() and not (tmp_path / 'touch_out.json').exists()
    assert proc.returncode != 0
    assert 'the host touched device memory' in proc.stderr, proc.stderr[-2000:]


def test_card_cli_link_stats_and_second_card(models, reference, tmp_path):
    """qwen-vl-describe through with_npu_stub.sh --card on card 1 of 2.

    The answer, the log naming the card, and AX_STUB_LINK_STATS's JSON counting that card's
    runs only.
    """
    import cv2
    model_dir, case = models['image']
    h, w, seed = case['frames'][0]
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'f.png'), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    stats = tmp_path / 'link.json'
    proc = subprocess.run(
        [str(HERE.parent / 'scripts' / 'with_npu_stub.sh'), '--card', str(tarball(CURRENT)),
         '--', sys.executable, '-m', 'qwen_vl_ros.cli.describe', '--backend', 'axengine',
         '--model-dir', model_dir, '--image', str(tmp_path / 'f.png'), '--max-new-tokens', '6',
         '--greedy', '--repetition-penalty', '1.0', '--json', '--npu-device', '1'],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHON=sys.executable, AX_STUB_AXCL_DEVICES='2',
                 AX_STUB_LINK_STATS=str(stats)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)['token_ids'] == reference(case)[:6]
    assert 'models run on AXCLRTExecutionProvider (M.2 card 1, device id 130' in proc.stderr
    link = json.loads(stats.read_text())
    assert set(link) >= {'host_to_device', 'device_to_host', 'runs'}
    assert link['runs'] > 0 and link['runs_by_device'] == {'1': link['runs']}
    assert link['host_to_device']['calls'] > 0 and link['device_to_host']['bytes'] > 0


def test_bf16_chunked_in_buffer_equals_plain_and_missing_flush_shows(export_variant, packed,
                                                                     tmp_path):
    model_dir = packed(export_variant(**CHUNKED_EXPORT), 'bfloat16')
    jobs = [{'model_dir': model_dir, 'cases': _bf16_cases([112, 112]),
             'in_buffer': [True, False]},
            {'model_dir': model_dir, 'cases': _bf16_cases([112, 112])[:1],
             'skip_row_flush': True}]
    out = drive(CURRENT, {'jobs': jobs}, tmp_path)
    assert out['error'] is None, (out['error'], out['stderr'][-2000:])
    _check_in_buffer_equals_plain(out['jobs'][0])
    # rows written but never flushed: the NPU keeps reading zeros for them
    assert out['jobs'][1]['1']['tokens'][0] != out['jobs'][0]['1']['tokens'][0]


def test_kv_length_edge_in_buffer(export_variant, packed, tmp_path):
    """The last cache row is used, the same way in the buffers and on the host."""
    model_dir = packed(export_variant(image_size=(112, 112), prefill_len=48, kv_len=56),
                       'bfloat16')
    out = drive(CURRENT, {'model_dir': model_dir, 'in_buffer': [True, False],
                          'cases': [{'frames': [], 'prompt': 'hi', 'n': 100}]}, tmp_path)
    assert out['error'] is None, (out['error'], out['stderr'][-2000:])
    fast, plain = out['runs']['1'], out['runs']['0']
    assert fast['kv'] and fast['tokens'] == plain['tokens']
    assert fast['prompt_tokens'][0] + len(fast['tokens'][0]) == 56 + 1


def test_fallbacks_and_checks(caplog):
    from qwen_vl_ros.vlm.runtime import axclrt_kv, axengine_kv

    class NoInternals:  # a pyaxengine whose internals differ: no _io of buffers
        def get_inputs(self, shape_group=0):
            return []

    class AXCLRTSession(NoInternals):  # the card's provider, without what DeviceKV needs
        pass

    caplog.set_level('INFO', logger='qwen_vl_ros')
    assert axengine_kv.InBufferKV.attach(NoInternals(), 0) is None
    assert axengine_kv.attach(AXCLRTSession(), 0) is None
    assert axclrt_kv.DeviceKV.attach(AXCLRTSession(), 0) is None
    assert 'AXCLRTSession lacks' in caplog.text and '_thread_context' in caplog.text


def _reorder_layer_outputs(src: Path, dst: Path, keep=None) -> Path:
    """Copy an export with every layer model's outputs reordered (or cut to ``keep``)."""
    import onnx
    dst.mkdir()
    for p in src.iterdir():
        if '_together_g' in p.name and p.suffix == '.onnx':
            model = onnx.load(str(p), load_external_data=False)
            outs = list(model.graph.output)
            order = [o for o in outs if o.name == 'output'] + \
                [o for o in outs if o.name != 'output'][::-1]
            if keep is not None:
                order = [o for o in order if o.name in keep]
            del model.graph.output[:]
            model.graph.output.extend(order)
            onnx.save(model, str(dst / p.name))
        elif p.name.endswith('.weights'):  # onnxruntime wants external data beside the model
            shutil.copy(p, dst / p.name)
        else:
            os.symlink(p, dst / p.name)
    return dst


def test_layer_outputs_taken_by_name(tiny_onnx_dir, reference, tmp_path):
    d = _reorder_layer_outputs(Path(tiny_onnx_dir), tmp_path / 'reordered')
    pipe = Pipeline.load(str(d), backend='onnxruntime', threads=1, progress=lambda m: None)
    assert [s.name for s in pipe.decoder.layers[0].outputs(0)][0] == 'output'
    from qwen_vl_ros.vlm import GenerationOptions
    frames = [np.random.default_rng(1).integers(0, 256, (448, 448, 3), dtype=np.uint8)]
    got = pipe.describe(frames, PROMPT, GenerationOptions(max_new_tokens=N, greedy=True,
                                                          repetition_penalty=1.0))
    assert got.token_ids == reference(IMAGE)


def test_layer_without_a_contract_output_refused_at_load(tiny_onnx_dir, tmp_path):
    d = _reorder_layer_outputs(Path(tiny_onnx_dir), tmp_path / 'cut',
                               keep=('output', 'K_cache_out'))
    with pytest.raises(ModelDirError, match=r"lacks outputs \['V_cache_out'\]"):
        Pipeline.load(str(d), backend='onnxruntime', threads=1, progress=lambda m: None)


def test_card_node_diagnostics_name_the_provider_and_card(models, tmp_path, monkeypatch):
    """describe_node with npu_device 1 on a host with two cards: /diagnostics says so."""
    pytest.importorskip('rclpy')
    pytest.importorskip('qwen_vl_interfaces')
    import node_harness as harness
    env = stub_env(CURRENT, card=True)
    for name in ('LD_LIBRARY_PATH', 'PYTHONPATH', 'AX_STUB_NPU'):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv('AX_STUB_AXCL_DEVICES', '2')
    args = harness.launch_arguments(model_dir=models['image'][0], backend='axengine',
                                    npu_provider='AXCLRTExecutionProvider', npu_device=1,
                                    max_new_tokens=4)
    with harness.ready_node(args, tmp_path):
        with harness.service_client() as client:
            def model_status():
                for arr in reversed(client.diagnostics):
                    for st in client.own_statuses(arr):
                        if st.name.endswith(': model') and st.message.startswith('ready'):
                            return st
                return None
            st = client.wait_until(model_status, harness.DIAGNOSTICS_WAIT_S, 'model status')
    values = {kv.key: kv.value for kv in st.values}
    assert st.message.startswith('ready: axengine on AXCLRTExecutionProvider (M.2 card 1, '
                                 'device id 130'), st.message
    assert values['runs_on'].startswith('AXCLRTExecutionProvider (M.2 card 1'), values
