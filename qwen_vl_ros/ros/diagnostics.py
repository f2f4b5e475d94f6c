"""Counters of what the node did and refused, published as diagnostic_msgs on /diagnostics."""

from __future__ import annotations

import threading

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

COUNTERS = (
    'frames_received',          # messages on the image topic
    'descriptions',             # descriptions published
    'timer_ticks',              # timer callbacks; each ends as one timer_skipped_* or one job
    'timer_skipped_busy',       # timer ticks while a description was being generated / queued
    'timer_skipped_no_frame',   # timer ticks without a new frame since the last description
    'timer_skipped_stale',      # timer ticks whose newest frame was older than max_image_age_s
    'timer_skipped_loading',    # timer ticks before the model was ready
    'timer_skipped_video_filling',  # video mode: ticks with a new frame but < video_frames kept
    'busy_replies',             # ~/describe answered "busy" (queue full)
    'stale_refused',            # ~/describe refused a frame older than max_image_age_s
    'image_errors',             # frames that could not be converted (topic or request)
    'prompt_errors',            # prompts too long for the compiled prefill
    'runtime_errors',           # the runtime failed while generating
    'internal_errors',          # anything else (a bug: the log has the traceback)
    'cancelled',                # jobs dropped or cut short (time-out, shut-down)
    'frames_lost',              # image messages the middleware reported lost (MESSAGE_LOST)
    'qos_incompatible',         # image publishers whose QoS cannot match the subscription
)
# Counted like errors for the status level: frames that never reached the node.
LOSSES = ('frames_lost', 'qos_incompatible')
ERRORS = ('image_errors', 'prompt_errors', 'runtime_errors', 'internal_errors')


class Counters:
    """Thread-safe counters plus the last problem, for the log and /diagnostics."""

    def __init__(self):
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTERS, 0)
        self.last_problem = ''
        self._errors_seen = 0

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

    def status(self, name: str, hardware_id: str, state: str, pending: int,
               stamp) -> DiagnosticArray:
        """One DiagnosticArray: level WARN when errors happened since the previous call."""
        values = self.snapshot()
        errors = sum(values[k] for k in ERRORS + LOSSES)
        st = DiagnosticStatus(name=name, hardware_id=hardware_id)
        if state == 'failed':
            st.level, st.message = DiagnosticStatus.ERROR, 'the model did not load'
        elif errors > self._errors_seen:
            st.level = DiagnosticStatus.WARN
            st.message = f'{errors - self._errors_seen} new error(s); last: {self.last_problem}'
        else:
            st.level, st.message = DiagnosticStatus.OK, state
        self._errors_seen = errors
        st.values = [KeyValue(key='state', value=state),
                     KeyValue(key='pending_requests', value=str(pending))]
        st.values += [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray()
        arr.header.stamp = stamp
        arr.status = [st]
        return arr
