"""The timer: every camera's ticks (its period_s) -> a DescribeJob when the worker is idle.

A tick is skipped, never queued, when the worker is busy, and counted with its reason (every
tick ends as one timer_skipped_* or one job). Cameras share the one worker round-robin: a camera
whose tick was skipped because the worker was busy is owed a turn, and the next tick that finds
the worker idle - whichever camera's tick it is - serves the longest-owed camera first (if it
has a new frame), so that cameras whose ticks come at the same moment take turns instead of the
first one always winning. With one camera this is exactly "skip when busy".
"""

from __future__ import annotations

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

from . import detect as detect_io
from .camera import About
from .convert import TIMER
from .housekeeping import THROTTLE_S, warning
from .job import DescribeJob
from .worker import Refused

# worker.Refused kind -> the skip counter of a tick refused that way
_REFUSED = {'busy': 'timer_skipped_busy', 'hung': 'timer_skipped_hung',
            'stopped': 'timer_skipped_not_active'}


class CameraTimers:
    """One rclpy timer per camera with period_s > 0; ticks in one mutually exclusive group."""

    def __init__(self, serving):
        self._serving = serving
        self._group = MutuallyExclusiveCallbackGroup()
        self._timers: dict = {}     # camera name -> rclpy timer
        self._owed: list = []       # cameras skipped busy, longest-owed first

    def start(self) -> None:
        for camera in self._serving.cameras:
            self.set_period(camera)

    def stop(self) -> None:
        for name in list(self._timers):
            self._serving.node.destroy_timer(self._timers.pop(name))
        self._owed.clear()

    def set_period(self, camera) -> None:
        """(Re-)create ``camera``'s timer with its period_s; 0 = none (nor while inactive)."""
        node = self._serving.node
        timer = self._timers.pop(camera.name, None)
        if timer is not None:
            node.destroy_timer(timer)
        period = camera.settings.period_s
        if period > 0 and self._serving.active:
            self._timers[camera.name] = node.create_timer(
                period, lambda c=camera: self.on_tick(c), callback_group=self._group)

    def _owe(self, camera) -> None:
        if camera not in self._owed:
            self._owed.append(camera)

    def on_tick(self, camera) -> None:
        serving = self._serving
        counters, log = serving.house.counters, serving.house.logger
        counters.inc('timer_ticks')
        if serving.not_serving():   # a tick that began as the timer was destroyed
            counters.inc('timer_skipped_not_active')
            return
        worker = serving.worker
        if worker.state != 'ready':
            counters.inc('timer_skipped_hung' if worker.state == 'hung' else
                         'timer_skipped_loading')
            return
        if not worker.idle:
            self._owe(camera)
            n = counters.inc('timer_skipped_busy')
            log.info(f'timer: still busy, tick skipped ({n} so far)',
                     throttle_duration_sec=THROTTLE_S)
            return
        # the longest-owed camera with something new goes first, then this one; a camera
        # without anything new is owed nothing (its own tick says why)
        mine = None
        for cam in self._owed + ([] if camera in self._owed else [camera]):
            dj, skip = self._job(cam)
            if dj is not None:
                if cam is not camera:
                    self._owe(camera)    # this tick went to another camera: its turn next
                self._submit(dj)
                return
            if cam is camera:
                mine = skip
            if cam in self._owed:
                self._owed.remove(cam)
        self._skipped(camera, *mine)

    def _submit(self, dj) -> None:
        """Queue a tick's job if the worker is still idle; count the tick as skipped if not."""
        camera = dj.camera
        try:
            self._serving.worker.submit(dj.job, only_if_idle=True)
        except Refused as r:
            if r.kind == 'busy':
                self._owe(camera)
            self._serving.house.counters.inc(_REFUSED.get(r.kind, 'timer_skipped_loading'))
            return
        camera.frames.mark_described(dj.about.source)
        if camera in self._owed:
            self._owed.remove(camera)

    def _job(self, camera) -> tuple:
        """(DescribeJob, None) of what ``camera`` should describe now, or (None, skip).

        skip = (counter, text, source or None, warn): why there is nothing to describe.
        """
        frames = camera.frames
        video_frames, kept = frames.video()
        if video_frames:
            source = kept[-1] if kept and frames.is_new(kept[-1]) else None
        else:
            source = frames.fresh()
        if source is None:
            what = 'kept for the video' if video_frames else 'on'
            return None, ('timer_skipped_no_frame',
                          f'no new frame {what} {camera.image_topic}', None, False)
        if len(kept) < video_frames:
            return None, ('timer_skipped_video_filling',
                          camera.filling(len(kept), video_frames), None, False)
        stale = camera.stale_reason(source)
        if stale:
            return None, ('timer_skipped_stale', stale, source, True)
        s = camera.settings
        house = self._serving.house
        if s.mode == 'detect':
            problem = ('vision_msgs is not installed (see the start-up warning)'
                       if not detect_io.AVAILABLE else
                       '' if s.labels else
                       f'parameter {camera.name + "." if camera.name else ""}labels is empty')
            if problem:
                return None, ('timer_skipped_no_detect', f'mode detect: {problem}', None, True)
            return DescribeJob(house, About(camera, [source]), '', s, 0, TIMER,
                               detect=(s.labels, '')), None
        return DescribeJob(house, About(camera, kept if video_frames else [source]), s.prompt,
                           s, 0, TIMER), None

    def _skipped(self, camera, counter: str, text: str, source, warn: bool) -> None:
        """Count a tick of ``camera`` with nothing to describe and say why (throttled)."""
        house = self._serving.house
        if source is not None:
            camera.frames.mark_described(source)     # a stale frame is not tried again
        n = house.counters.inc(counter, text if counter == 'timer_skipped_no_detect' else '')
        sep = ',' if counter == 'timer_skipped_no_frame' else ';'
        line = f'timer: {text}{sep} tick skipped ({n} so far)'
        # (two call sites: rclpy's throttling keeps one severity per call site)
        if warn:
            warning(house.logger)(line, throttle_duration_sec=THROTTLE_S)
        else:
            house.logger.info(line, throttle_duration_sec=THROTTLE_S)
