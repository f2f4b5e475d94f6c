"""Runtime faults, injected into the real onnxruntime sessions (fault_runtime.py).

The core in-process: a raise at a chosen layer and step, NaN / Inf outputs anywhere fail that
request with the reason (NaN logits named as such) and the next request gives exactly the tokens
of a clean run (so no NaN is left in the KV cache). The hang watchdog on the worker alone. Then
describe_node itself, run through test/fault_node.py with faults armed per request: raise and
NaN answered with their reasons and the node keeps serving; a hang answers every waiting request
with the reason, refuses new ones, reports ERROR on /diagnostics (seen by a real subscriber) and
exits with code 3 after hang_exit_s.
"""

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fault_runtime import ENV_PLAN, Fault, FaultPlan, wrap_pipeline, write_plan
from qwen_vl_ros.ros.health import EXIT_HUNG, HangWatchdog
from qwen_vl_ros.ros.worker import InferenceWorker, Job, Refused, RuntimeHung
from qwen_vl_ros.vlm import GenerationOptions, Pipeline, RuntimeFailure
from qwen_vl_ros.vlm.errors import NonFiniteOutput

pytestmark = pytest.mark.timeout(180)

GREEDY = GenerationOptions(max_new_tokens=8, greedy=True, repetition_penalty=1.0)
FAULT_NODE = Path(__file__).resolve().parent / 'fault_node.py'


def frame(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (448, 448, 3), dtype=np.uint8)


# -- the core, in-process -----------------------------------------------------------------------
@pytest.fixture(scope='module')
def faulty(tiny_onnx_dir):
    """(pipeline with wrapped sessions, its plan, the clean greedy tokens of frame(0)).

    No vision cache: every request about frame(0) runs the vision model, so a vision fault
    fires (a follow-up would reuse the features, vlm/reuse.py).
    """
    pipe = Pipeline.load(str(tiny_onnx_dir), backend='onnxruntime', threads=1,
                         progress=lambda m: None, vision_cache_frames=0)
    plan = FaultPlan()
    wrap_pipeline(pipe, plan)
    clean = pipe.describe([frame()], 'Describe this image.', GREEDY).token_ids
    assert len(clean) == GREEDY.max_new_tokens and not plan.fired
    return pipe, plan, clean


def describe(pipe):
    return pipe.describe([frame()], 'Describe this image.', GREEDY)


@pytest.mark.parametrize('layer,step', [(0, 0), (1, 3), (1, 7)])
def test_raise_at_a_layer_and_step_fails_that_request_only(faulty, layer, step):
    pipe, plan, clean = faulty
    plan.arm(Fault('raise', 'layer', layer, step))
    with pytest.raises(RuntimeFailure) as e:
        describe(pipe)
    assert plan.fired[-1] == ('raise', 'layer', layer, step)
    assert f'injected fault in layer {layer} at step {step}' in str(e.value)
    assert 'onnxruntime failed on' in str(e.value)
    assert describe(pipe).token_ids == clean


@pytest.mark.parametrize('fault,name', [
    (Fault('nan', 'layer', 1, 3), 'NaN'),       # a decode step: NaN K/V rows land in the cache
    (Fault('nan', 'layer', 0, 0), 'NaN'),       # the prefill
    (Fault('inf', 'post', None, 5), 'Inf'),
    (Fault('nan', 'vision'), 'NaN'),
    (Fault('inf', 'layer', 1, 2), 'NaN'),       # Inf hidden states become NaN in the norm
])
def test_non_finite_outputs_fail_the_request_naming_them(faulty, fault, name):
    pipe, plan, clean = faulty
    plan.arm(fault)
    with pytest.raises(NonFiniteOutput) as e:
        describe(pipe)
    assert plan.fired[-1][0] == fault.kind
    assert str(e.value).startswith(f'{name} logits: the model returned '), str(e.value)
    # the next request is exactly a clean run: no NaN row left in the cache, masked or not
    assert describe(pipe).token_ids == clean


def test_a_slow_call_is_not_a_fault(faulty):
    pipe, plan, clean = faulty
    plan.arm(Fault('delay', 'layer', 1, 2, seconds=0.3))
    assert describe(pipe).token_ids == clean and plan.fired[-1][0] == 'delay'


def test_hang_in_process_returns_when_released(faulty):
    pipe, plan, clean = faulty
    plan.arm(Fault('hang', 'post', None, 1))
    out = {}
    t = threading.Thread(target=lambda: out.update(r=describe(pipe)), daemon=True)
    t.start()
    t.join(1.0)
    assert t.is_alive() and plan.fired[-1] == ('hang', 'post', None, 1)
    plan.release.set()
    t.join(10)
    plan.release.clear()
    assert out['r'].token_ids == clean


@pytest.mark.parametrize('card', [False, True], ids=['board', 'card'])
def test_nan_rows_in_the_npu_buffers_are_cleared_there_too(tiny_onnx_dir, tmp_path, card):
    """Clear the in-buffer KV cache on the device, under the real pyaxengine.

    NaN rows left in the session's cache buffers (what a NaN run leaves) fail the next request
    by name (masked rows still poison attention: NaN + mask is NaN), are zeroed there (the
    board: axengine_kv, flushed; the M.2 card: axclrt_kv, on the card), and the request after
    that is a clean run (test/npu_stub/drive.py, action nan_rows).
    """
    ax = pytest.importorskip('test_axengine_backend')
    sys.path.insert(0, str(ax.STUB / 'python'))
    try:
        from axmodel_pack import pack_model_dir
    finally:
        sys.path.remove(str(ax.STUB / 'python'))
    model_dir = pack_model_dir(tiny_onnx_dir, tmp_path / 'axmodel', 'bfloat16')
    case = {'frames': [[448, 448, 1]], 'prompt': 'Describe this image.', 'n': 8}
    out = ax.drive(ax.CURRENT, {'action': 'nan_rows', 'model_dir': str(model_dir),
                                'cases': [case]}, tmp_path, card, AX_STUB_CMM_FILL='zero')
    assert out['error'] is None, (out['error'], out['stderr'][-2000:])
    r = out['nan_rows']
    assert r['poisoned'].startswith('NonFiniteOutput: NaN logits'), r['poisoned']
    assert r['after'] == r['clean'] and len(r['clean']) == 8


# -- the watchdog on the worker alone -------------------------------------------------------
def test_watchdog_answers_waiting_jobs_refuses_new_ones_and_exits():
    w = InferenceWorker(lambda: 'pipe', queue_size=2)
    w.start()
    deadline = time.monotonic() + 5
    while w.state != 'ready' and time.monotonic() < deadline:
        time.sleep(0.01)
    stuck, started = threading.Event(), threading.Event()

    def run(pipe, should_stop):
        started.set()
        for _ in range(5):              # a few decode steps: signs of life
            should_stop()
            time.sleep(0.05)
        stuck.wait()                    # then a call that does not return
        return 'late'

    events = []
    dog = HangWatchdog(w, lambda: (0.5, 1.0), on_hung=lambda r: events.append(('hung', r)),
                       on_recovered=lambda s: events.append(('recovered', s)),
                       on_exit=lambda r: events.append(('exit', r)), poll_s=0.05)
    dog.start()
    t0 = time.monotonic()
    running = w.submit(Job(run))
    assert started.wait(5)
    queued = [w.submit(Job(lambda p, s: 'never')) for _ in range(2)]
    for job in [running] + queued:
        assert job.done.wait(5)
        assert isinstance(job.error, RuntimeHung), job.error
        assert 'has not returned for' in str(job.error)
    took = time.monotonic() - t0
    assert 0.7 < took < 3, took    # 5 x 50 ms with signs of life, then 0.5 s without
    with pytest.raises(Refused) as e:
        w.submit(Job(lambda p, s: p))
    assert e.value.kind == 'hung' and str(e.value).startswith('runtime hung: the inference')
    deadline = time.monotonic() + 5
    while len(events) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [k for k, _ in events] == ['hung', 'exit']
    stuck.set()
    w.stop()


def test_watchdog_calls_the_exit_off_when_the_call_returns():
    w = InferenceWorker(lambda: 'pipe', queue_size=1)
    w.start()
    while w.state != 'ready':
        time.sleep(0.01)
    release = threading.Event()
    events = []
    dog = HangWatchdog(w, lambda: (0.3, 30.0), on_hung=lambda r: events.append('hung'),
                       on_recovered=lambda s: events.append('recovered'),
                       on_exit=lambda r: events.append('exit'), poll_s=0.05)
    dog.start()
    job = w.submit(Job(lambda p, s: release.wait()))
    assert job.done.wait(5) and isinstance(job.error, RuntimeHung)
    release.set()
    deadline = time.monotonic() + 5
    while events != ['hung', 'recovered'] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert events == ['hung', 'recovered'] and w.state == 'ready'
    again = w.submit(Job(lambda p, s: 'fine'))
    assert again.done.wait(5) and again.result == 'fine'
    dog.stop()
    w.stop()


# -- describe_node with faults ----------------------------------------------------------------
harness = pytest.importorskip('node_harness')
pytest.importorskip('rclpy')
pytest.importorskip('qwen_vl_interfaces')


class FaultNodeProcess(harness.NodeProcess):
    """describe_node run through test/fault_node.py, its faults armed with ``arm``."""

    def __init__(self, args: list, log_dir: Path):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.plan_path = log_dir / 'plan.json'
        self.log_path = log_dir / 'node.log'
        self.cmd = [sys.executable, str(FAULT_NODE)] + list(args)
        env = harness.ros_env(log_dir)
        env[ENV_PLAN] = str(self.plan_path)
        self._log = open(self.log_path, 'wb')
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def arm(self, *faults: Fault) -> None:
        write_plan(self.plan_path, *faults)


HANG_TIMEOUT_S = 2.0
HANG_EXIT_S = 5.0


@pytest.fixture(scope='module')
def fault_node(tiny_onnx_dir, tmp_path_factory):
    args = harness.launch_arguments(model_dir=str(tiny_onnx_dir), threads=1, queue_size=2,
                                    max_image_age_s=0.0, request_timeout_s=60.0,
                                    hang_timeout_s=HANG_TIMEOUT_S, hang_exit_s=HANG_EXIT_S)
    node = FaultNodeProcess(args, tmp_path_factory.mktemp('fault_node'))
    try:
        node.wait_for_log(harness.READY, 90)
        yield node
    finally:
        node.stop(signal.SIGKILL)


@pytest.fixture(scope='module')
def client(fault_node):
    with harness.service_client() as c:
        yield c


def ask(client, seed=1, tokens=8, timeout=60):
    img = harness.image_msg(harness.picture(seed=seed))
    return client.describe(image=img, max_new_tokens=tokens, timeout=timeout)


def test_node_answers_a_runtime_raise_and_keeps_serving(fault_node, client):
    assert ask(client).success
    fault_node.arm(Fault('raise', 'layer', 1, 2))
    r = ask(client)
    assert not r.success
    assert r.message.startswith('runtime error: onnxruntime failed on '), r.message
    assert 'injected fault in layer 1 at step 2' in r.message
    r = ask(client)
    assert r.success, r.message


def test_node_names_nan_logits_and_keeps_serving(fault_node, client):
    good = ask(client, seed=3)
    fault_node.arm(Fault('nan', 'layer', 0, 3))
    r = ask(client, seed=3)
    assert not r.success
    assert r.message.startswith('runtime error: NaN logits: the model returned '), r.message
    again = ask(client, seed=3)
    assert again.success, again.message
    assert again.description.text == good.description.text


def test_node_hang_answers_waiters_refuses_new_ones_goes_error_and_exits(fault_node, client):
    from diagnostic_msgs.msg import DiagnosticStatus
    fault_node.arm(Fault('hang', 'layer', 1, 2))
    t0 = time.monotonic()
    first = client.call_async(client.describe_client, client.describe_request(
        image=harness.image_msg(harness.picture(seed=5)), max_new_tokens=8))
    fault_node.wait_for_log('fault_runtime: hang in layer 1 at step 2', 30)
    waiting = [client.call_async(client.describe_client, client.describe_request(
        image=harness.image_msg(harness.picture(seed=6 + i)), max_new_tokens=8))
        for i in range(2)]
    answers = []
    for done, future in [first] + waiting:
        assert done.wait(HANG_TIMEOUT_S + 10), 'a waiting request was not answered'
        answers.append(future.result())
    took = time.monotonic() - t0
    assert took < HANG_TIMEOUT_S + 8, took
    for r in answers:
        assert not r.success
        assert r.message.startswith('runtime hung: the inference runtime has not returned '
                                    'for '), r.message
        assert f'the node exits in {HANG_EXIT_S:g} s' in r.message
    t1 = time.monotonic()
    r = ask(client, seed=9, timeout=10)
    assert not r.success and r.message.startswith('runtime hung: '), r.message
    assert time.monotonic() - t1 < 2
    # an operator sees it on /diagnostics
    st = client.wait_until(
        lambda: (s := client.status('model')) is not None
        and s.level == DiagnosticStatus.ERROR and s, harness.DIAGNOSTICS_WAIT_S,
        'model status ERROR')
    assert st.message.startswith('hung: '), st.message
    assert 'exits in' in st.message
    # and the process exits so that its supervisor restarts it
    rc = fault_node.wait_exit(HANG_EXIT_S + 10)
    assert rc == EXIT_HUNG, fault_node.output()[-3000:]
    assert f'exiting with code {EXIT_HUNG}: runtime hung' in fault_node.output()
