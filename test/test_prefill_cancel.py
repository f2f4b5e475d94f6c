"""A cancel during a long prefill ends it between two chunks, not at the first token.

Pipeline.describe asks should_stop() before the vision model, before each prefill chunk (a
chunked-prefill build has several) and before each decode step. Every runtime call is counted
(test_reuse.Calls), so the tests show what ran after the stop: nothing after the chunk that was
running, no vision call for a request already cancelled, and the next request's tokens are a
fresh run's (the half-written KV rows are not reused). Through the node: a ~/describe_stream
goal cancelled during a slow chunked prefill (test/fault_runtime.py's delay on every prefill
chunk) ends after at most the running chunk, with no tokens and finish reason 'cancelled'.
"""

import time

import pytest

pytest.importorskip('torch', reason='the tiny stand-ins are exported with torch')

from qwen_vl_ros.vlm import Pipeline  # noqa: E402
from test_reuse import CHUNKED, GREEDY, Calls, chunks, frame, fresh  # noqa: E402

# with 16 image tokens: 83 prompt tokens, six chunks of 16 on the chunked build (up to 96)
LONG = 'Look at this picture and tell me what you see.'


@pytest.fixture(scope='module')
def chunked(export_variant):
    return Pipeline.load(str(export_variant(**CHUNKED)), threads=1, progress=lambda m: None)


def stop_at(n: int):
    """Return a should_stop that says stop at its n-th call (1-based), and its call list."""
    asked = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) >= n
    return should_stop, asked


def test_cancel_between_prefill_chunks_and_the_next_request_is_exact(chunked):
    pipe = chunked
    img = [frame(112, 112, seed=41)]
    want = fresh(pipe, img, LONG)
    layers, c = len(pipe.decoder.layers), pipe.decoder.chunk
    k = chunks(want.prompt_tokens, c)
    assert k >= 5, f'{want.prompt_tokens} prompt tokens: {k} chunks, want a long prefill'
    calls = Calls(pipe)
    for ran in (0, 2, k - 1):        # chunks that ran before the stop
        pipe.vision_cache.clear()
        pipe.prefix_cache.forget()
        calls.take()
        # asked: 1 before vision, then before each chunk; stop before chunk `ran`
        should_stop, asked = stop_at(2 + ran)
        got = pipe.describe(img, LONG, GREEDY, should_stop=should_stop)
        counts = calls.take()
        assert got.finish_reason == 'cancelled' and got.token_ids == [] and got.text == ''
        assert got.prompt_tokens == want.prompt_tokens
        assert counts[('vision', 0)] == 1
        assert calls.prefill_steps(counts) == layers * ran
        assert counts[('post', 0)] == 0, 'no logits after a stopped prefill'
        # the next request (vision kept, nothing of the stopped prefill reused): exact
        again = pipe.describe(img, LONG, GREEDY)
        counts = calls.take()
        assert again.token_ids == want.token_ids and again.reused_prompt_tokens == 0
        assert counts[('vision', 0)] == 0 and again.vision_cached
        assert calls.prefill_steps(counts) == layers * k


def test_a_request_cancelled_before_it_began_runs_no_model(chunked):
    pipe = chunked
    pipe.vision_cache.clear()
    pipe.prefix_cache.forget()
    calls = Calls(pipe)
    got = pipe.describe([frame(112, 112, seed=42)], LONG, GREEDY, should_stop=lambda: True)
    assert got.finish_reason == 'cancelled' and got.token_ids == []
    assert sum(calls.take().values()) == 0


def test_not_cancelled_the_stop_checks_change_no_token(chunked):
    pipe = chunked
    img = [frame(112, 112, seed=43)]
    want = fresh(pipe, img, LONG)
    never, asked = stop_at(10 ** 9)
    got = fresh(pipe, img, LONG, should_stop=never)
    assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason
    k = chunks(got.prompt_tokens, pipe.decoder.chunk)
    steps = len(got.token_ids) - 1      # the first token came from the prefill
    # asked before vision, before each of the k chunks and before each decode step
    assert len(asked) == 1 + k + steps, (len(asked), k, steps)


def test_single_prefill_build_stops_after_vision(tiny_onnx_dir):
    pipe = Pipeline.load(str(tiny_onnx_dir), threads=1, progress=lambda m: None)
    calls = Calls(pipe)
    should_stop, asked = stop_at(2)          # after vision, before the one prefill
    got = pipe.describe([frame(448, 448, seed=44)], 'Describe this image.', GREEDY,
                        should_stop=should_stop)
    counts = calls.take()
    assert got.finish_reason == 'cancelled' and got.token_ids == []
    assert counts[('vision', 0)] == 1 and calls.prefill_steps(counts) == 0
    assert counts[('post', 0)] == 0


# -- the action ---------------------------------------------------------------------------------
CHUNK_DELAY_S = 0.8     # every prefill chunk (its layer-0 call) waits this long: a slow NPU


@pytest.fixture(scope='module')
def node(export_variant, tmp_path_factory):
    """describe_node in this process on the chunked build; prefill chunks made slow."""
    pytest.importorskip('rclpy')
    pytest.importorskip('qwen_vl_interfaces')
    from fault_runtime import Fault, FaultPlan, wrap_pipeline
    from node_harness import in_process_node, launch_arguments
    from qwen_vl_ros.ros.node import DescribeNode
    args = launch_arguments(model_dir=str(export_variant(**CHUNKED)), backend='onnxruntime',
                            threads=1, queue_size=1, max_image_age_s=0.0, max_new_tokens=8)
    with in_process_node(DescribeNode, 'describe_node', args,
                         tmp_path_factory.mktemp('ros_log')) as node:
        node.plan = FaultPlan(Fault('delay', 'layer', layer=0, step=0, times=0,
                                    seconds=CHUNK_DELAY_S))
        wrap_pipeline(node.worker.pipeline, node.plan)
        node.calls = Calls(node.worker.pipeline)
        yield node


def test_goal_cancelled_during_a_chunked_prefill_ends_after_the_running_chunk(node):
    from qwen_vl_interfaces.action import Describe
    from rclpy.action import ActionClient

    from node_harness import image_msg, picture, service_client
    from test_stream_action import Goal, handshake, status_name, wait_idle
    pipe = node.worker.pipeline
    layers = len(pipe.decoder.layers)
    img = image_msg(picture(height=112, width=112, seed=45))
    with service_client() as c:
        c.stream = ActionClient(c.node, Describe, '/qwen_vl/describe_stream')
        assert c.stream.wait_for_server(timeout_sec=20)
        handshake(c)
        # not cancelled: the whole prefill, then the answer (the reference)
        node.calls.take()
        whole = Goal(c, LONG, img, max_new_tokens=4).wait(60)
        assert whole.result.success, whole.result.message
        k = chunks(whole.result.description.prompt_tokens, pipe.decoder.chunk)
        assert k >= 5 and node.calls.prefill_steps(node.calls.take()) == layers * k
        # cancelled once the second chunk is running (a new frame: nothing reused)
        wait_idle(node)
        server = node._stream._server
        at_cancel = []

        def on_cancel(handle):
            at_cancel.append(node.calls.counts.copy())
            return node._stream._on_cancel(handle)
        server.register_cancel_callback(on_cancel)
        try:
            fired = len(node.plan.fired)
            g = Goal(c, LONG, image_msg(picture(height=112, width=112, seed=46)),
                     max_new_tokens=4)
            deadline = time.monotonic() + 30
            while len(node.plan.fired) < fired + 2:      # chunk 2's layer 0 is waiting
                assert time.monotonic() < deadline, 'the prefill did not start'
                time.sleep(0.01)
            t_cancel = time.monotonic()
            g.handle.cancel_goal_async()
            g.wait(30)
            took = time.monotonic() - t_cancel
        finally:
            server.register_cancel_callback(node._stream._on_cancel)
        wait_idle(node)
        after = node.calls.counts - at_cancel[0]
        assert status_name(g.status) == 'canceled' and g.result.message == 'cancelled'
        d = g.result.description
        assert d.finish_reason == 'cancelled' and d.generated_tokens == 0 and d.text == ''
        assert node.calls.prefill_steps(after) <= layers, f'more than the running chunk: {after}'
        assert after[('post', 0)] == 0
        # the rest of the prefill (k - 2 more chunks) was not waited for
        assert took < (k - 2) * CHUNK_DELAY_S, f'{took:.2f} s after the cancel'
        # and the worker serves at once, with a fresh run's tokens
        again = Goal(c, LONG, img, max_new_tokens=4).wait(60)
        assert again.result.success
        assert again.result.description.text == whole.result.description.text
