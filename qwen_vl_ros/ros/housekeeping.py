"""What a qwen_vl node does for its whole life, serving or not (plain and managed alike).

Parameters (declared, checked, changed at run time), counters and /diagnostics (1 Hz), the hang
watchdog, the core's logging bridged to the node's logger, throttled warnings, the model load,
and close(). The node that owns it (node.DescribeNode, managed.ManagedDescribeNode) answers four
questions about itself: ``model_state()``, ``not_serving()``, ``lifecycle_state()`` and
``load_error()``; its ``serving`` (serving.Serving or None) is what serves now.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

from ..vlm import Pipeline
from . import params
from .convert import one_line
from .diagnostics import CameraHealth, Counters, NodeHealth, Reporter
from .health import EXIT_HUNG, HangWatchdog

THROTTLE_S = 5.0


def warning(logger):
    """Return the logger's warning method: ``warning`` (Kilted deprecates ``warn``)."""
    return getattr(logger, 'warning', None) or logger.warn


class Housekeeping:
    """Parameters, counters, /diagnostics, watchdog and logging of ``node``."""

    def __init__(self, node):
        self.node = node
        self.settings = params.declare(node)      # ValueError: bad parameters
        self.logger = node.get_logger()
        self.counters = Counters(self.settings.camera_names)
        self.reporter = Reporter(self.counters)
        self.closing = threading.Event()
        self.exit_code: int | None = None
        self._lock = threading.Lock()
        self._warned: dict = {}
        self.watchdog = HangWatchdog(
            None, lambda: (self.settings.hang_timeout_s, self.settings.hang_exit_s),
            on_hung=self._on_hung, on_recovered=self._on_recovered, on_exit=self._on_hang_exit)
        self._pub_diag = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        node.create_timer(1.0, self.publish_diagnostics,
                          callback_group=MutuallyExclusiveCallbackGroup())
        node.add_on_set_parameters_callback(self._on_set_parameters)
        self._log_bridge = _RosLogHandler(self.logger)
        core_log = logging.getLogger('qwen_vl_ros')
        core_log.addHandler(self._log_bridge)
        core_log.setLevel(logging.INFO)
        core_log.propagate = False

    @property
    def full_name(self) -> str:
        """The node's fully qualified name (/ns/qwen_vl): its statuses' prefix."""
        ns = self.node.get_namespace().rstrip('/')
        return f'{ns}/{self.node.get_name()}'

    # -- the model ----------------------------------------------------------------------------
    def load(self):
        """Load the Pipeline the parameters name (on the calling thread; VLMError and others)."""
        s = self.settings
        pipeline = Pipeline.load(s.model_dir, s.tokenizer_dir or None, s.backend,
                                 threads=s.threads, system_prompt=s.system_prompt,
                                 resize=s.resize, progress=lambda m: self.logger.info(m),
                                 vision_cache_frames=s.vision_cache_frames,
                                 npu_provider=s.npu_provider, npu_device=s.npu_device)
        if any(s.camera(c).choices or s.camera(c).json_schema or s.camera(c).regex
               or s.camera(c).mode == 'detect' for c in s.camera_names):
            pipeline.grammar_tokenizer()   # the timer's typed answers: no delay at the first
        return pipeline

    def on_loaded(self, serving, seconds: float) -> None:
        """Log the "ready" line: what serves, where."""
        s = self.settings
        periods = [(c, c.settings.period_s) for c in serving.cameras]
        timer = ', '.join((f'{c.name} ' if c.name else '')
                          + (f'every {p:g} s' if p > 0 else 'off') for c, p in periods)
        mode = (f'video of {s.video_frames} frames >= {s.video_interval_s:g} s apart'
                if s.video_frames else 'image')
        topics = ', '.join(f'{c.image_topic} ({c.settings.image_transport}, '
                           f'{c.settings.image_reliability})' for c in serving.cameras)
        word = 'topic' if len(serving.cameras.all) == 1 else 'topics'
        self.logger.info(
            f'ready: model loaded in {seconds:.1f} s; image {word} {topics}, service '
            f'{serving.service_name}, timer {timer}, {mode} mode')

    def on_load_failed(self, error: BaseException) -> None:
        self.logger.error(
            f'cannot load the model from {self.settings.model_dir!r}: '
            f'{type(error).__name__}: {one_line(error)}')
        # the last /diagnostics says "failed" with the reason (the 1 Hz one may not come
        # before the process exits)
        self.publish_diagnostics()
        self.exit_code = 1

    def on_job_error(self, job, error: BaseException) -> None:
        self.logger.error(f'error while finishing a request: {one_line(error)}')

    def _on_hung(self, reason: str) -> None:
        self.logger.error(f'runtime hung: {reason}')

    def _on_recovered(self, seconds: float) -> None:
        warning(self.logger)(f'runtime recovered: the stuck call returned after '
                             f'{seconds:.1f} s; serving again')

    def _on_hang_exit(self, reason: str) -> None:
        self.logger.error(f'exiting with code {EXIT_HUNG}: runtime hung ({reason})')
        self.exit_code = EXIT_HUNG

    def close(self, worker, timeout: float = 1.0) -> bool:
        """Stop the worker (cancels the running generation); True when its thread has ended."""
        self.closing.set()
        self.watchdog.stop()
        ended = True
        if worker is not None:
            # a model still loading is inside the runtime's native code: waiting cannot help
            ended = worker.stop(timeout=0.1 if worker.state == 'loading' else timeout)
        logging.getLogger('qwen_vl_ros').removeHandler(self._log_bridge)
        stats = ', '.join(f'{k} {v}' for k, v in self.counters.snapshot().items() if v)
        line = f'stopped ({stats or "nothing done"})'
        if self.node.context.ok():
            self.logger.info(line)
        else:  # after SIGINT the context is gone and the logger's rosout publisher with it
            print(f'[INFO] [{self.node.get_name()}]: {line}', file=sys.stderr, flush=True)
        return ended

    # -- parameters ---------------------------------------------------------------------------
    def _on_set_parameters(self, changed) -> SetParametersResult:
        changes, problem = params.check_changes(changed)
        if problem:
            return SetParametersResult(successful=False, reason=problem)
        with self._lock:
            old = self.settings
            self.settings = old.changed(changes)
            serving = self.node.serving
            if serving is not None:
                serving.follow(old, self.settings)
        for name, value in changes.items():
            self.logger.info(f'parameter {name} = {value!r}')
        return SetParametersResult(successful=True)

    # -- logging ------------------------------------------------------------------------------
    def warn_throttled(self, key, text: str) -> None:
        """Warn at most every THROTTLE_S seconds per kind of problem.

        rclpy throttles per call site, which would let one kind of bad input hide another.
        """
        now = time.monotonic()
        with self._lock:
            if now - self._warned.get(key, -THROTTLE_S) < THROTTLE_S:
                return
            self._warned[key] = now
        warning(self.logger)(text)

    # -- /diagnostics -------------------------------------------------------------------------
    def publish_diagnostics(self) -> None:
        node, s = self.node, self.settings
        serving = node.serving
        worker = serving.worker if serving is not None else None
        cameras = []
        if serving is not None:
            for cam in serving.cameras:
                cam.check_inflow()
                cs = cam.settings
                cameras.append(CameraHealth(cam.name, cam.image_topic, cam.newest_age(),
                                            cs.max_image_age_s,
                                            cs.period_s))
        else:   # a managed node not configured: its topics, named from the parameters
            resolve = getattr(node, 'resolve_topic_name', None) or (lambda t: t)
            cameras = [CameraHealth(c, resolve(_image_topic(s, c)), None,
                                    s.camera(c).max_image_age_s, s.camera(c).period_s)
                       for c in s.camera_names]
        state, load_error = node.model_state(), node.load_error()
        problem = (one_line(load_error) if state == 'failed' and load_error else
                   worker.hang_reason if state == 'hung' and worker is not None else '')
        runtime = getattr(getattr(worker, 'pipeline', None), 'runtime', None)
        health = NodeHealth(
            state=state, backend=getattr(runtime, 'name', '') or s.backend,
            model_dir=s.model_dir, problem=problem, exit_in_s=self.watchdog.exit_in(),
            cameras=cameras, pending=worker.pending if worker is not None else 0,
            queue_size=s.queue_size, not_serving=node.not_serving() or '',
            lifecycle=node.lifecycle_state(), runs_on=getattr(runtime, 'where', ''))
        self._pub_diag.publish(self.reporter.report(self.full_name, health,
                                                    node.get_clock().now().to_msg()))


def _image_topic(s, camera: str) -> str:
    topic = 'image/compressed' if s.camera(camera).image_transport == 'compressed' else 'image'
    return f'{camera}/{topic}' if camera else topic


class HousekeepingViews:
    """What both node classes (plain and managed) show of their `house` (a Housekeeping)."""

    house: Housekeeping

    @property
    def settings(self):
        return self.house.settings

    @property
    def counters(self):
        return self.house.counters

    @property
    def exit_code(self) -> int | None:
        return self.house.exit_code


class _RosLogHandler(logging.Handler):
    """Forwards the core's Python logging to the node's ROS logger."""

    def __init__(self, logger):
        super().__init__()
        self._logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.ERROR:
            self._logger.error(text)
        elif record.levelno >= logging.WARNING:
            warning(self._logger)(text)
        elif record.levelno >= logging.INFO:
            self._logger.info(text)
        else:
            self._logger.debug(text)
