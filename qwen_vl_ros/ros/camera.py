"""One camera of the node: its topics, its frames, and what a request about it is about.

    <name>/image (or <name>/image/compressed)  ->  FrameStore (newest frame, video ring)
    ~/<name>/description, ~/<name>/description/stamped, ~/<name>/detections,
    ~/<name>/annotated_image  <-  the jobs about its frames

The unnamed camera ('' = parameter ``cameras`` unset) has exactly the names of a node without
cameras: image, ~/description, ... ``resolve`` is the one answer to "what is this request
about" for ~/describe, ~/detect and ~/describe_stream: the camera it names, the request's own
image or the camera's newest frame (or video), and whether that frame is too old.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from qwen_vl_interfaces.msg import Description
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from . import annotate
from . import detect as detect_io
from .frames import FrameStore, Source
from .inflow import InflowWatch, create_image_subscription


@dataclass
class About:
    """What one request or tick is about: a camera and the frames to describe (oldest first)."""

    camera: Camera
    sources: list

    @property
    def source(self) -> Source:
        """The newest frame: its header is published, its age decides staleness."""
        return self.sources[-1]


def has_image(image) -> bool:
    """Tell whether a request carries its own image (an empty one = use the camera's)."""
    return bool(image.width or image.height or len(image.data) or image.encoding)


def max_gap_s(s) -> float:
    """Longest gap between two frames of one video; a longer one starts the ring again.

    A frame older than max_image_age_s is refused anyway, so a gap longer than that plus the
    spacing means the stream was interrupted (0 = no limit, like max_image_age_s).
    """
    return s.video_interval_s + s.max_image_age_s if s.max_image_age_s > 0 else 0.0


class Camera:
    """A camera's subscription, frames, inflow watch and output publishers."""

    def __init__(self, node, name: str, house):
        self.name = name
        self._node = node
        self._house = house
        s = self.settings
        self.compressed = s.image_transport == 'compressed'
        topic = self.topic('image/compressed' if self.compressed else 'image')
        # the full name (namespace, remaps) before the subscription exists: a managed node
        # names it in its statuses while not active; older rclpy has no resolve_topic_name
        resolve = getattr(node, 'resolve_topic_name', None)
        self.image_topic = resolve(topic) if resolve else topic
        self.inflow = InflowWatch(self.image_topic, s.image_reliability, s.image_transport)
        self.frames = self._new_frames()
        self.subscription = None
        self.lost_events = False
        self.text_pub = node.create_publisher(String, self.topic('~/description'), 10)
        self.stamped_pub = node.create_publisher(Description,
                                                 self.topic('~/description/stamped'), 10)
        self.detections_pub = (node.create_publisher(detect_io.Detection2DArray,
                                                     self.topic('~/detections'), 10)
                               if detect_io.AVAILABLE else None)
        self.annotator = annotate.Annotator(
            node.create_publisher(Image, self.topic('~/annotated_image'), 1))
        self.publishers = [self.text_pub, self.stamped_pub, self.annotator.publisher] + (
            [self.detections_pub] if self.detections_pub is not None else [])

    @property
    def settings(self):
        """The parameters this camera works with now (its own over the node-wide ones)."""
        return self._house.settings.camera(self.name)

    def topic(self, name: str) -> str:
        """``name`` for this camera: image -> front/image, ~/description -> ~/front/description."""
        if not self.name:
            return name
        if name.startswith('~/'):
            return f'~/{self.name}/{name[2:]}'
        return f'{self.name}/{name}'

    @property
    def label(self) -> str:
        """How logs name the camera: its name, or its topic when unnamed."""
        return f'camera {self.name}' if self.name else self.image_topic

    def _new_frames(self) -> FrameStore:
        s = self.settings
        return FrameStore(self.compressed, s.video_frames, s.video_interval_s, max_gap_s(s))

    # -- the subscription ---------------------------------------------------------------------
    def subscribe(self) -> None:
        """Subscribe the image topic (keep last 1, the camera's reliability)."""
        s = self.settings
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=1, durability=DurabilityPolicy.VOLATILE,
            reliability=(ReliabilityPolicy.RELIABLE if s.image_reliability == 'reliable'
                         else ReliabilityPolicy.BEST_EFFORT))
        msg_type = CompressedImage if self.compressed else Image
        topic = self.topic('image/compressed' if self.compressed else 'image')
        self.subscription, self.lost_events = create_image_subscription(
            self._node, msg_type, topic, self.on_image, qos, MutuallyExclusiveCallbackGroup(),
            self.on_lost, self.on_incompatible)
        self.image_topic = getattr(self.subscription, 'topic_name', topic)
        self.inflow.topic = self.image_topic
        if not self.lost_events:
            self._node.get_logger().info(
                f'the middleware does not report lost messages on {self.image_topic}: '
                'frames lost there are noticed only when nothing arrives for a while')

    def unsubscribe(self) -> None:
        """Destroy the subscription and forget the frames (a managed node's deactivate)."""
        if self.subscription is not None:
            self._node.destroy_subscription(self.subscription)
            self.subscription = None
        self.frames = self._new_frames()

    def configure_video(self) -> None:
        """Follow the video parameters (changeable at run time)."""
        s = self.settings
        self.frames.configure_video(s.video_frames, s.video_interval_s, max_gap_s(s))

    def on_image(self, msg) -> None:
        self.frames.put(msg, self._node.get_clock().now())
        self._house.counters.inc('frames_received', camera=self.name)
        self.inflow.on_frame(msg, time.monotonic())

    def on_lost(self, info) -> None:
        """Count and warn about a MESSAGE_LOST event on the image subscription."""
        text = self.inflow.on_lost(info.total_count_change)
        if text:
            self._house.counters.add('frames_lost', int(info.total_count_change), text,
                                     camera=self.name)
            self._house.warn_throttled((self.name, 'inflow', 'lost'), text)

    def on_incompatible(self, info) -> None:
        text = InflowWatch.on_incompatible(self.image_topic, self.settings.image_reliability)
        self._house.counters.inc('qos_incompatible', text, camera=self.name)
        self._house.warn_throttled((self.name, 'inflow', 'incompatible'), text)

    def check_inflow(self) -> None:
        """Warn when publishers are there but no frames come (not every rmw reports losses)."""
        if self.subscription is None:
            return      # a managed node that is not active does not subscribe
        try:
            infos = self._node.get_publishers_info_by_topic(self.image_topic)
        except Exception:  # noqa: BLE001 - a graph query during shut-down
            return
        reliable = ReliabilityPolicy.RELIABLE
        text = self.inflow.check(time.monotonic(), [
            'reliable' if i.qos_profile.reliability == reliable else 'best_effort'
            for i in infos])
        if text:
            self._house.warn_throttled((self.name, 'inflow', 'quiet'), text)

    # -- frames -------------------------------------------------------------------------------
    def frame_age(self, source: Source) -> float | None:
        """Seconds since the frame's stamp (since arrival when the stamp is zero); None = n/a."""
        stamp = source.header.stamp
        now = self._node.get_clock().now()
        if stamp.sec == 0 and stamp.nanosec == 0:
            if source.received is None:
                return None
            then = source.received
        else:
            then = Time.from_msg(stamp, clock_type=now.clock_type)
        return max(0.0, (now - then).nanoseconds * 1e-9)

    def newest_age(self) -> float | None:
        newest = self.frames.newest()
        return self.frame_age(newest) if newest is not None else None

    def stale_reason(self, source: Source) -> str | None:
        """Return why a topic frame is older than max_image_age_s, else None.

        A request's own image is never stale: its caller chose it (a stored snapshot, several
        questions about one picture), so it is described whatever its stamp.
        """
        limit = self.settings.max_image_age_s
        age = self.frame_age(source) if limit > 0 and source.from_topic else None
        if age is None or age <= limit:
            return None
        st = source.header.stamp
        return (f'stale image: the frame is {age:.2f} s old (stamp {st.sec}.{st.nanosec:09d}), '
                f'max_image_age_s is {limit:g}')

    def filling(self, kept: int, wanted: int) -> str:
        interval = self.settings.video_interval_s
        return (f'no video yet: {kept} of video_frames = {wanted} frames kept from '
                f'{self.image_topic} (at least video_interval_s = {interval:g} s apart); '
                f'about {(wanted - kept) * interval:g} s to go if frames keep coming')

    def resolve(self, image, video: bool = True) -> tuple:
        """(About, None) of a request's ``image`` or this camera's frames, or (None, why).

        A request image is always described as an image; else the newest frame, or in video
        mode (and ``video``) the frames kept. The newest frame's age counts (counted when
        refused: stale_refused).
        """
        if has_image(image):
            sources = [Source(image, compressed=False, from_topic=False)]
        else:
            video_frames, kept = self.frames.video()
            if not video:
                video_frames = 0
            newest = self.frames.newest()
            if newest is None:
                return None, (f'no image: nothing received on {self.image_topic} yet, and '
                              'the request has no image' + self.inflow.hint())
            if len(kept) < video_frames:
                return None, self.filling(len(kept), video_frames)
            sources = kept if video_frames else [newest]
        stale = self.stale_reason(sources[-1])
        if stale:
            self._house.counters.inc('stale_refused', stale, camera=self.name)
            return None, stale
        return About(self, sources), None


class Cameras:
    """The node's cameras in the order of the parameter ``cameras`` (the first is the default)."""

    def __init__(self, cameras: list):
        self.all = list(cameras)
        self._by_name = {c.name: c for c in self.all}

    def __iter__(self):
        return iter(self.all)

    def pick(self, name: str) -> tuple:
        """(camera, None) for a request's ``camera`` field ('' = the first), or (None, why)."""
        name = name.strip()
        if not name:
            return self.all[0], None
        camera = self._by_name.get(name)
        if camera is None:
            known = ', '.join(c.name for c in self.all if c.name)
            return None, (f'unknown camera {name!r}: the cameras are {known}' if known else
                          f'unknown camera {name!r}: this node has one camera (parameter '
                          'cameras is unset); leave camera empty')
        return camera, None

    def resolve(self, request, video: bool = True) -> tuple:
        """(About, None) of a ~/describe, ~/detect request or goal, or (None, why not).

        The one resolution every interface shares: the camera it names, then its image or
        the camera's frames (``video``: the video in video mode), then staleness.
        """
        camera, why = self.pick(request.camera)
        if why:
            return None, why
        return camera.resolve(request.image, video)
