"""One job on the inference worker: convert a camera's frames, run the core, publish, count.

    About (camera, frames)  ->  DescribeJob.run on the worker thread  ->  the camera's
    ~/description, ~/description/stamped (or ~/detections), ~/annotated_image; the result
    (Descriptions, or (Detection2DArray, Detections)) for the service, action or timer

``DescribeJob(...).job`` is the worker's Job. Made by the interface modules (describe_service,
stream_action, detect, timer), which only translate their request into these arguments.
"""

from __future__ import annotations

import dataclasses
import time
import traceback

from ..vlm.grounding import detect as find_objects
from . import detect as detect_io
from .convert import description_msg, error_kind, text_msg, unanswered_msg
from .frames import convert_all, second_per_grid_t
from .worker import Cancelled, Job, NotAnAnswer


class DescribeJob:
    """A job about ``about``'s frames: ``questions`` answered in order, or ``detect`` boxes.

    ``settings``: the camera's (camera.settings); ``max_new_tokens`` 0 = the parameter;
    ``constraint``: a request's own choices / json_schema / regex (instead of the parameters');
    ``detect`` = (labels, expression): find boxes in the newest frame instead; ``progress``
    (stream_action.Progress) streams the text, and a cancelled streamed job returns what it
    has (the last Description partial) instead of failing. One source = an image; several =
    one video (oldest first), published with the header of the newest.
    """

    def __init__(self, house, about, questions, settings, max_new_tokens: int, trigger: str,
                 constraint: dict | None = None, detect: tuple | None = None, progress=None):
        self._house = house
        self.about = about
        self.camera = about.camera
        self.questions = [questions] if isinstance(questions, str) else list(questions)
        options = settings.generation_options(max_new_tokens)
        if constraint:
            options = dataclasses.replace(options, **{'choices': None, 'json_schema': None,
                                                      'regex': None, **constraint})
        self.options = options
        self.max_pixels = settings.max_pixels
        self.bit_depth = settings.bit_depth
        self.trigger = trigger
        self.detect = detect
        self.progress = progress
        self.job = Job(self.run, self.on_done)

    # -- on the worker thread -----------------------------------------------------------------
    def run(self, pipeline, should_stop):
        sources, source, camera = self.about.sources, self.about.source, self.camera
        t0 = time.perf_counter()
        # a frame that cannot be converted leaves the ring, or it would spoil every video
        frames = convert_all(sources, self.max_pixels, on_bad=camera.frames.discard,
                             bit_depth=self.bit_depth)
        convert_ms = 1e3 * (time.perf_counter() - t0)
        opts = self.options
        if len(frames) > 1:
            spg = second_per_grid_t(sources, pipeline.files.config.temporal_patch_size)
            if spg:
                opts = dataclasses.replace(opts, second_per_grid_t=spg)
        if self.detect is not None:
            return self._run_detect(pipeline, frames[-1], opts, should_stop)
        # topic frames are known to the vision cache by topic, stamp and frame_id, and the
        # bit_depth they were converted with (a run-time parameter)
        keys = ([(src.cache_key(camera.image_topic), self.bit_depth) for src in sources]
                if source.from_topic else None)
        counters, progress = self._house.counters, self.progress
        msgs = []
        for i, question in enumerate(self.questions):
            if i and should_stop():
                if progress is not None:   # the unasked question ends the goal, cancelled
                    msgs.append(unanswered_msg(source.header, question, self.trigger,
                                               'cancelled'))
                break             # cancelled between two questions
            hooks = {} if progress is None else progress.hooks(i)
            result = pipeline.describe(frames, question, opts, should_stop=should_stop,
                                       frame_keys=keys, **hooks)
            msg = description_msg(result, source.header, question, self.trigger,
                                  0.0 if i else convert_ms, opts.choices)
            if result.problem:    # a typed answer the budget cut: not published
                which = (f'question {i + 1} of {len(self.questions)}: '
                         if len(self.questions) > 1 else '')
                raise NotAnAnswer(which + result.problem, msgs + [msg])
            if result.finish_reason == 'cancelled' or (progress is None and should_stop()):
                if progress is not None:
                    msgs.append(msg)      # the partial answer ends a streamed job
                    counters.inc('cancelled')
                break
            if progress is not None:
                progress.done(i, msg.text, msg.generated_tokens)
            camera.text_pub.publish(text_msg(msg.text))
            camera.stamped_pub.publish(msg)
            counters.inc('descriptions')
            counters.record(msg)
            if camera.annotator.publish(frames[-1], source.header, text=msg.text):
                counters.inc('annotated_images')
            msgs.append(msg)
        if progress is None and len(msgs) < len(self.questions):
            raise Cancelled('generation cancelled (shut-down or time-out)')
        return msgs

    def _run_detect(self, pipeline, frame, options, should_stop):
        """Find the objects in one frame; publish ~/detections; return (array, Detections)."""
        labels, expression = self.detect
        header = self.about.source.header
        found = find_objects(pipeline, frame, labels, expression, options, should_stop)
        if found.result.finish_reason == 'cancelled' or should_stop():
            raise Cancelled('generation cancelled (shut-down or time-out)')
        arr = detect_io.detections_msg(found, header)
        if found.result.problem:      # cut by the budget: the whole boxes kept, not published
            raise NotAnAnswer('; '.join(found.notes), (arr, found))
        self.camera.detections_pub.publish(arr)
        self._house.counters.inc('detections')
        if self.camera.annotator.publish(frame, header, detections=found.detections):
            self._house.counters.inc('annotated_images')
        return arr, found

    def on_done(self, job: Job) -> None:
        """Count a failure and say it (throttled per kind): the caller only sees the reply."""
        if job.error is None:
            return
        house, camera = self._house, self.camera
        counter, reason = error_kind(job.error)
        house.counters.inc(counter, reason if counter != 'cancelled' else '', camera=camera.name)
        if counter == 'cancelled':
            return
        if counter == 'internal_errors':
            house.logger.error(f'{self.trigger} request failed: {reason}\n' + ''.join(
                traceback.format_exception(job.error)))
            return
        where = (('video' if len(self.about.sources) > 1 else 'frame')
                 + f' from {camera.image_topic}' if self.about.source.from_topic
                 else 'request image')
        total = house.counters.snapshot()[counter]
        house.warn_throttled((camera.name, where, counter),
                             f'{self.trigger}: {where} not described: {reason} '
                             f'({total} {counter} so far)')
