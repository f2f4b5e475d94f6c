"""The one inference worker: a thread that loads and owns the Pipeline, fed by a bounded queue.

Runtime sessions are single-threaded, so every model call happens on this thread. Nothing here
imports rclpy: callers hand in jobs (a function of the pipeline) and either wait on ``job.done``
(the service) or let ``on_done`` run on the worker thread (the timer).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable


class Refused(Exception):
    """A job was not accepted: ``kind`` (loading, failed, busy, hung, stopped) and why."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Cancelled(Exception):
    """The job was dropped before it ran (shut-down, or its caller stopped waiting)."""


class NotAnAnswer(Exception):
    """A typed answer the token budget cut (vlm Result.problem): success false, text kept.

    ``kept``: what the job made before it (Descriptions, the cut one last; or ~/detect's
    (Detection2DArray, Detections)), returned with the reason instead of published.
    """

    def __init__(self, reason: str, kept):
        super().__init__(reason)
        self.kept = kept


class RuntimeHung(Exception):
    """The runtime made no progress for too long (ros/health.py): the job is answered now."""


@dataclass(eq=False)
class Job:
    """One request: ``run(pipeline, should_stop)`` is called on the worker thread."""

    run: Callable[[Any, Callable[[], bool]], Any]
    on_done: Callable[[Job], None] | None = None
    result: Any = None
    error: BaseException | None = None
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    finished: bool = False      # claimed by _finish (a hung job may be finished by another thread)

    def cancel(self) -> None:
        """Drop the job if it is still queued; end its generation early if it is running."""
        self.cancelled = True


class InferenceWorker:
    """Loads the model with ``load()`` on its own thread, then runs queued jobs one at a time."""

    def __init__(self, load: Callable[[], Any], queue_size: int,
                 on_loaded: Callable[[Any, float], None] | None = None,
                 on_load_failed: Callable[[BaseException], None] | None = None,
                 on_job_error: Callable[[Job, BaseException], None] | None = None):
        self._load = load
        self.queue_size = queue_size
        self._on_loaded = on_loaded
        self._on_load_failed = on_load_failed
        self._on_job_error = on_job_error
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._running: Job | None = None
        self.state = 'loading'     # -> 'ready' | 'failed'; 'ready' <-> 'hung'; then 'stopped'
        self.hang_reason = ''
        self._progress = 0.0       # time.monotonic() of the running job's last sign of life
        self.load_error: BaseException | None = None
        self.pipeline = None
        # A daemon thread: a model run cannot be interrupted, and the process must be able to
        # exit while one is still inside the runtime (the node waits for it only briefly).
        self._thread = threading.Thread(target=self._main, name='inference', daemon=True)

    # -- called from other threads ------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def idle(self) -> bool:
        """Nothing running and nothing queued."""
        with self._cond:
            return self._running is None and not self._queue

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return len(self._queue) + (self._running is not None)

    def submit(self, job: Job, only_if_idle: bool = False) -> Job:
        """Queue ``job`` or raise Refused at once (never blocks).

        ``only_if_idle``: accept only when nothing is running or queued (the timer's rule:
        a tick while busy is skipped, never queued).
        """
        with self._cond:
            if self.state == 'loading':
                raise Refused('loading', 'loading: the model is still loading, try again '
                                         'when the node has logged "ready"')
            if self.state == 'failed':
                raise Refused('failed', f'failed: the model did not load ({self.load_error})')
            if self.state == 'stopped':
                raise Refused('stopped', 'shutting down')
            if self.state == 'hung':
                raise Refused('hung', f'runtime hung: {self.hang_reason}')
            if only_if_idle and (self._running is not None or self._queue):
                raise Refused('busy', 'busy: a description is being generated')
            if len(self._queue) >= self.queue_size:
                raise Refused('busy', f'busy: {len(self._queue)} request(s) already waiting '
                                      f'(queue_size {self.queue_size}); try again later')
            self._queue.append(job)
            self._cond.notify()
        return job

    def withdraw(self, job: Job) -> bool:
        """Cancel ``job``; if it is still queued, take it out now (it ends with Cancelled).

        Returns False when it is running (it stops at its next decode step) or done.
        """
        job.cancel()
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return False
        self._finish(job, error=Cancelled('cancelled before it ran'))
        return True

    def stop(self, timeout: float = 1.0) -> bool:
        """Cancel everything, wake every waiter; wait up to ``timeout`` s for the thread.

        Returns True when the thread has ended.
        """
        with self._cond:
            self.state = 'stopped'
            self._stop.set()
            dropped = list(self._queue)
            self._queue.clear()
            if self._running is not None:
                self._running.cancel()
            self._cond.notify_all()
        for job in dropped:
            self._finish(job, error=Cancelled('shutting down'))
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stalled_for(self) -> float:
        """Seconds the running job has gone without a sign of life; 0.0 when nothing runs.

        Signs of life: the job starting, and each ``should_stop()`` call (before vision, each
        prefill chunk and each decode step).
        """
        with self._cond:
            if self._running is None:
                return 0.0
            return time.monotonic() - self._progress

    def declare_hung(self, reason: str) -> bool:
        """Answer every queued and the running job with RuntimeHung(reason); refuse new ones.

        The running call cannot be interrupted: its thread stays inside the runtime. If the call
        returns after all, the worker is 'ready' again. False when nothing was running.
        """
        with self._cond:
            if self.state != 'ready' or self._running is None:
                return False
            self.state = 'hung'
            self.hang_reason = reason
            jobs = list(self._queue) + [self._running]
            self._queue.clear()
        for job in jobs:
            job.cancel()
            self._finish(job, error=RuntimeHung(reason))
        return True

    # -- the worker thread --------------------------------------------------------------------
    def _main(self) -> None:
        t0 = time.monotonic()
        try:
            pipeline = self._load()
        except BaseException as e:  # noqa: BLE001 - any failure to load ends the node
            with self._cond:
                if self.state != 'stopped':
                    self.state = 'failed'
                self.load_error = e
            if self._on_load_failed is not None and not self._stop.is_set():
                self._on_load_failed(e)
            return
        with self._cond:
            self.pipeline = pipeline
            if self.state == 'stopped':
                return
            self.state = 'ready'
        if self._on_loaded is not None:
            self._on_loaded(pipeline, time.monotonic() - t0)
        while True:
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return
                job = self._queue.popleft()
                if not job.cancelled:
                    self._running = job
                    self._progress = time.monotonic()
            if job.cancelled:
                self._finish(job, error=Cancelled('cancelled before it ran'))
                continue
            try:
                result = job.run(pipeline, lambda j=job: self._alive_and_asked(j))
            except Exception as e:  # noqa: BLE001 - a bad request never stops the worker
                self._finish(job, error=e)
            else:
                self._finish(job, result=result)
            finally:
                with self._cond:
                    self._running = None
                    if self.state == 'hung':   # the stuck call returned after all
                        self.state = 'ready'

    def _alive_and_asked(self, job: Job) -> bool:
        """Return the job's should_stop(): a sign of life, and whether it should end early."""
        self._progress = time.monotonic()
        return job.cancelled or self._stop.is_set()

    def _finish(self, job: Job, result=None, error: BaseException | None = None) -> None:
        with self._cond:
            if job.finished:     # already answered (declared hung by the watchdog)
                return
            job.finished = True
        job.result, job.error = result, error
        try:
            if job.on_done is not None:
                job.on_done(job)
        except Exception as e:  # noqa: BLE001
            if self._on_job_error is not None:
                self._on_job_error(job, e)
        finally:
            job.done.set()
