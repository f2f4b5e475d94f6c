"""What serves: the cameras, ~/describe, ~/detect, ~/describe_stream, the timers, one worker.

    Serving(node, house, load)   publishers and services (they answer "not active" while the
                                 node does not serve), one inference worker (not started)
    .activate() / .start()       subscriptions and timers / the worker loads (or takes) the model
    .deactivate()                subscriptions and timers gone, worker stopped, frames forgotten
    .destroy()                   every entity gone

The plain node (node.py) makes one in __init__ and activates it at once; the managed node
(managed.py) makes one on configure, activates it on activate, deactivates it on deactivate and
destroys it on cleanup. Every camera's jobs go to the one worker with its one bounded queue.
"""

from __future__ import annotations

import time

from .camera import Camera, Cameras
from .convert import error_kind
from .describe_service import DescribeService
from .housekeeping import warning
from .detect_service import DetectService
from .stream_action import StreamAction
from .timer import CameraTimers
from .worker import Cancelled, InferenceWorker, Refused

# Executor threads besides one per request that may wait on the worker: diagnostics, parameter
# services, immediate "busy" replies, the timers, and one image subscription (one more per
# further camera).
SPARE_THREADS = 4
# ~/describe_stream's goal, cancel and result requests, answered while goals wait on the worker.
ACTION_THREADS = 2


def executor_threads(settings) -> int:
    """Threads of the node's MultiThreadedExecutor for these parameters."""
    return (settings.queue_size + 1 + SPARE_THREADS + ACTION_THREADS
            + len(settings.camera_names) - 1)


class Serving:
    """The serving part of a qwen_vl node (plain or managed)."""

    def __init__(self, node, house, load, load_seconds: float | None = None):
        """Make the publishers, services, action and the (not started) worker.

        ``load()`` returns the Pipeline on the worker thread; ``load_seconds``: the time a load
        made before (a managed node's configure) took, reported instead of the worker's.
        """
        self.node = node
        self.house = house
        self._load = load
        self._load_seconds = load_seconds
        self.active = False
        self.cameras = Cameras([Camera(node, name, house)
                                for name in house.settings.camera_names])
        self.worker = self._new_worker()
        self.describe = DescribeService(self)
        self.detect = DetectService(self)
        self.stream = StreamAction(self)
        self.timers = CameraTimers(self)

    def _new_worker(self) -> InferenceWorker:
        h = self.house
        worker = InferenceWorker(self._load, h.settings.queue_size, on_loaded=self._on_loaded,
                                 on_load_failed=h.on_load_failed, on_job_error=h.on_job_error)
        h.watchdog.watch(worker)
        return worker

    def _on_loaded(self, pipeline, seconds: float) -> None:
        self.house.on_loaded(self, seconds if self._load_seconds is None
                             else self._load_seconds)

    @property
    def service_name(self) -> str:
        return self.describe.name

    def not_serving(self) -> str | None:
        """Why every request is refused now (None: serving): the node's one reason."""
        return self.node.not_serving()

    # -- life cycle ---------------------------------------------------------------------------
    def activate(self) -> None:
        """Subscribe every camera and start the timers (a new worker after a deactivate)."""
        if self.worker.state == 'stopped':
            self.worker = self._new_worker()
        self.active = True
        for camera in self.cameras:
            camera.subscribe()
        self.timers.start()

    def start(self) -> None:
        """Start the worker: it loads the model (or takes the loaded one), then serves."""
        self.worker.start()

    def deactivate(self) -> None:
        """Stop serving: no subscriptions, no timers, the worker stopped, frames forgotten."""
        self.active = False
        self.timers.stop()
        for camera in self.cameras:
            camera.unsubscribe()
        self.worker.stop(timeout=1.0)

    def destroy(self) -> None:
        """Destroy every entity this made (a managed node's cleanup)."""
        self.deactivate()
        # goals aborted with the reason before the server goes
        left = self.stream.answer_all()
        if left:
            warning(self.house.logger)(f'{len(left)} ~/describe_stream goal(s) not answered '
                                       'before the action server went')
        if not self.worker.alive:
            self.worker.pipeline = None    # the model goes with the last reference to it
        node = self.node
        for camera in self.cameras:
            for pub in camera.publishers:
                node.destroy_publisher(pub)
        for service in (self.describe.service, self.detect.service):
            node.destroy_service(service)
        self.stream.destroy()
        self.house.watchdog.watch(None)

    def follow(self, old, new) -> None:
        """Apply changed parameters: timer periods and the video ring, per camera."""
        for camera in self.cameras:
            before, now = old.camera(camera.name), new.camera(camera.name)
            if before.period_s != now.period_s:
                self.timers.set_period(camera)
            if (before.video_frames, before.video_interval_s, before.max_image_age_s) != \
                    (now.video_frames, now.video_interval_s, now.max_image_age_s):
                camera.configure_video()

    # -- shared by the interfaces ---------------------------------------------------------------
    def submit(self, job, about) -> str | None:
        """Queue ``job`` (worker.Job) about ``about``; None when queued, else why not."""
        try:
            self.worker.submit(job)
        except Refused as r:
            if r.kind == 'busy':
                self.house.counters.inc('busy_replies')
            return (self.not_serving() if r.kind == 'stopped' else None) or str(r)
        if about.source.from_topic:
            about.camera.frames.mark_described(about.source)
        return None

    def submit_and_wait(self, job, about) -> str | None:
        """Queue ``job`` and wait for it (bounded); None when it succeeded, else why not."""
        why = self.submit(job, about)
        if why:
            return why
        timeout_s = self.house.settings.request_timeout_s
        deadline = time.monotonic() + timeout_s
        while not job.done.wait(0.1):
            # bounded, and never holding an executor thread past shut-down (the executor
            # waits for its threads; a model run cannot be interrupted)
            if self.house.closing.is_set():
                job.cancel()
                return 'shutting down'
            if time.monotonic() > deadline:
                job.cancel()
                return f'timeout: no answer within request_timeout_s = {timeout_s:g} s'
        if isinstance(job.error, Cancelled):   # e.g. by a deactivate: say why
            return self.not_serving() or error_kind(job.error)[1]
        return error_kind(job.error)[1] if job.error is not None else None
