"""What the node did and how it is, on /diagnostics: one status per concern, as operators read it.

diagnostic_msgs conventions (REP 107 / diagnostic_updater): each DiagnosticStatus is named
``<node>: <concern>``, has a level (OK / WARN / ERROR), a message a person understands and its
figures as key/value pairs. The concerns:

- ``model``: loading / ready / failed / hung, backend, what runs the model (key ``runs_on``:
  pyaxengine's provider and, on an M.2 card, which card), model directory (key ``state``); a
  managed node not active: its lifecycle state and what to do (key ``lifecycle_state``);
- ``camera``: frames received, refused by reason, newest frame's age (WARN when older than
  max_image_age_s, or none yet);
- ``inference``: queue depth, busy refusals, errors, last and p95 vision / first-token /
  decode timings and tokens/s;
- ``timer``: ticks and ticks skipped by reason (WARN when no tick in the last report was
  described for a reason other than "busy").

Every counter is in exactly one status (a reader may merge the statuses of one array).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR

COUNTERS = (
    'frames_received',          # messages on the image topic
    'descriptions',             # descriptions published
    'timer_ticks',              # timer callbacks; each ends as one timer_skipped_* or one job
    'timer_skipped_busy',       # timer ticks while a description was being generated / queued
    'timer_skipped_no_frame',   # timer ticks without a new frame since the last description
    'timer_skipped_stale',      # timer ticks whose newest frame was older than max_image_age_s
    'timer_skipped_loading',    # timer ticks before the model was ready
    'timer_skipped_video_filling',  # video mode: ticks with a new frame but < video_frames kept
    'timer_skipped_hung',       # timer ticks while the runtime was hung (health.py)
    'busy_replies',             # ~/describe answered "busy" (queue full)
    'stale_refused',            # ~/describe refused a frame older than max_image_age_s
    'image_errors',             # frames that could not be converted (topic or request)
    'prompt_errors',            # prompts too long for the compiled prefill
    'runtime_errors',           # the runtime failed while generating
    'internal_errors',          # anything else (a bug: the log has the traceback)
    'cancelled',                # jobs dropped or cut short (time-out, shut-down)
    'frames_lost',              # image messages the middleware reported lost (MESSAGE_LOST)
    'qos_incompatible',         # image publishers whose QoS cannot match the subscription
    'timer_skipped_not_active',  # timer ticks as the node stopped serving (deactivate, shut-down)
)
# Counted like errors for the status level: frames that never reached the node.
LOSSES = ('frames_lost', 'qos_incompatible')
ERRORS = ('image_errors', 'prompt_errors', 'runtime_errors', 'internal_errors')
CAMERA = ('frames_received', 'image_errors', 'stale_refused') + LOSSES
TIMINGS = ('vision_ms', 'time_to_first_token_ms', 'decode_ms', 'tokens_per_second')
TIMING_WINDOW = 100     # descriptions the p95 figures are taken over


def concern_of(counter: str) -> str:
    """Return the status a counter is reported in: camera, timer or inference."""
    if counter.startswith('timer_'):
        return 'timer'
    if counter in CAMERA or counter.startswith(('frames_', 'messages_')):
        return 'camera'
    return 'inference'


class Counters:
    """Thread-safe counters, the last problem, and the timings of recent descriptions."""

    def __init__(self):
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTERS, 0)
        self.last_problem = ''
        self._timings = collections.deque(maxlen=TIMING_WINDOW)

    def inc(self, name: str, problem: str = '') -> int:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + 1
            if problem:
                self.last_problem = problem
            return self._values[name]

    def add(self, name: str, n: int, problem: str = '') -> int:
        """Add ``n`` to a counter (e.g. frames lost, reported in batches)."""
        with self._lock:
            self._values[name] = self._values.get(name, 0) + int(n)
            if problem:
                self.last_problem = problem
            return self._values[name]

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._values)

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
class NodeHealth:
    """What the node knows besides its counters, at one moment (filled by node.py)."""

    state: str                   # loading | ready | failed | hung | stopped
    backend: str                 # the runtime in use (or the backend parameter before loading)
    model_dir: str
    problem: str = ''            # failed: the load error; hung: the hang's reason
    exit_in_s: float | None = None   # hung: seconds until the process exits
    image_topic: str = ''
    newest_frame_age_s: float | None = None
    max_image_age_s: float = 0.0
    pending: int = 0
    queue_size: int = 0
    period_s: float = 0.0
    not_serving: str = ''        # why every request is refused now (managed: not active)
    lifecycle: str = ''          # a managed node's lifecycle state ('' = unmanaged)
    runs_on: str = ''            # ready: the provider (and M.2 card) running the model


class Reporter:
    """Turns counters + NodeHealth into one DiagnosticArray; WARNs look at what is new."""

    def __init__(self, counters: Counters):
        self.counters = counters
        self._prev = counters.snapshot()
        self._prev_t = time.monotonic()
        self._state, self._state_since = 'loading', self._prev_t

    def report(self, name: str, h: NodeHealth, stamp) -> DiagnosticArray:
        values = self.counters.snapshot()
        new = {k: v - self._prev.get(k, 0) for k, v in values.items()}
        now = time.monotonic()
        span = max(1e-3, now - self._prev_t)
        self._prev, self._prev_t = values, now
        if h.state != self._state:
            self._state, self._state_since = h.state, now
        state_for_s = now - self._state_since
        groups = {c: {} for c in ('camera', 'inference', 'timer')}
        for k, v in values.items():
            groups[concern_of(k)][k] = v
        arr = DiagnosticArray()
        arr.header.stamp = stamp
        arr.status = [
            _status(f'{name}: model', h.backend, *_model(h, state_for_s),
                    {'state': h.state, 'backend': h.backend, 'runs_on': h.runs_on,
                     'model_dir': h.model_dir,
                     'state_for_s': f'{state_for_s:.1f}',
                     **({'lifecycle_state': h.lifecycle} if h.lifecycle else {})}),
            _status(f'{name}: camera', h.image_topic, *_camera(h, new, span, values),
                    {**groups['camera'], 'image_topic': h.image_topic,
                     'newest_frame_age_s': _fmt(h.newest_frame_age_s),
                     'max_image_age_s': f'{h.max_image_age_s:g}'}),
            _status(f'{name}: inference', h.backend, *_inference(h, new, self.counters),
                    {**groups['inference'], 'pending_requests': h.pending,
                     'queue_size': h.queue_size,
                     **{k: f'{v:.1f}' for k, v in self.counters.timings().items()}}),
            _status(f'{name}: timer', '', *_timer(h, new, span), {
                **groups['timer'], 'period_s': f'{h.period_s:g}'}),
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


def _camera(h: NodeHealth, new: dict, span: float, values: dict) -> tuple:
    topic = h.image_topic
    age = h.newest_frame_age_s
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
    if h.max_image_age_s > 0 and age > h.max_image_age_s:
        return WARN, (f'the newest frame on {topic} is {age:.1f} s old (max_image_age_s '
                      f'{h.max_image_age_s:g}): is the camera still publishing, and is its '
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


_SKIP_REASONS = {'timer_skipped_no_frame': 'no new frame', 'timer_skipped_stale': 'stale frame',
                 'timer_skipped_loading': 'model loading',
                 'timer_skipped_video_filling': 'video still filling',
                 'timer_skipped_hung': 'runtime hung', 'timer_skipped_busy': 'busy',
                 'timer_skipped_not_active': 'not active'}


def _timer(h: NodeHealth, new: dict, span: float) -> tuple:
    if h.period_s <= 0:
        return OK, 'off (period_s is 0: service only)'
    if h.not_serving:
        return OK, f'no ticks: {h.not_serving}'
    ticks = new.get('timer_ticks', 0)
    skipped = {k: v for k, v in new.items() if k.startswith('timer_skipped_') and v}
    why = ', '.join(f'{_SKIP_REASONS.get(k, k)} {v}' for k, v in skipped.items())
    if ticks and sum(skipped.values()) >= ticks and not new.get('timer_skipped_busy'):
        return WARN, f'no tick described in the last {span:.0f} s: {ticks} skipped ({why})'
    return OK, f'every {h.period_s:g} s: {ticks} tick(s) in the last {span:.0f} s' + (
        f', skipped: {why}' if why else '')
