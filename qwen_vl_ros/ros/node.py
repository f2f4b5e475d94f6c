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
import gc
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
from . import annotate, params, signals
from . import detect as detect_io
from .convert import (SERVICE, TIMER, description_msg, error_kind, one_line, request_constraint,
                      text_msg)
from .diagnostics import Counters, NodeHealth, Reporter
from .frames import FrameStore, Source, convert_all, second_per_grid_t
from .inflow import InflowWatch, create_image_subscription
from .health import EXIT_HUNG, HangWatchdog
from .questions import questions
from .stream_action import StreamAction
from .worker import Cancelled, InferenceWorker, Job, Refused

NODE_NAME = 'qwen_vl'
THROTTLE_S = 5.0
# Executor threads besides one per request that may wait on the worker: image subscription,
# timer, diagnostics, parameter services, and immediate "busy" replies.
SPARE_THREADS = 4
# ~/describe_stream's goal, cancel and result requests, answered while goals wait on the worker.
ACTION_THREADS = 2
STREAM = 'action'
SERVICE_DEPTH = 100


class DescribeNode(Node):
    """Subscribes the camera, answers ~/describe and describes on a timer."""

    # True in ManagedDescribeNode (managed.py): serve only between activate and deactivate.
    managed = False

    def __init__(self):
        super().__init__(NODE_NAME)
        self.settings = params.declare(self)      # ValueError: bad parameters
        s = self.settings
        self.exit_code: int | None = None
        self.counters = Counters()
        self._reporter = Reporter(self.counters)
        self._lock = threading.Lock()
        self._warned: dict = {}
        self._closing = threading.Event()
        self.frames = FrameStore(s.image_transport == 'compressed', s.video_frames,
                                 s.video_interval_s, _max_gap_s(s))
        self.worker = self._new_worker(self._load)
        self.watchdog = HangWatchdog(
            self.worker, lambda: (self.settings.hang_timeout_s, self.settings.hang_exit_s),
            on_hung=self._on_hung, on_recovered=self._on_recovered, on_exit=self._on_hang_exit)

        # Serving interfaces: made by _create_interfaces(), at once here or, in a managed node
        # (managed.py), on activate.
        self.active = not self.managed
        self._image_sub = None
        self.lost_events = False
        self._service = None
        self._timer = None
        self._timer_group = MutuallyExclusiveCallbackGroup()
        topic = 'image/compressed' if s.image_transport == 'compressed' else 'image'
        # the full name (namespace, remaps) before the subscription exists: a managed node
        # names it in its statuses while not active; older rclpy has no resolve_topic_name
        resolve = getattr(self, 'resolve_topic_name', None)
        self.image_topic = resolve(topic) if resolve else topic
        self.inflow = InflowWatch(self.image_topic, s.image_reliability, s.image_transport)
        self._pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        if not self.managed:
            self._create_interfaces()
        self.create_timer(1.0, self._publish_diagnostics,
                          callback_group=MutuallyExclusiveCallbackGroup())

        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._log_bridge = _RosLogHandler(self.get_logger())
        core_log = logging.getLogger('qwen_vl_ros')
        core_log.addHandler(self._log_bridge)
        core_log.setLevel(logging.INFO)
        core_log.propagate = False

    @property
    def state(self) -> str:
        """Return loading | ready | failed | hung | stopped (the worker's); managed adds more."""
        return self.worker.state

    @property
    def executor_threads(self) -> int:
        return self.settings.queue_size + 1 + SPARE_THREADS + ACTION_THREADS

    def _new_worker(self, load) -> InferenceWorker:
        s = self.settings
        return InferenceWorker(load, s.queue_size, on_loaded=self._on_loaded,
                               on_load_failed=self._on_load_failed,
                               on_job_error=self._on_job_error)

    def _create_interfaces(self) -> None:
        """Create what serves: image subscription, timer, publishers, ~/describe.

        The one place where serving interfaces are made: in __init__ (unmanaged), or in a
        managed node (managed.py) on configure (publishers, services, action: they answer "not
        active" until activate) and on every activate (the subscription and the timer, made
        only while ``self.active``; deactivate destroys them).
        """
        s = self.settings
        if self._service is None:
            self._pub_text = self.create_publisher(String, '~/description', 10)
            self._pub_stamped = self.create_publisher(Description, '~/description/stamped', 10)
            # A deep request queue: a burst of calls must reach the callback (and get "busy")
            # instead of being dropped by the middleware's default depth of 10.
            self._service = self.create_service(
                Describe, '~/describe', self._on_describe,
                qos_profile=QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=SERVICE_DEPTH,
                                       reliability=ReliabilityPolicy.RELIABLE,
                                       durability=DurabilityPolicy.VOLATILE),
                callback_group=ReentrantCallbackGroup())
            # (a managed node's worker changes on each activate: withdraw goes to the current)
            self._stream = StreamAction(self, self._start_stream,
                                        lambda *a, **k: self.worker.withdraw(*a, **k),
                                        self._closing, ReentrantCallbackGroup(),
                                        not_serving=self._not_serving)
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
        if self._image_sub is None and self.active:   # (a managed node: on activate)
            qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST, depth=1, durability=DurabilityPolicy.VOLATILE,
                reliability=(ReliabilityPolicy.RELIABLE if s.image_reliability == 'reliable'
                             else ReliabilityPolicy.BEST_EFFORT))
            msg_type, topic = ((CompressedImage, 'image/compressed')
                               if s.image_transport == 'compressed' else (Image, 'image'))
            self._image_sub, self.lost_events = create_image_subscription(
                self, msg_type, topic, self._on_image, qos, MutuallyExclusiveCallbackGroup(),
                self._on_lost, self._on_incompatible)
            self.image_topic = getattr(self._image_sub, 'topic_name', topic)
            self.inflow.topic = self.image_topic
            if not self.lost_events:
                self.get_logger().info(
                    f'the middleware does not report lost messages on {self.image_topic}: '
                    'frames lost there are noticed only when nothing arrives for a while')
        self._set_period(s.period_s)

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start loading the model on the worker thread."""
        s = self.settings
        self.get_logger().info(
            f'loading {s.model_dir} (backend {s.backend}); requests get "loading" until ready')
        self.worker.start()
        self.watchdog.start()

    def _load(self):
        s = self.settings
        pipeline = Pipeline.load(s.model_dir, s.tokenizer_dir or None, s.backend,
                                 threads=s.threads, system_prompt=s.system_prompt,
                                 resize=s.resize, progress=lambda m: self.get_logger().info(m),
                                 vision_cache_frames=s.vision_cache_frames,
                                 npu_provider=s.npu_provider, npu_device=s.npu_device)
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
        # the last /diagnostics says "failed" with the reason (the 1 Hz one may not come
        # before the process exits)
        self._publish_diagnostics()
        self.exit_code = 1

    def _on_hung(self, reason: str) -> None:
        self.get_logger().error(f'runtime hung: {reason}')

    def _on_recovered(self, seconds: float) -> None:
        _warning(self.get_logger())(f'runtime recovered: the stuck call returned after '
                                    f'{seconds:.1f} s; serving again')

    def _on_hang_exit(self, reason: str) -> None:
        self.get_logger().error(f'exiting with code {EXIT_HUNG}: runtime hung ({reason})')
        self.exit_code = EXIT_HUNG

    def close(self, timeout: float = 1.0) -> bool:
        """Stop the worker (cancels the running generation); True when its thread has ended."""
        self._closing.set()
        self.watchdog.stop()
        # a model still loading is inside the runtime's native code: waiting cannot help
        ended = self.worker.stop(timeout=0.1 if self.worker.state == 'loading' else timeout)
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
        """(Re-)create the timer; 0 = no timer (nor while inactive)."""
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        if period_s > 0 and self.active:
            self._timer = self.create_timer(period_s, self._on_tick,
                                            callback_group=self._timer_group)

    # -- input --------------------------------------------------------------------------------
    def _on_image(self, msg) -> None:
        self.frames.put(msg, self.get_clock().now())
        self.counters.inc('frames_received')
        self.inflow.on_frame(msg, time.monotonic())

    def _on_lost(self, info) -> None:
        """Count and warn about a MESSAGE_LOST event on the image subscription."""
        text = self.inflow.on_lost(info.total_count_change)
        if text:
            self.counters.add('frames_lost', int(info.total_count_change), text)
            self._warn_throttled(('inflow', 'lost'), text)

    def _on_incompatible(self, info) -> None:
        text = InflowWatch.on_incompatible(self.image_topic, self.settings.image_reliability)
        self.counters.inc('qos_incompatible', text)
        self._warn_throttled(('inflow', 'incompatible'), text)

    def _check_inflow(self) -> None:
        """Warn when publishers are there but no frames come (not every rmw reports losses)."""
        if self._image_sub is None:
            return      # a managed node that is not active does not subscribe
        try:
            infos = self.get_publishers_info_by_topic(self.image_topic)
        except Exception:  # noqa: BLE001 - a graph query during shut-down
            return
        reliable = ReliabilityPolicy.RELIABLE
        text = self.inflow.check(time.monotonic(), [
            'reliable' if i.qos_profile.reliability == reliable else 'best_effort'
            for i in infos])
        if text:
            self._warn_throttled(('inflow', 'quiet'), text)

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
        if self._not_serving():   # a tick that began as the timer was destroyed
            self.counters.inc('timer_skipped_not_active')
            return
        if self.worker.state != 'ready':
            self.counters.inc('timer_skipped_hung' if self.worker.state == 'hung' else
                              'timer_skipped_loading')
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
                              'timer_skipped_hung' if r.kind == 'hung' else
                              'timer_skipped_not_active' if r.kind == 'stopped' else
                              'timer_skipped_loading')
            return
        self.frames.mark_described(source)

    def _filling(self, kept: int, wanted: int) -> str:
        interval = self.settings.video_interval_s
        return (f'no video yet: {kept} of video_frames = {wanted} frames kept from '
                f'{self.image_topic} (at least video_interval_s = {interval:g} s apart); '
                f'about {(wanted - kept) * interval:g} s to go if frames keep coming')

    # -- service ------------------------------------------------------------------------------
    def _sources_for(self, image) -> tuple:
        """Resolve the frames a request or goal is about: (sources, None) or (None, why not)."""
        if image.width or image.height or len(image.data) or image.encoding:
            # a request image is always described as an image, in video mode too
            sources = [Source(image, compressed=False, from_topic=False)]
        else:
            video_frames, kept = self.frames.video()
            newest = self.frames.newest()
            if newest is None:
                return None, (f'no image: nothing received on {self.image_topic} yet, and '
                              'the request has no image' + self.inflow.hint())
            if len(kept) < video_frames:
                return None, self._filling(len(kept), video_frames)
            sources = kept if video_frames else [newest]
        # the newest frame: its age counts, its header is published
        stale = self._stale_reason(sources[-1])
        if stale:
            self.counters.inc('stale_refused', stale)
            return None, stale
        return sources, None

    def _request(self, request) -> tuple:
        """(questions, sources, constraint, None) of a request or goal, or (..., why not)."""
        try:
            prompts = questions(request.prompt, request.prompts, self.settings.prompt)
        except ValueError as e:
            return None, None, None, str(e)
        sources, why = self._sources_for(request.image)
        if why:
            return None, None, None, why
        constraint, problem = request_constraint(request)
        if problem:
            self.counters.inc('request_errors', problem)
            return None, None, None, problem
        return prompts, sources, constraint, None

    def _not_serving(self) -> str | None:
        """Why every request is refused now (None: serving): 'shutting down' after SIGINT.

        The one reason every entry point gives (~/describe, ~/detect, ~/describe_stream goals,
        the timer, /diagnostics); a managed node adds its lifecycle states (managed.py).
        """
        return 'shutting down' if self._closing.is_set() else None

    def _on_describe(self, request, response):
        why = self._not_serving()
        if why:
            return _refuse(response, why)
        prompts, sources, constraint, why = self._request(request)
        if why:
            return _refuse(response, why)
        job = self._job(sources, prompts, self.settings, request.max_new_tokens, SERVICE,
                        constraint)
        problem = self._submit_and_wait(job, sources[-1])
        if problem:
            return _refuse(response, problem)
        response.success = True
        response.message = ''
        response.description = job.result[0]
        response.descriptions = job.result
        return response

    # -- action ~/describe_stream (stream_action.py) ------------------------------------------
    def _start_stream(self, goal, progress) -> tuple:
        """Resolve a goal and queue its job with the service's: (job, None) or (None, why).

        The goal carries what the ~/describe request carries (questions, image, constraints).
        """
        why = self._not_serving()
        if why:
            return None, why
        prompts, sources, constraint, why = self._request(goal)
        if why:
            return None, why
        job = self._job(sources, prompts, self.settings, goal.max_new_tokens, STREAM,
                        constraint, progress=progress)
        try:
            self.worker.submit(job)
        except Refused as r:
            if r.kind == 'busy':
                self.counters.inc('busy_replies')
            return None, (self._not_serving() if r.kind == 'stopped' else None) or str(r)
        if sources[-1].from_topic:
            self.frames.mark_described(sources[-1])
        return job, None

    @property
    def _diag_name(self) -> str:
        ns = self.get_namespace().rstrip('/')
        return f'{ns}/{self.get_name()}'

    def _service_name(self) -> str:
        name = getattr(self._service, 'service_name', None) or getattr(
            self._service, 'srv_name', '~/describe')
        return name

    # -- the work -----------------------------------------------------------------------------
    def _job(self, sources: list, prompts, s: params.Settings, max_new_tokens: int,
             trigger: str, constraint: dict | None = None, detect: tuple | None = None,
             progress=None) -> Job:
        """Make a job that converts the frames, runs the model and publishes the descriptions.

        One source = an image; several = one video (oldest first), published with the header
        of the newest. ``constraint``: a request's own choices / json_schema / regex (instead
        of the parameters'); ``detect`` = (labels, expression): find boxes instead (one image).
        ``prompts``: one question or several, answered in order about the same frames (the
        core reuses their work); the job's result is then the list of Descriptions.
        ``progress`` (stream_action.Progress) streams the text; a cancelled streamed job then
        returns what it has, the last Description partial, instead of failing.
        """
        options = s.generation_options(max_new_tokens)
        if constraint:
            options = dataclasses.replace(options, **{'choices': None, 'json_schema': None,
                                                      'regex': None, **constraint})
        max_pixels = s.max_pixels
        bit_depth = s.bit_depth
        source = sources[-1]
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)

        def run(pipeline, should_stop):
            t0 = time.perf_counter()
            # a frame that cannot be converted leaves the ring, or it would spoil every video
            frames = convert_all(sources, max_pixels, on_bad=self.frames.discard,
                                 bit_depth=bit_depth)
            convert_ms = 1e3 * (time.perf_counter() - t0)
            opts = options
            if len(frames) > 1:
                spg = second_per_grid_t(sources, pipeline.files.config.temporal_patch_size)
                if spg:
                    opts = dataclasses.replace(options, second_per_grid_t=spg)
            if detect is not None:
                return self._run_detect(pipeline, frames[-1], source, detect, opts, should_stop)
            # topic frames are known to the vision cache by topic, stamp and frame_id, and the
            # bit_depth they were converted with (a run-time parameter)
            keys = ([(src.cache_key(self.image_topic), bit_depth) for src in sources]
                    if source.from_topic else None)
            msgs = []
            for i, question in enumerate(prompts):
                if i and should_stop():
                    break             # cancelled between two questions
                hooks = {} if progress is None else progress.hooks(i)
                result = pipeline.describe(frames, question, opts, should_stop=should_stop,
                                           frame_keys=keys, **hooks)
                msg = description_msg(result, source.header, question, trigger,
                                      0.0 if i else convert_ms, opts.choices)
                if result.finish_reason == 'cancelled' or (progress is None and should_stop()):
                    if progress is not None:
                        msgs.append(msg)      # the partial answer ends a streamed job
                        self.counters.inc('cancelled')
                    break
                if progress is not None:
                    progress.done(i, msg.text, msg.generated_tokens)
                self._pub_text.publish(text_msg(msg.text))
                self._pub_stamped.publish(msg)
                self.counters.inc('descriptions')
                self.counters.record(msg)
                if self._annotator.publish(frames[-1], source.header, text=msg.text):
                    self.counters.inc('annotated_images')
                msgs.append(msg)
            if progress is None and len(msgs) < len(prompts):
                raise Cancelled('generation cancelled (shut-down or time-out)')
            return msgs

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
        why = self._not_serving()
        if why:
            return _refuse(response, why)
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
            return (self._not_serving() if r.kind == 'stopped' else None) or str(r)
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
        if isinstance(job.error, Cancelled):   # e.g. by a deactivate: say why
            return self._not_serving() or error_kind(job.error)[1]
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
        self._check_inflow()
        s, w = self.settings, self.worker
        newest = self.frames.newest()
        state, load_error = self.state, self._load_error()
        problem = (one_line(load_error) if state == 'failed' and load_error else
                   w.hang_reason if state == 'hung' else '')
        runtime = getattr(getattr(w.pipeline, 'runtime', None), 'name', '')
        health = NodeHealth(
            state=state, backend=runtime or s.backend, model_dir=s.model_dir,
            problem=problem, exit_in_s=self.watchdog.exit_in(), image_topic=self.image_topic,
            newest_frame_age_s=self._frame_age(newest) if newest is not None else None,
            max_image_age_s=s.max_image_age_s, pending=w.pending, queue_size=s.queue_size,
            period_s=s.period_s, not_serving=self._not_serving() or '',
            lifecycle=self._lifecycle_state(),
            runs_on=getattr(getattr(w.pipeline, 'runtime', None), 'where', ''))
        self._pub_diag.publish(self._reporter.report(self._diag_name, health,
                                                     self.get_clock().now().to_msg()))


    def _load_error(self) -> BaseException | None:
        """Return why the model did not load (state 'failed'); managed: configure's failure."""
        return self.worker.load_error

    def _lifecycle_state(self) -> str:
        """Return the lifecycle state of a managed node ('' here: an unmanaged node has none)."""
        return ''


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


def main(args=None, node_type=None) -> int:
    """Entry point of `describe_node` (ros2 run qwen_vl_ros describe_node --ros-args ...).

    ``node_type``: the node class (default DescribeNode; managed.py passes its own).

    Exit codes: 0 after SIGINT / SIGTERM (any number of them), 1 when the model does not load
    (or on an unexpected error: its traceback is logged), 2 for bad parameters, 3 after a
    runtime hang (health.py). Every way out goes through shut_down and exit_process: the
    process never ends in interpreter teardown.
    """
    stop = signals.install_stop_handlers(NODE_NAME)   # before rclpy.init: it chains to them
    keep_torch_out()
    rclpy.init(args=args)
    made: dict = {}   # 'node', 'executor' as they are made
    code = 1
    try:
        code = _serve(made, stop, node_type or DescribeNode)
    except (KeyboardInterrupt, ExternalShutdownException):
        code = 0
    except Exception:
        # SIGINT/SIGTERM shut the context down; a spin_once running at that moment may raise
        # RCLError ("context is not valid") instead of ExternalShutdownException: a normal stop.
        if rclpy.ok():
            print(f'[describe_node] unexpected error:\n{traceback.format_exc()}',
                  file=sys.stderr, flush=True)
            code = 1
        else:
            code = 0
    finally:
        left = shut_down(made.get('node'), made.get('executor'))
        signals.ignore_from_now_on()   # a signal from here on must not kill the exiting process
    exit_process(code, left)


def _serve(made: dict, stop, node_type) -> int:
    """Make the node and spin until a signal (``stop`` set), a failed load or a hang exit."""
    try:
        node = made['node'] = node_type()
    except (ValueError, ParameterException) as e:
        hint = (' (write floating-point values with a decimal point, e.g. 2.0)'
                if "expecting type 'DOUBLE'" in str(e) else '')
        print(f'[describe_node] bad parameters: {one_line(e)}{hint}', file=sys.stderr,
              flush=True)
        return 2
    executor = made['executor'] = MultiThreadedExecutor(num_threads=node.executor_threads)
    executor.add_node(node)
    node.start()
    while rclpy.ok() and node.exit_code is None and not stop.is_set():
        executor.spin_once(timeout_sec=0.25)
    return node.exit_code or 0


# How long shut-down waits for the inference worker, then for the executor's callbacks.
WORKER_JOIN_S = 1.0
EXECUTOR_JOIN_S = 1.0


def shut_down(node: DescribeNode | None, executor) -> list:
    """Stop everything that runs threads, in a fixed order; return the threads still running.

    1. the inference worker: its generation is cancelled at the next token; a model run in
       progress cannot be interrupted, so it is waited for at most WORKER_JOIN_S;
    2. the executor's callback threads (service calls waiting for a job see the node closing);
    3. the model: onnxruntime sessions (and their thread pools) are released here, on this
       thread, once the worker has ended - not later by the garbage collector;
    4. the node's subscriptions, services and timers, then the rclpy context (the DDS
       participant and its threads, ROS logging).
    """
    if node is not None:
        node.close(timeout=WORKER_JOIN_S)
    if executor is not None:
        executor.shutdown(timeout_sec=EXECUTOR_JOIN_S)
    if node is not None:
        if not node.worker.alive:
            node.worker.pipeline = None
            gc.collect()
        node.destroy_node()
    rclpy.try_shutdown()
    me = threading.current_thread()
    return sorted(t.name for t in threading.enumerate() if t is not me and t.is_alive())


def exit_process(code: int, left: list):
    """End the process now with ``code``, without interpreter teardown (never returns).

    After shut_down there is nothing left to clean up. What teardown would still do is run
    atexit handlers and destroy native objects (a session a still-running worker holds,
    Fast DDS's and onnxruntime's static state, C++ static destructors) in an order nobody
    controls while native threads may still be running: the likely source of a rare SIGSEGV
    (exit code -11) after "stopped". os._exit skips all of it; the output is flushed first.
    The last line names the code and any thread not waited for.
    """
    line = f'[describe_node] exit code {code}'
    if left:
        line += f' (threads not waited for: {", ".join(left)})'
    print(line, file=sys.stderr, flush=True)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == '__main__':
    sys.exit(main())
