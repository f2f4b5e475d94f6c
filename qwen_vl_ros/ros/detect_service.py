"""~/detect: a Detect request -> a DescribeJob finding boxes -> the Detection2DArray reply.

Labels and/or a referring expression about the named camera's newest frame (never a video) or
the request's image, resolved as every request is (camera.Cameras.resolve). Without vision_msgs
~/detect is a std_srvs/Trigger that says why (detect.py).
"""

from __future__ import annotations

from rclpy.callback_groups import ReentrantCallbackGroup
from std_srvs.srv import Trigger

from . import detect as detect_io
from . import params
from .convert import SERVICE
from .describe_service import SERVICE_QOS, refuse
from .housekeeping import warning
from .job import DescribeJob
from .worker import NotAnAnswer


class DetectService:
    """The ~/detect service of a Serving (std_srvs/Trigger saying why, without vision_msgs)."""

    def __init__(self, serving):
        self._serving = serving
        node = serving.node
        if detect_io.AVAILABLE:
            self.service = node.create_service(detect_io.Detect, '~/detect', self._on_request,
                                               qos_profile=SERVICE_QOS,
                                               callback_group=ReentrantCallbackGroup())
        else:
            warning(serving.house.logger)(detect_io.MISSING)
            self.service = node.create_service(Trigger, '~/detect', detect_io.unavailable)

    def _on_request(self, request, response):
        serving = self._serving
        why = serving.not_serving()
        if why:
            return refuse(response, why)
        labels, expression = params.strings(request.labels), request.prompt.strip()
        if not labels and not expression:
            return refuse(response, 'bad request: give labels and/or prompt (a referring '
                                    'expression)')
        about, why = serving.cameras.resolve(request, video=False)
        if why:
            return refuse(response, why)
        dj = DescribeJob(serving.house, about, '', about.camera.settings, request.max_new_tokens,
                         SERVICE, detect=(labels, expression))
        problem = serving.submit_and_wait(dj.job, about)
        if problem:
            if isinstance(dj.job.error, NotAnAnswer):    # the whole boxes and the text kept
                response.detections, found = dj.job.error.kept
                response.text = found.text
            return refuse(response, problem)
        response.detections, found = dj.job.result
        response.success = True
        response.message = '; '.join(found.notes)
        response.text = found.text
        return response
