"""~/detect and ~/detections: core detections -> vision_msgs messages and replies.

vision_msgs is the standard for detections (rosdep key vision_msgs; apt on robots) but is not
on PyPI, and qwen_vl_interfaces builds srv/Detect only where it is found. Without it the node
still runs: it logs once that detections are off and why (``MISSING``), and ``~/detect`` is
served as std_srvs/Trigger answering success false with that reason (a Detect request cannot
even be written without vision_msgs, so a type that exists everywhere says why instead).
"""

from __future__ import annotations

from ..vlm.grounding import Detections

try:
    from qwen_vl_interfaces.srv import Detect
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
    AVAILABLE, MISSING = True, ''
except ImportError as e:   # vision_msgs not installed (or interfaces built without it)
    Detect = Detection2D = Detection2DArray = ObjectHypothesisWithPose = None
    AVAILABLE = False
    MISSING = (f'detections are off: the ROS package vision_msgs is not installed '
               f'(apt install ros-$ROS_DISTRO-vision-msgs, rosdep key vision_msgs; then rebuild '
               f'qwen_vl_interfaces): {e}')


def detections_msg(found: Detections, header):
    """Return the Detection2DArray of ``found`` (boxes in source pixels), stamped ``header``.

    One Detection2D per box: bbox centre and size in pixels, one ObjectHypothesisWithPose
    (class_id = the label, score = mean model probability of the label's tokens), id = its
    index in the answer.
    """
    arr = Detection2DArray()
    arr.header = header
    for d in found.detections:
        x1, y1, x2, y2 = d.box
        det = Detection2D()
        det.header = header
        det.id = str(d.index)     # its place in the answer, whatever boxes were dropped
        det.bbox.center.position.x = (x1 + x2) / 2.0
        det.bbox.center.position.y = (y1 + y2) / 2.0
        det.bbox.size_x = float(x2 - x1)
        det.bbox.size_y = float(y2 - y1)
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = d.label
        hyp.hypothesis.score = float(d.score)
        hyp.pose.pose.position.x = det.bbox.center.position.x
        hyp.pose.pose.position.y = det.bbox.center.position.y
        det.results = [hyp]
        arr.detections.append(det)
    return arr


def unavailable(request, response):
    """Answer a std_srvs/Trigger ~/detect call without vision_msgs: success false, why."""
    response.success = False
    response.message = MISSING
    return response

