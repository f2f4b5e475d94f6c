"""~/describe: a Describe request -> a DescribeJob on the worker -> the response.

``describe_job`` is the translation the service and the action (~/describe_stream, whose goal
carries the same fields) share: the camera, questions, its frames (camera.Camera.resolve),
the typed-answer constraint, in that order; a refusal is the reason in words.
"""

from __future__ import annotations

from qwen_vl_interfaces.srv import Describe
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from .convert import SERVICE, request_constraint
from .job import DescribeJob
from .questions import questions
from .worker import NotAnAnswer

# A deep request queue: a burst of calls must reach the callback (and get "busy") instead of
# being dropped by the middleware's default depth of 10.
SERVICE_DEPTH = 100
SERVICE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=SERVICE_DEPTH,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)


def refuse(response, message: str):
    """Fill a response (or result) as refused: success false and why."""
    response.success = False
    response.message = message
    return response


def describe_job(serving, request, trigger: str, progress=None) -> tuple:
    """(DescribeJob, None) of a Describe request or goal, or (None, why not)."""
    camera, why = serving.cameras.pick(request.camera)
    if why:
        return None, why
    s = camera.settings
    try:
        asked = questions(request.prompt, request.prompts, s.prompt)
    except ValueError as e:
        return None, str(e)
    about, why = camera.resolve(request.image)
    if why:
        return None, why
    constraint, problem = request_constraint(request)
    if problem:
        serving.house.counters.inc('request_errors', problem)
        return None, problem
    return DescribeJob(serving.house, about, asked, s, request.max_new_tokens, trigger,
                       constraint, progress=progress), None


class DescribeService:
    """The ~/describe service of a Serving."""

    def __init__(self, serving):
        self._serving = serving
        self.service = serving.node.create_service(
            Describe, '~/describe', self._on_request, qos_profile=SERVICE_QOS,
            callback_group=ReentrantCallbackGroup())

    @property
    def name(self) -> str:
        return getattr(self.service, 'service_name', None) or getattr(
            self.service, 'srv_name', '~/describe')

    def _on_request(self, request, response):
        serving = self._serving
        why = serving.not_serving()
        if why:
            return refuse(response, why)
        dj, why = describe_job(serving, request, SERVICE)
        if why:
            return refuse(response, why)
        problem = serving.submit_and_wait(dj.job, dj.about)
        if problem:
            if isinstance(dj.job.error, NotAnAnswer):    # the partial text is kept
                response.description, response.descriptions = dj.job.error.kept[0], \
                    dj.job.error.kept
            return refuse(response, problem)
        response.success = True
        response.message = ''
        response.description = dj.job.result[0]
        response.descriptions = dj.job.result
        return response
