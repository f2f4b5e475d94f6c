"""What the node did and how it is, on /diagnostics: one status per concern, as operators read it.

diagnostic_msgs conventions (REP 107 / diagnostic_updater): each DiagnosticStatus is named
``<node>: <concern>``, has a level (OK / WARN / ERROR), a message a person understands and its
figures as key/value pairs. The concerns:

- ``model``: loading / ready / failed / hung, backend, what runs the model (key ``runs_on``:
  pyaxengine's provider and, on an M.2 card, which card), model directory (key ``state``); a
  managed node not active: its lifecycle state and what to do (key ``lifecycle_state``);
- ``camera`` (with ``cameras``: one ``camera <name>`` per camera): frames received, refused by
  reason, newest frame's age (WARN when older than max_image_age_s, or none yet);
- ``inference``: queue depth, busy refusals, errors, last and p95 vision / first-token /
  decode timings and tokens/s;
- ``timer``: ticks and ticks skipped by reason (WARN when no tick in the last report was
  described for a reason other than "busy").

Every counter is in exactly one status (a reader may merge the statuses of one array); with
several cameras each camera status has its own camera counters. COUNTERS is the one table of
the counters: name, concern, what it counts and, for a skipped timer tick, the reason's words.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR



@dataclass(frozen=True)
class Counter:
    """One counter: its name, the status it is in, what it counts; a timer skip's words."""

    name: str
    concern: str       # camera (one status per camera), inference or timer
    counts: str
    skip: str = ''     # timer_skipped_*: the reason as the timer status says it


# Every counter the node keeps, in the order the statuses list them. Counting a name that is not
# here raises KeyError: a counter is declared before it is counted.
COUNTERS = (
    Counter('frames_received', 'camera', 'messages on the image topic'),
    Counter('image_errors', 'camera', 'frames that could not be converted (topic or request)'),
    Counter('stale_refused', 'camera', 'requests refused a frame older than max_image_age_s'),
    Counter('frames_lost', 'camera', 'image messages the middleware reported lost'),
    Counter('qos_incompatible', 'camera',
            'image publishers whose QoS cannot match the subscription'),
    Counter('descriptions', 'inference', 'descriptions published'),
    Counter('detections', 'inference', 'detection arrays published (~/detections)'),
    Counter('annotated_images', 'inference', 'annotated images published (while subscribed)'),
    Counter('busy_replies', 'inference', 'requests answered "busy" (queue full)'),
    Counter('request_errors', 'inference', 'requests refused as malformed (bad constraint)'),
    Counter('prompt_errors', 'inference', 'prompts too long for the compiled prefill'),
    Counter('runtime_errors', 'inference', 'the runtime failed while generating'),
    Counter('internal_errors', 'inference', 'anything else (a bug: the log has the traceback)'),
    Counter('cancelled', 'inference', 'jobs dropped or cut short (time-out, shut-down)'),
    Counter('answers_cut', 'inference',
            'typed answers (and box lists) the token budget cut: not sent'),
    Counter('timer_ticks', 'timer',
            'timer callbacks; each ends as one timer_skipped_* or one job'),
    Counter('timer_skipped_busy', 'timer', 'ticks while a description was generated or queued',
            'busy'),
    Counter('timer_skipped_no_frame', 'timer', 'ticks without a new frame since the last one',
            'no new frame'),
    Counter('timer_skipped_stale', 'timer', 'ticks whose newest frame was too old', 'stale frame'),
    Counter('timer_skipped_loading', 'timer', 'ticks before the model was ready', 'model loading'),
    Counter('timer_skipped_video_filling', 'timer',
            'video mode: ticks with a new frame but fewer than video_frames kept',
            'video still filling'),
    Counter('timer_skipped_hung', 'timer', 'ticks while the runtime was hung', 'runtime hung'),
    Counter('timer_skipped_not_active', 'timer',
            'ticks as the node stopped serving (deactivate, shut-down)', 'not active'),
    Counter('timer_skipped_no_detect', 'timer',
            'mode detect: ticks without labels or without vision_msgs', 'cannot detect'),
)
COUNTER_BY_NAME = {c.name: c for c in COUNTERS}
CAMERA = tuple(c.name for c in COUNTERS if c.concern == 'camera')
# Counted like errors for the status level: frames that never reached the node.
LOSSES = ('frames_lost', 'qos_incompatible')
ERRORS = ('image_errors', 'prompt_errors', 'runtime_errors', 'internal_errors', 'answers_cut')
TIMINGS = ('vision_ms', 'time_to_first_token_ms', 'decode_ms', 'tokens_per_second')
TIMING_WINDOW = 100     # descriptions the p95 figures are taken over


def concern_of(counter: str) -> str:
    """Return the status a counter is reported in: camera, timer or inference (KeyError)."""
    return COUNTER_BY_NAME[counter].concern


def camera_status(camera: str) -> str:
    """Return the concern of a camera's status: 'camera' (the unnamed one), 'camera <name>'."""
    return f'camera {camera}' if camera else 'camera'


class Counters:
    """Thread-safe counters, the last problem, and the timings of recent descriptions.

    Camera counters (concern camera) are kept per camera: ``camera`` names it ('' = the unnamed
    one); the other counters are the node's.
    """

    def __init__(self, cameras=('',)):
        self._lock = threading.Lock()
        self._values = {c.name: 0 for c in COUNTERS if c.concern != 'camera'}
        self._cameras = {cam: dict.fromkeys(CAMERA, 0) for cam in cameras}
        self.last_problem = ''
        self._timings = collections.deque(maxlen=TIMING_WINDOW)

    def _slot(self, name: str, camera: str) -> dict:
        return self._cameras[camera] if concern_of(name) == 'camera' else self._values

    def inc(self, name: str, problem: str = '', camera: str = '') -> int:
        return self.add(name, 1, problem, camera)

    def add(self, name: str, n: int, problem: str = '', camera: str = '') -> int:
        """Add ``n`` to a counter (e.g. frames lost, reported in batches); the new value."""
        with self._lock:
            slot = self._slot(name, camera)
            slot[name] += int(n)
            if problem:
                self.last_problem = problem
            return slot[name]

    def snapshot(self, camera: str | None = None) -> dict:
        """Return the node's counters and one camera's (None: every camera's summed)."""
        with self._lock:
            out = dict(self._values)
            if camera is not None:
                out.update(self._cameras[camera])
            else:
                for values in self._cameras.values():
                    for k, v in values.items():
                        out[k] = out.get(k, 0) + v
            return out

    def record(self, description) -> None:
        """Keep the timings of a published qwen_vl_interfaces/msg/Description."""
        row = tuple(float(getattr(description, k)) for k in TIMINGS)
        with self._lock:
            self._timings.append(row)

    def timings(self) -> dict:
        """{'last_vision_ms': .., 'p95_vision_ms': .., ...}; empty before the first description.

        p95 of tokens_per_second is the 5th percentile (the slow end), named p95 like the rest
        because it is the figure 95 % of descriptions reach.
        """
        with self._lock:
            rows = np.array(self._timings, np.float64)
        if not len(rows):
            return {}
        out = {}
        for i, key in enumerate(TIMINGS):
            q = 5 if key == 'tokens_per_second' else 95
            out[f'last_{key}'] = rows[-1, i]
            out[f'p95_{key}'] = float(np.percentile(rows[:, i], q))
        return out


@dataclass
class CameraHealth:
    """One camera at one moment (filled by the node)."""

    name: str                    # '' = the unnamed camera
    image_topic: str
    newest_frame_age_s: float | None = None
    max_image_age_s: float = 0.0
    period_s: float = 0.0


@dataclass
class NodeHealth:
    """What the node knows besides its counters, at one moment (filled by the node)."""

    state: str                   # loading | ready | failed | hung | stopped
    backend: str                 # the runtime in use (or the backend parameter before loading)
    model_dir: str
    problem: str = ''            # failed: the load error; hung: the hang's reason
    exit_in_s: float | None = None   # hung: seconds until the process exits
    cameras: list = field(default_factory=list)    # CameraHealth, in the order of ``cameras``
    pending: int = 0
    queue_size: int = 0
    not_serving: str = ''        # why every request is refused now (managed: not active)
    lifecycle: str = ''          # a managed node's lifecycle state ('' = unmanaged)
    runs_on: str = ''            # ready: the provider (and M.2 card) running the model


class Reporter:
    """Turns counters + NodeHealth into one DiagnosticArray; WARNs look at what is new."""

    def __init__(self, counters: Counters):
        self.counters = counters
        self._prev: dict = {}
        self._prev_t = time.monotonic()
        self._state, self._state_since = 'loading', self._prev_t

    def _new(self, key, values: dict) -> dict:
        prev = self._prev.get(key, {})
        self._prev[key] = values
        return {k: v - prev.get(k, 0) for k, v in values.items()}

    def report(self, name: str, h: NodeHealth, stamp) -> DiagnosticArray:
        values = self.counters.snapshot()
        new = self._new(None, values)
        now = time.monotonic()
        span = max(1e-3, now - self._prev_t)
        self._prev_t = now
        if h.state != self._state:
            self._state, self._state_since = h.state, now
        state_for_s = now - self._state_since
        groups = {c: {} for c in ('inference', 'timer')}
        for k, v in values.items():
            if concern_of(k) != 'camera':
                groups[concern_of(k)][k] = v
        cameras = []
        for cam in h.cameras:
            mine = self.counters.snapshot(cam.name)
            cameras.append(_status(
                f'{name}: {camera_status(cam.name)}', cam.image_topic,
                *_camera(h, cam, self._new(cam.name, mine), span, mine),
                {**{k: mine[k] for k in CAMERA}, 'image_topic': cam.image_topic,
                 'newest_frame_age_s': _fmt(cam.newest_frame_age_s),
                 'max_image_age_s': f'{cam.max_image_age_s:g}'}))
        periods = {c.name: c.period_s for c in h.cameras}
        arr = DiagnosticArray()
        arr.header.stamp = stamp
        arr.status = [
            _status(f'{name}: model', h.backend, *_model(h, state_for_s),
                    {'state': h.state, 'backend': h.backend, 'runs_on': h.runs_on,
                     'model_dir': h.model_dir,
                     'state_for_s': f'{state_for_s:.1f}',
                     **({'lifecycle_state': h.lifecycle} if h.lifecycle else {})}),
            *cameras,
            _status(f'{name}: inference', h.backend, *_inference(h, new, self.counters),
                    {**groups['inference'], 'pending_requests': h.pending,
                     'queue_size': h.queue_size,
                     **{k: f'{v:.1f}' for k, v in self.counters.timings().items()}}),
            _status(f'{name}: timer', '', *_timer(h, new, span, periods), {
                **groups['timer'], **{
                    (f'{cam}.period_s' if cam else 'period_s'): f'{s:g}'
                    for cam, s in periods.items()}}),
        ]
        return arr


def _fmt(value) -> str:
    return '' if value is None else f'{value:.2f}'


def _status(name, hardware_id, level, message, values: dict) -> DiagnosticStatus:
    st = DiagnosticStatus(name=name, hardware_id=hardware_id or '', level=level,
                          message=message)
    st.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
    return st


def _model(h: NodeHealth, state_for_s: float) -> tuple:
    if h.state == 'ready':
        on = f' on {h.runs_on}' if h.runs_on else ''
        return OK, f'ready: {h.backend}{on}, model {h.model_dir}'
    if h.state == 'loading':
        return WARN, (f'loading {h.model_dir} ({state_for_s:.0f} s so far); requests are '
                      'refused until it is ready')
    if h.state == 'failed':
        then = f'; {h.not_serving}' if h.lifecycle and h.not_serving else ''
        return ERROR, f'failed: the model did not load: {h.problem}{then}'
    if h.state == 'hung':
        then = (f'; exiting in {h.exit_in_s:.0f} s' if h.exit_in_s is not None else '')
        return ERROR, f'hung: {h.problem}{then}'
    return WARN, h.not_serving or h.state


def _camera(h: NodeHealth, cam: CameraHealth, new: dict, span: float, values: dict) -> tuple:
    topic = cam.image_topic
    age = cam.newest_frame_age_s
    lost, mismatched = new.get('frames_lost', 0), new.get('qos_incompatible', 0)
    if lost or mismatched:
        return WARN, (f'{lost} frame(s) lost by the middleware and {mismatched} publisher(s) '
                      f'of incompatible QoS on {topic} in the last {span:.0f} s '
                      f'({values.get("frames_lost", 0)} lost in all): see the node\'s warning '
                      '(image_reliability, image_transport)')
    if h.lifecycle and h.not_serving:     # a managed node not active has no subscription
        return WARN, f'not subscribed to {topic}: {h.not_serving}'
    if age is None:
        return WARN, f'no frame received on {topic} yet'
    if cam.max_image_age_s > 0 and age > cam.max_image_age_s:
        return WARN, (f'the newest frame on {topic} is {age:.1f} s old (max_image_age_s '
                      f'{cam.max_image_age_s:g}): is the camera still publishing, and is its '
                      'clock right?')
    bad = new.get('image_errors', 0)
    if bad:
        return WARN, (f'{bad} image(s) could not be used in the last {span:.0f} s '
                      f'({values["image_errors"]} in all)')
    rate = new.get('frames_received', 0) / span
    return OK, f'receiving {topic}: {rate:.1f} frames/s, newest {age:.2f} s old'


def _inference(h: NodeHealth, new: dict, counters: Counters) -> tuple:
    if h.state == 'hung':
        return ERROR, 'not serving: the runtime is hung (see the model status)'
    if h.state == 'failed':
        return ERROR, 'not serving: the model did not load (see the model status)'
    errors = sum(new.get(k, 0) for k in ERRORS)
    if errors:
        return WARN, f'{errors} new error(s); last: {counters.last_problem}'
    busy = new.get('busy_replies', 0)
    if busy:
        return WARN, (f'{busy} request(s) refused "busy" since the last report (queue_size '
                      f'{h.queue_size}): requests come faster than descriptions')
    t = counters.timings()
    figures = (f'; last: first token {t["last_time_to_first_token_ms"]:.0f} ms, '
               f'{t["last_tokens_per_second"]:.1f} tokens/s' if t else '')
    if h.not_serving:
        return OK, f'not serving: {h.not_serving}{figures}'
    if h.state != 'ready':
        return OK, f'{h.state}{figures}'
    doing = 'idle' if not h.pending else f'{h.pending} request(s) running or waiting'
    return OK, doing + figures


def _timer(h: NodeHealth, new: dict, span: float, periods: dict) -> tuple:
    on = {cam: s for cam, s in periods.items() if s > 0}
    if not on:
        return OK, 'off (period_s is 0: service only)'
    if h.not_serving:
        return OK, f'no ticks: {h.not_serving}'
    ticks = new.get('timer_ticks', 0)
    skipped = {k: v for k, v in new.items() if k.startswith('timer_skipped_') and v}
    why = ', '.join(f'{COUNTER_BY_NAME[k].skip} {v}' for k, v in skipped.items())
    if ticks and sum(skipped.values()) >= ticks and not new.get('timer_skipped_busy'):
        return WARN, f'no tick described in the last {span:.0f} s: {ticks} skipped ({why})'
    every = ', '.join(f'{cam} every {s:g} s' if cam else f'every {s:g} s'
                      for cam, s in on.items())
    return OK, f'{every}: {ticks} tick(s) in the last {span:.0f} s' + (
        f', skipped: {why}' if why else '')
