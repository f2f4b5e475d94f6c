"""The action ~/describe_stream: a description streamed as feedback, cancelled on request.

    goal (prompt, image, max_new_tokens, prompts)  ->  a Job on the one inference worker
    (the service's bounded queue)  ->  feedback per decode step  ->  result

A goal is translated as a ~/describe request is (describe_service.describe_job: the camera,
its frames, the questions) and queued on the one worker. A refused goal (queue
full, no frame yet, bad request) is accepted and aborted at once with the reason in the
result's ``message``: a ROS 2 goal response is a bare accept/reject and cannot say why.

Feedback is made on the worker thread (``Progress``: one item per decode step that completed
text, never a split UTF-8 character, see vlm/streaming.py) and published from the goal's
executor thread. A cancel request sets the job's stop flag: the core asks it before the vision
model, before each prefill chunk (a chunked-prefill build) and before every decode step, so the
request ends before the next one; the result then has finish reason "cancelled" and the
partial text (none when it ended before the first token).
"""

from __future__ import annotations

import queue
import threading
import time

from qwen_vl_interfaces.action import Describe as DescribeAction
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup

from .convert import error_kind, ros_string, unanswered_msg
from .describe_service import describe_job
from .worker import Cancelled

STREAM = 'action'     # the trigger of its descriptions
POLL_S = 0.05   # longest a goal's thread waits before it looks at cancel and shut-down again
REPLY_S = 0.2   # answer_all: time left for rclpy's executor to send the results it holds


class Progress:
    """Feedback of one goal, made on the worker thread, queued for the goal's thread."""

    def __init__(self):
        self.items: queue.Queue = queue.Queue()
        self.unstarted = None    # the Description of a goal cancelled before it ran (_start)
        self._text = ''
        self._tokens = 0

    def hooks(self, index: int) -> dict:
        """{'on_text': ..., 'on_token': ...} for question ``index`` of Pipeline.describe.

        The core calls on_token with every generated token before the text it completes, so
        a piece of text carries the count of tokens generated so far.
        """
        self._text, self._tokens = '', 0

        def on_token(token: int) -> None:
            self._tokens += 1

        def on_text(piece: str) -> None:
            piece = ros_string(piece)
            self._text += piece
            self.items.put((index, self._text, piece, self._tokens))

        return {'on_text': on_text, 'on_token': on_token}

    def done(self, index: int, text: str, tokens: int) -> None:
        """Close question ``index``: one last item when its final text says more than fed.

        (A trailing byte-level token that completes no character shows up only in the final
        text, as U+FFFD.)
        """
        if text != self._text:
            delta = text[len(self._text):] if text.startswith(self._text) else text
            self.items.put((index, text, delta, tokens))


class StreamAction:
    """The ~/describe_stream action server of a Serving."""

    def __init__(self, serving):
        self._serving = serving
        self._closing = serving.house.closing
        self._jobs: dict = {}     # goal id -> its job, while the goal runs
        self._goals: dict = {}    # goal id -> handle, from acceptance until its result is out
        self._lock = threading.Lock()
        self._server = ActionServer(
            serving.node, DescribeAction, '~/describe_stream', execute_callback=self._execute,
            goal_callback=lambda goal: GoalResponse.ACCEPT, cancel_callback=self._on_cancel,
            handle_accepted_callback=self._on_accepted, callback_group=ReentrantCallbackGroup())

    def destroy(self) -> None:
        self._server.destroy()

    def _withdraw(self, job) -> None:
        """Cancel ``job``; a queued one leaves the (current) worker's queue at once."""
        self._serving.worker.withdraw(job)

    def _not_serving(self) -> str | None:
        # why the node stopped serving (a managed node's deactivate cancels the running job):
        # the reason a goal cut short by it ends with, instead of a bare success or "cancelled"
        return self._serving.not_serving()

    def _start(self, goal, progress) -> tuple:
        """Resolve a goal as ~/describe resolves a request and queue its job.

        Returns (job, None), or (None, why not).
        """
        serving = self._serving
        why = serving.not_serving()
        if why:
            return None, why
        dj, why = describe_job(serving, goal, STREAM, progress)
        if why:
            return None, why
        # what a goal withdrawn before it ran ends with (no token: finish reason cancelled)
        progress.unstarted = unanswered_msg(dj.about.source.header, dj.questions[0], STREAM,
                                            'cancelled')
        why = serving.submit(dj.job, dj.about)
        if why:
            return None, why
        return dj.job, None

    def _on_accepted(self, handle) -> None:
        with self._lock:
            for key in [k for k, h in self._goals.items() if self._answered(k, h)]:
                del self._goals[key]
            self._goals[bytes(handle.goal_id.uuid)] = handle
        handle.execute()

    def answer_all(self, timeout: float = 5.0) -> list:
        """Wait until every accepted goal is answered; return the ids of those that were not.

        Call once the node no longer serves (a managed node's cleanup, before the action
        server is destroyed): each running goal's job is withdrawn and the goal aborted with
        the node's reason, and goals accepted but not yet executing are aborted with it when
        their execute callback runs. A goal counts as answered when rclpy holds its result
        (the response to a result request already made is sent by rclpy's executor task right
        after: REPLY_S is left for it). ``timeout`` in seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                jobs = list(self._jobs.values())
                open_ = [k for k, h in self._goals.items() if not self._answered(k, h)]
            for job in jobs:
                self._withdraw(job)
            if not open_ or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        time.sleep(REPLY_S)
        return open_

    def _answered(self, key: bytes, handle) -> bool:
        try:
            if handle.is_active:
                return False
        except Exception:  # noqa: BLE001 - a goal rclpy expired (result_timeout): destroyed
            return True
        # rclpy sets the goal's result future after the execute callback has returned
        future = getattr(self._server, '_result_futures', {}).get(key)
        return future is None or future.done()

    def _on_cancel(self, handle) -> CancelResponse:
        """Accept the cancel and stop the job now.

        A queued job leaves the queue; a running one stops before its next decode step.
        """
        with self._lock:
            job = self._jobs.get(bytes(handle.goal_id.uuid))
        if job is not None:
            self._withdraw(job)
        return CancelResponse.ACCEPT

    def _execute(self, handle):
        progress = Progress()
        job, refused = self._start(handle.request, progress)
        result = DescribeAction.Result()
        if job is None:
            result.success, result.message = False, refused
            handle.abort()
            return result
        key = bytes(handle.goal_id.uuid)
        with self._lock:
            self._jobs[key] = job
        try:
            while not job.done.is_set() or not progress.items.empty():
                try:
                    item = progress.items.get(timeout=POLL_S)
                except queue.Empty:
                    item = None
                if item is not None and not self._closing.is_set():
                    _publish(handle, item)
                # (a cancel that came before the job was known here, and shut-down)
                if handle.is_cancel_requested or self._closing.is_set():
                    self._withdraw(job)
        finally:
            with self._lock:
                self._jobs.pop(key, None)
        return self._finish(handle, job, result, progress)

    def _finish(self, handle, job, result, progress):
        # a typed answer cut by the budget (NotAnAnswer) keeps its partial description; a goal
        # cancelled before it ran ends with an empty one, finish reason cancelled
        msgs = job.result or getattr(job.error, 'kept', None) or []
        if not msgs and handle.is_cancel_requested and progress.unstarted is not None:
            msgs = [progress.unstarted]
        if msgs:
            result.description = msgs[0]
            result.descriptions = list(msgs)
        if handle.is_cancel_requested:
            result.success, result.message = False, 'cancelled'
            end = handle.canceled
        elif self._closing.is_set():
            result.success, result.message = False, 'shutting down'
            end = handle.abort
        elif (job.cancelled or isinstance(job.error, Cancelled)) and self._not_serving():
            result.success, result.message = False, self._not_serving()
            end = handle.abort
        elif job.error is not None:
            result.success, result.message = False, error_kind(job.error)[1]
            end = handle.abort
        else:
            result.success, result.message = True, ''
            end = handle.succeed
        try:
            end()
        except Exception:  # noqa: BLE001 - after SIGINT the context (and the goal) is gone
            if not self._closing.is_set():
                raise
        return result


def _publish(handle, item) -> None:
    index, text, delta, tokens = item
    fb = DescribeAction.Feedback()
    fb.prompt_index, fb.text, fb.delta, fb.generated_tokens = index, text, delta, tokens
    handle.publish_feedback(fb)
