"""~/annotated_image: the source frame with boxes, labels and the description drawn (OpenCV).

Drawn and published only while the topic has subscribers (the drawing and a full-size bgr8
message cost host time per answer).
"""

from __future__ import annotations

import textwrap
import threading

import cv2
import numpy as np
from sensor_msgs.msg import Image

COLOURS = ((0, 200, 255), (255, 120, 0), (60, 220, 60), (220, 60, 220), (0, 80, 255))


class Annotator:
    """Publishes the annotated image of the newest answered frame, only while subscribed.

    Boxes and a description are drawn together only when they are about the same frame (same
    stamp and frame_id): a detection does not erase the description of its frame.
    """

    def __init__(self, publisher):
        self.publisher = publisher
        self._lock = threading.Lock()
        self._drawn: dict = {}

    def publish(self, frame, header, detections=None, text=None) -> bool:
        """Draw and publish RGB ``frame`` with what is known about it; False: nobody listens."""
        if self.publisher.get_subscription_count() == 0:
            return False
        key = (header.stamp.sec, header.stamp.nanosec, header.frame_id)
        with self._lock:
            drawn = self._drawn if self._drawn.get('key') == key else {'key': key}
            if detections is not None:
                drawn['detections'] = detections
            if text is not None:
                drawn['text'] = text
            self._drawn = drawn
            boxes, words = drawn.get('detections', ()), drawn.get('text', '')
        self.publisher.publish(image_msg(draw(frame, boxes, words), header))
        return True


def draw(rgb: np.ndarray, detections=(), text: str = '') -> np.ndarray:
    """Return a bgr8 copy of the RGB frame (HxWx3 uint8) with the boxes and the text drawn.

    ``detections``: vlm.grounding.Detection (box in the frame's pixels, label, score);
    ``text``: the description, wrapped over the top of the image on a dark band.
    """
    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    h, w = img.shape[:2]
    scale = max(0.4, min(w, h) / 900.0)
    thick = max(1, int(round(2 * scale)))
    labels = sorted({d.label for d in detections})
    for d in detections:
        colour = COLOURS[labels.index(d.label) % len(COLOURS)]
        x1, y1, x2, y2 = (int(round(v)) for v in d.box)
        cv2.rectangle(img, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, thick)
        tag = f'{d.label} {d.score:.2f}'
        (tw, th), base = cv2.getTextSize(tag, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = max(th + base, y1)
        cv2.rectangle(img, (x1, ty - th - base), (x1 + tw, ty), colour, -1)
        cv2.putText(img, tag, (x1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                    thick, cv2.LINE_AA)
    if text:
        (cw, ch), base = cv2.getTextSize('M', cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        lines = textwrap.wrap(' '.join(text.split()), max(8, w // max(1, cw)))[:4]
        band = len(lines) * (ch + base + 4) + 4
        img[:band] = (img[:band] * 0.35).astype(np.uint8)
        for i, line in enumerate(lines):
            y = 4 + (i + 1) * (ch + base + 4) - base
            cv2.putText(img, line, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                        thick, cv2.LINE_AA)
    return img


def image_msg(bgr: np.ndarray, header) -> Image:
    """Return a sensor_msgs/Image (bgr8) of an HxWx3 uint8 BGR array, stamped ``header``."""
    msg = Image()
    msg.header = header
    msg.height, msg.width = int(bgr.shape[0]), int(bgr.shape[1])
    msg.encoding = 'bgr8'
    msg.is_bigendian = 0
    msg.step = int(bgr.shape[1] * 3)
    msg.data = np.ascontiguousarray(bgr).tobytes()
    return msg
