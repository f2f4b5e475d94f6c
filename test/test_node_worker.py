"""The inference worker on its own: loading, the bounded queue, errors, cancel and stop."""

import threading
import time

import pytest

from qwen_vl_ros.ros.worker import Cancelled, InferenceWorker, Job, Refused

pytestmark = pytest.mark.timeout(30)


class Recorder:
    def __init__(self):
        self.loaded = threading.Event()
        self.failed = []


def make_worker(load, queue_size=1):
    rec = Recorder()
    w = InferenceWorker(load, queue_size, on_loaded=lambda p, s: rec.loaded.set(),
                        on_load_failed=rec.failed.append)
    return w, rec


def ready_worker(queue_size=1):
    """Start a worker and wait for its instant load; its pipeline is the string 'pipe'."""
    w, rec = make_worker(lambda: 'pipe', queue_size)
    w.start()
    assert rec.loaded.wait(5)
    return w


def blocking_job(release: threading.Event, started: threading.Event | None = None):
    def run(pipe, should_stop):
        if started:
            started.set()
        while not release.is_set():
            if should_stop():
                return 'stopped'
            time.sleep(0.01)
        return pipe
    return Job(run)


def test_requests_before_ready_are_refused_with_loading():
    gate = threading.Event()
    w, rec = make_worker(lambda: gate.wait(10) and 'pipe')
    w.start()
    with pytest.raises(Refused) as e:
        w.submit(Job(lambda p, s: p))
    assert e.value.kind == 'loading' and str(e.value).startswith('loading')
    gate.set()
    assert rec.loaded.wait(5)
    job = w.submit(Job(lambda p, s: p + '!'))
    assert job.done.wait(5) and job.result == 'pipe!' and job.error is None
    assert w.stop()


def test_load_failure_is_reported_and_refuses_requests():
    def load():
        raise RuntimeError('no such model')
    w, rec = make_worker(load)
    w.start()
    deadline = time.monotonic() + 5
    while not rec.failed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [str(e) for e in rec.failed] == ['no such model']
    assert w.state == 'failed'
    with pytest.raises(Refused) as e:
        w.submit(Job(lambda p, s: p))
    assert e.value.kind == 'failed' and 'no such model' in str(e.value)
    assert w.stop()


def test_full_queue_refuses_at_once_and_timer_rule_only_if_idle():
    w = ready_worker(1)
    release, started = threading.Event(), threading.Event()
    running = w.submit(blocking_job(release, started))
    assert started.wait(5)
    assert not w.idle
    with pytest.raises(Refused) as e:
        w.submit(Job(lambda p, s: p), only_if_idle=True)
    assert e.value.kind == 'busy'
    queued = w.submit(Job(lambda p, s: 'second'))
    t0 = time.monotonic()
    with pytest.raises(Refused) as e:
        w.submit(Job(lambda p, s: p))
    # at once: a submit that waited for room would wait until release (never, here); the
    # bound only has to survive a descheduled test process on a loaded machine
    assert time.monotonic() - t0 < 2
    assert e.value.kind == 'busy' and 'queue_size 1' in str(e.value)
    release.set()
    assert running.done.wait(5) and queued.done.wait(5)
    assert (running.result, queued.result) == ('pipe', 'second')
    assert w.stop()


def test_a_failing_job_does_not_stop_the_worker():
    w = ready_worker()

    def boom(p, s):
        raise ValueError('bad frame')
    bad = w.submit(Job(boom))
    assert bad.done.wait(5) and isinstance(bad.error, ValueError)
    good = w.submit(Job(lambda p, s: 'fine'))
    assert good.done.wait(5) and good.result == 'fine'
    assert w.stop()


def test_cancel_and_stop():
    w = ready_worker(2)
    never, started = threading.Event(), threading.Event()
    running = w.submit(blocking_job(never, started))
    assert started.wait(5)
    dropped = w.submit(Job(lambda p, s: 'x'))
    dropped.cancel()
    left = w.submit(Job(lambda p, s: 'y'))
    # within the bound: the running job never ends by itself, only should_stop() ends it
    assert w.stop(timeout=10)
    assert running.done.is_set() and running.result == 'stopped'   # should_stop() said so
    for job in (dropped, left):
        assert job.done.is_set() and isinstance(job.error, Cancelled)
    with pytest.raises(Refused) as e:
        w.submit(Job(lambda p, s: p))
    assert e.value.kind == 'stopped'
