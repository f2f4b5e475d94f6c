"""describe_node: the ROS 2 node `qwen_vl`, a thin translation between ROS and the core.

    image / image/compressed  ->  newest frame (video mode: + ring of the last frames)
    -> timer (period_s) or ~/describe  ->  one inference worker (bounded queue)
    -> ~/description, ~/description/stamped

All names are relative (namespaces and remaps work). Image messages are stored as received and
converted on the worker thread, so the image callback never waits behind inference. In video
mode (video_frames N >= 2) the timer and requests without an image describe the last N frames
kept (video_interval_s apart) as one video, stamped with its newest frame. Callbacks sit
in separate groups of a MultiThreadedExecutor: the image subscription and the timer in their own
mutually exclusive groups, the service in a reentrant group (each call waits for its own job).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
import traceback

import rclpy
from qwen_vl_interfaces.msg import Description
from qwen_vl_interfaces.srv import Describe
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger
from diagnostic_msgs.msg import DiagnosticArray

from ..vlm import Pipeline
from ..vlm.grounding import detect as find_objects
from ..vlm.prompt import keep_torch_out
from . import annotate, params
from . import detect as detect_io
from .convert import (SERVICE, TIMER, description_msg, error_kind, one_line, request_constraint,
                      text_msg)
from .diagnostics import Counters
from .frames import FrameStore, Source, convert_all, second_per_grid_t
from .worker import Cancelled, InferenceWorker, Job, Refused

NODE_NAME = 'qwen_vl'
THROTTLE_S = 5.0
# Executor threads besides one per request that may wait on the worker: image subscription,
# timer, diagnostics, parameter services, and immediate "busy" replies.
SPARE_THREADS = 4
SERVICE_DEPTH = 100


class DescribeNode(Node):
    """Subscribes the camera, answers ~/describe and describes on a timer."""

    def __init__(self):
        super().__init__(NODE_NAME)
        self.settings = params.declare(self)      # ValueError: bad parameters
        s = self.settings
        self.exit_code: int | None = None
        self.counters = Counters()
        self._lock = threading.Lock()
        self._warned: dict = {}
        self._closing = threading.Event()
        self.frames = FrameStore(s.image_transport == 'compressed', s.video_frames,
                                 s.video_interval_s, _max_gap_s(s))
        self.worker = InferenceWorker(self._load, s.queue_size, on_loaded=self._on_loaded,
                                      on_load_failed=self._on_load_failed,
                                      on_job_error=self._on_job_error)

        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=1, durability=DurabilityPolicy.VOLATILE,
            reliability=(ReliabilityPolicy.RELIABLE if s.image_reliability == 'reliable'
                         else ReliabilityPolicy.BEST_EFFORT))
        msg_type, topic = ((CompressedImage, 'image/compressed')
                           if s.image_transport == 'compressed' else (Image, 'image'))
        self._image_sub = self.create_subscription(
            msg_type, topic, self._on_image, qos,
            callback_group=MutuallyExclusiveCallbackGroup())
        self.image_topic = getattr(self._image_sub, 'topic_name', topic)

        self._pub_text = self.create_publisher(String, '~/description', 10)
        self._pub_stamped = self.create_publisher(Description, '~/description/stamped', 10)
        self._pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        # A deep request queue: a burst of calls must reach the callback (and get "busy")
        # instead of being dropped by the middleware's default depth of 10.
        self._service = self.create_service(
            Describe, '~/describe', self._on_describe,
            qos_profile=QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=SERVICE_DEPTH,
                                   reliability=ReliabilityPolicy.RELIABLE,
                                   durability=DurabilityPolicy.VOLATILE),
            callback_group=ReentrantCallbackGroup())
        # Detections (ros/detect.py; vision_msgs may be missing) and the annotated image
        # (ros/annotate.py; drawn only while subscribed).
        self._annotator = annotate.Annotator(
            self.create_publisher(Image, '~/annotated_image', 1))
        self._pub_detections = None
        if detect_io.AVAILABLE:
            self._pub_detections = self.create_publisher(detect_io.Detection2DArray,
                                                         '~/detections', 10)
            self._detect_service = self.create_service(
                detect_io.Detect, '~/detect', self._on_detect,
                qos_profile=QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=SERVICE_DEPTH,
                                       reliability=ReliabilityPolicy.RELIABLE,
                                       durability=DurabilityPolicy.VOLATILE),
                callback_group=ReentrantCallbackGroup())
        else:
            _warning(self.get_logger())(detect_io.MISSING)
            self._detect_service = self.create_service(Trigger, '~/detect',
                                                       detect_io.unavailable)
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self._timer = None
        self._set_period(s.period_s)
        self.create_timer(1.0, self._publish_diagnostics,
                          callback_group=MutuallyExclusiveCallbackGroup())

        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._log_bridge = _RosLogHandler(self.get_logger())
        core_log = logging.getLogger('qwen_vl_ros')
        core_log.addHandler(self._log_bridge)
        core_log.setLevel(logging.INFO)
        core_log.propagate = False

    @property
    def executor_threads(self) -> int:
        return self.settings.queue_size + 1 + SPARE_THREADS

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start loading the model on the worker thread."""
        s = self.settings
        self.get_logger().info(
            f'loading {s.model_dir} (backend {s.backend}); requests get "loading" until ready')
        self.worker.start()

    def _load(self):
        s = self.settings
        pipeline = Pipeline.load(s.model_dir, s.tokenizer_dir or None, s.backend,
                                 threads=s.threads, system_prompt=s.system_prompt,
                                 resize=s.resize, progress=lambda m: self.get_logger().info(m))
        if s.choices or s.json_schema or s.regex or s.mode == 'detect':
            pipeline.grammar_tokenizer()   # the timer's typed answers: no delay at the first
        return pipeline

    def _on_loaded(self, pipeline, seconds: float) -> None:
        s = self.settings
        timer = f'every {s.period_s:g} s' if s.period_s > 0 else 'off'
        mode = (f'video of {s.video_frames} frames >= {s.video_interval_s:g} s apart'
                if s.video_frames else 'image')
        self.get_logger().info(
            f'ready: model loaded in {seconds:.1f} s; image topic {self.image_topic} '
            f'({s.image_transport}, {s.image_reliability}), service {self._service_name()}, '
            f'timer {timer}, {mode} mode')

    def _on_load_failed(self, error: BaseException) -> None:
        self.get_logger().error(
            f'cannot load the model from {self.settings.model_dir!r}: '
            f'{type(error).__name__}: {one_line(error)}')
        self.exit_code = 1

    def close(self) -> bool:
        """Stop the worker (cancels the running generation); True when its thread has ended."""
        self._closing.set()
        ended = self.worker.stop(timeout=1.0)
        logging.getLogger('qwen_vl_ros').removeHandler(self._log_bridge)
        stats = ', '.join(f'{k} {v}' for k, v in self.counters.snapshot().items() if v)
        line = f'stopped ({stats or "nothing done"})'
        if self.context.ok():
            self.get_logger().info(line)
        else:  # after SIGINT the context is gone and the logger's rosout publisher with it
            print(f'[INFO] [{self.get_name()}]: {line}', file=sys.stderr, flush=True)
        return ended

    # -- parameters ---------------------------------------------------------------------------
    def _on_set_parameters(self, changed) -> SetParametersResult:
        changes, problem = params.check_changes(changed)
        if problem:
            return SetParametersResult(successful=False, reason=problem)
        with self._lock:
            old = self.settings
            self.settings = old.replace(**changes)
            if 'period_s' in changes and changes['period_s'] != old.period_s:
                self._set_period(changes['period_s'])
            new = self.settings
            if (new.video_frames, new.video_interval_s, _max_gap_s(new)) != \
                    (old.video_frames, old.video_interval_s, _max_gap_s(old)):
                self.frames.configure_video(new.video_frames, new.video_interval_s,
                                            _max_gap_s(new))
        for name, value in changes.items():
            self.get_logger().info(f'parameter {name} = {value!r}')
        return SetParametersResult(successful=True)

    def _set_period(self, period_s: float) -> None:
        """(Re-)create the timer; 0 = no timer."""
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        if period_s > 0:
            self._timer = self.create_timer(period_s, self._on_tick,
                                            callback_group=self._timer_group)

    # -- input --------------------------------------------------------------------------------
    def _on_image(self, msg) -> None:
        self.frames.put(msg, self.get_clock().now())
        self.counters.inc('frames_received')

    def _frame_age(self, source: Source) -> float | None:
        """Seconds since the frame's stamp (since arrival when the stamp is zero); None = n/a."""
        stamp = source.header.stamp
        now = self.get_clock().now()
        if stamp.sec == 0 and stamp.nanosec == 0:
            if source.received is None:
                return None
            then = source.received
        else:
            then = Time.from_msg(stamp, clock_type=now.clock_type)
        return max(0.0, (now - then).nanoseconds * 1e-9)

    def _stale_reason(self, source: Source) -> str | None:
        limit = self.settings.max_image_age_s
        age = self._frame_age(source) if limit > 0 else None
        if age is None or age <= limit:
            return None
        st = source.header.stamp
        return (f'stale image: the frame is {age:.2f} s old (stamp {st.sec}.{st.nanosec:09d}), '
                f'max_image_age_s is {limit:g}')

    # -- timer --------------------------------------------------------------------------------
    def _on_tick(self) -> None:
        self.counters.inc('timer_ticks')
        if self.worker.state != 'ready':
            self.counters.inc('timer_skipped_loading')
            return
        if not self.worker.idle:
            n = self.counters.inc('timer_skipped_busy')
            self.get_logger().info(f'timer: still busy, tick skipped ({n} so far)',
                                   throttle_duration_sec=THROTTLE_S)
            return
        video_frames, kept = self.frames.video()
        if video_frames:
            source = kept[-1] if kept and self.frames.is_new(kept[-1]) else None
        else:
            source = self.frames.fresh()
        if source is None:
            n = self.counters.inc('timer_skipped_no_frame')
            what = 'kept for the video' if video_frames else 'on'
            self.get_logger().info(f'timer: no new frame {what} {self.image_topic}, tick '
                                   f'skipped ({n} so far)', throttle_duration_sec=THROTTLE_S)
            return
        if len(kept) < video_frames:
            n = self.counters.inc('timer_skipped_video_filling')
            self.get_logger().info(f'timer: {self._filling(len(kept), video_frames)}; tick '
                                   f'skipped ({n} so far)', throttle_duration_sec=THROTTLE_S)
            return
        stale = self._stale_reason(source)
        if stale:
            self.frames.mark_described(source)
            n = self.counters.inc('timer_skipped_stale')
            _warning(self.get_logger())(f'timer: {stale}; tick skipped ({n} so far)',
                                        throttle_duration_sec=THROTTLE_S)
            return
        s = self.settings
        if s.mode == 'detect':
            problem = ('vision_msgs is not installed (see the start-up warning)'
                       if not detect_io.AVAILABLE else
                       '' if s.labels else 'parameter labels is empty')
            if problem:
                n = self.counters.inc('timer_skipped_no_detect', problem)
                _warning(self.get_logger())(f'timer: mode detect: {problem}; tick skipped '
                                            f'({n} so far)', throttle_duration_sec=THROTTLE_S)
                return
            job = self._job([source], '', s, 0, TIMER, detect=(s.labels, ''))
        else:
            job = self._job(kept if video_frames else [source], s.prompt, s, 0, TIMER)
        try:
            self.worker.submit(job, only_if_idle=True)
        except Refused as r:
            self.counters.inc('timer_skipped_busy' if r.kind == 'busy' else
                              'timer_skipped_loading')
            return
        self.frames.mark_described(source)

    def _filling(self, kept: int, wanted: int) -> str:
        interval = self.settings.video_interval_s
        return (f'no video yet: {kept} of video_frames = {wanted} frames kept from '
                f'{self.image_topic} (at least video_interval_s = {interval:g} s apart); '
                f'about {(wanted - kept) * interval:g} s to go if frames keep coming')

    # -- service ------------------------------------------------------------------------------
    def _on_describe(self, request, response):
        s = self.settings
        prompt = request.prompt if request.prompt.strip() else s.prompt
        image = request.image
        if image.width or image.height or len(image.data) or image.encoding:
            # a request image is always described as an image, in video mode too
            sources = [Source(image, compressed=False, from_topic=False)]
        else:
            video_frames, kept = self.frames.video()
            newest = self.frames.newest()
            if newest is None:
                return _refuse(response, f'no image: nothing received on {self.image_topic} '
                                         'yet, and the request has no image')
            if len(kept) < video_frames:
                return _refuse(response, self._filling(len(kept), video_frames))
            sources = kept if video_frames else [newest]
        source = sources[-1]   # the newest frame: its age counts, its header is published
        stale = self._stale_reason(source)
        if stale:
            self.counters.inc('stale_refused', stale)
            return _refuse(response, stale)
        constraint, problem = request_constraint(request)
        if problem:
            self.counters.inc('request_errors', problem)
            return _refuse(response, problem)
        job = self._job(sources, prompt, s, request.max_new_tokens, SERVICE, constraint)
        problem = self._submit_and_wait(job, source)
        if problem:
            return _refuse(response, problem)
        response.success = True
        response.message = ''
        response.description = job.result
        return response

    @property
    def _diag_name(self) -> str:
        ns = self.get_namespace().rstrip('/')
        return f'{ns}/{self.get_name()}'

    def _service_name(self) -> str:
        name = getattr(self._service, 'service_name', None) or getattr(
            self._service, 'srv_name', '~/describe')
        return name

    # -- the work -----------------------------------------------------------------------------
    def _job(self, sources: list, prompt: str, s: params.Settings, max_new_tokens: int,
             trigger: str, constraint: dict | None = None, detect: tuple | None = None) -> Job:
        """Make a job that converts the frames, runs the model and publishes the description.

        One source = an image; several = one video (oldest first), published with the header
        of the newest. ``constraint``: a request's own choices / json_schema / regex (instead
        of the parameters'); ``detect`` = (labels, expression): find boxes instead (one image).
        """
        options = s.generation_options(max_new_tokens)
        if constraint:
            options = dataclasses.replace(options, **{'choices': None, 'json_schema': None,
                                                      'regex': None, **constraint})
        max_pixels = s.max_pixels
        source = sources[-1]

        def run(pipeline, should_stop):
            t0 = time.perf_counter()
            # a frame that cannot be converted leaves the ring, or it would spoil every video
            frames = convert_all(sources, max_pixels, on_bad=self.frames.discard)
            convert_ms = 1e3 * (time.perf_counter() - t0)
            opts = options
            if len(frames) > 1:
                spg = second_per_grid_t(sources, pipeline.files.config.temporal_patch_size)
                if spg:
                    opts = dataclasses.replace(options, second_per_grid_t=spg)
            if detect is not None:
                return self._run_detect(pipeline, frames[-1], source, detect, opts, should_stop)
            result = pipeline.describe(frames, prompt, opts, should_stop=should_stop)
            if result.finish_reason == 'cancelled' or should_stop():
                raise Cancelled('generation cancelled (shut-down or time-out)')
            msg = description_msg(result, source.header, prompt, trigger, convert_ms,
                                  opts.choices)
            self._pub_text.publish(text_msg(msg.text))
            self._pub_stamped.publish(msg)
            self.counters.inc('descriptions')
            if self._annotator.publish(frames[-1], source.header, text=msg.text):
                self.counters.inc('annotated_images')
            return msg

        def on_done(job: Job) -> None:
            if job.error is None:
                return
            counter, reason = error_kind(job.error)
            self.counters.inc(counter, reason if counter != 'cancelled' else '')
            if counter == 'cancelled':
                return
            if counter == 'internal_errors':
                self.get_logger().error(
                    f'{trigger} request failed: {reason}\n' + ''.join(
                        traceback.format_exception(job.error)))
                return
            where = (('video' if len(sources) > 1 else 'frame') + f' from {self.image_topic}'
                     if source.from_topic else 'request image')
            self._warn_throttled((where, counter),
                                 f'{trigger}: {where} not described: {reason} '
                                 f'({self.counters.snapshot()[counter]} {counter} so far)')

        return Job(run, on_done)

    def _run_detect(self, pipeline, frame, source, detect: tuple, options, should_stop):
        """Find the objects in one frame; publish ~/detections; return (array, Detections)."""
        labels, expression = detect
        found = find_objects(pipeline, frame, labels, expression, options, should_stop)
        if found.result.finish_reason == 'cancelled' or should_stop():
            raise Cancelled('generation cancelled (shut-down or time-out)')
        arr = detect_io.detections_msg(found, source.header)
        self._pub_detections.publish(arr)
        self.counters.inc('detections')
        if self._annotator.publish(frame, source.header, detections=found.detections):
            self.counters.inc('annotated_images')
        return arr, found

    # -- ~/detect -----------------------------------------------------------------------------
    def _on_detect(self, request, response):
        labels, expression = params.strings(request.labels), request.prompt.strip()
        if not labels and not expression:
            return _refuse(response, 'bad request: give labels and/or prompt (a referring '
                                     'expression)')
        image = request.image
        if image.width or image.height or len(image.data) or image.encoding:
            source = Source(image, compressed=False, from_topic=False)
        else:
            source = self.frames.newest()
            if source is None:
                return _refuse(response, f'no image: nothing received on {self.image_topic} '
                                         'yet, and the request has no image')
        stale = self._stale_reason(source)
        if stale:
            self.counters.inc('stale_refused', stale)
            return _refuse(response, stale)
        job = self._job([source], '', self.settings, request.max_new_tokens, SERVICE,
                        detect=(labels, expression))
        problem = self._submit_and_wait(job, source)
        if problem:
            return _refuse(response, problem)
        response.detections, found = job.result
        response.success = True
        response.message = '; '.join(found.notes)
        response.text = found.text
        return response

    def _submit_and_wait(self, job: Job, source: Source) -> str | None:
        """Queue ``job`` and wait for it (bounded); None when it succeeded, else why not."""
        s = self.settings
        try:
            self.worker.submit(job)
        except Refused as r:
            if r.kind == 'busy':
                self.counters.inc('busy_replies')
            return str(r)
        if source.from_topic:
            self.frames.mark_described(source)
        deadline = time.monotonic() + s.request_timeout_s
        while not job.done.wait(0.1):
            # bounded, and never holding an executor thread past shut-down (the executor
            # waits for its threads; a model run cannot be interrupted)
            if self._closing.is_set():
                job.cancel()
                return 'shutting down'
            if time.monotonic() > deadline:
                job.cancel()
                return f'timeout: no answer within request_timeout_s = {s.request_timeout_s:g} s'
        return error_kind(job.error)[1] if job.error is not None else None

    def _warn_throttled(self, key, text: str) -> None:
        """Warn at most every THROTTLE_S seconds per kind of problem.

        rclpy throttles per call site, which would let one kind of bad input hide another.
        """
        now = time.monotonic()
        with self._lock:
            if now - self._warned.get(key, -THROTTLE_S) < THROTTLE_S:
                return
            self._warned[key] = now
        _warning(self.get_logger())(text)

    def _on_job_error(self, job: Job, error: BaseException) -> None:
        self.get_logger().error(f'error while finishing a request: {one_line(error)}')

    # -- diagnostics --------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        arr = self.counters.status(f'{self._diag_name}: describe',
                                   self.settings.backend, self.worker.state,
                                   self.worker.pending, self.get_clock().now().to_msg())
        self._pub_diag.publish(arr)


def _max_gap_s(s: params.Settings) -> float:
    """Longest gap between two frames of one video; a longer one starts the ring again.

    A frame older than max_image_age_s is refused anyway, so a gap longer than that plus the
    spacing means the stream was interrupted (0 = no limit, like max_image_age_s).
    """
    return s.video_interval_s + s.max_image_age_s if s.max_image_age_s > 0 else 0.0


def _warning(logger):
    """Return the logger's warning method: ``warning`` (Kilted deprecates ``warn``)."""
    return getattr(logger, 'warning', None) or logger.warn


def _refuse(response, message: str):
    response.success = False
    response.message = message
    return response


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
            _warning(self._logger)(text)
        elif record.levelno >= logging.INFO:
            self._logger.info(text)
        else:
            self._logger.debug(text)


def main(args=None) -> int:
    """Entry point of `describe_node` (ros2 run qwen_vl_ros describe_node --ros-args ...).

    Exit codes: 0 after SIGINT / SIGTERM, 1 when the model does not load, 2 for bad parameters.
    """
    keep_torch_out()
    rclpy.init(args=args)
    node = None
    executor = None
    code = 0
    worker_ended = True
    try:
        try:
            node = DescribeNode()
        except (ValueError, ParameterException) as e:
            hint = (' (write floating-point values with a decimal point, e.g. 2.0)'
                    if "expecting type 'DOUBLE'" in str(e) else '')
            print(f'[describe_node] bad parameters: {one_line(e)}{hint}', file=sys.stderr,
                  flush=True)
            return 2
        executor = MultiThreadedExecutor(num_threads=node.executor_threads)
        executor.add_node(node)
        node.start()
        while rclpy.ok() and node.exit_code is None:
            executor.spin_once(timeout_sec=0.25)
        code = node.exit_code or 0
    except (KeyboardInterrupt, ExternalShutdownException):
        code = 0
    except Exception:
        # SIGINT/SIGTERM shut the context down; a spin_once running at that moment may raise
        # RCLError ("context is not valid") instead of ExternalShutdownException: a normal stop.
        if rclpy.ok():
            raise
        code = 0
    finally:
        if node is not None:
            worker_ended = node.close()
        if executor is not None:
            executor.shutdown(timeout_sec=0.5)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    if not worker_ended:
        # The worker is inside a model run that cannot be interrupted: do not wait for it, and
        # do not let interpreter teardown race with the runtime's native threads.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == '__main__':
    sys.exit(main())
