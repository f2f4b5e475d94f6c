"""describe_node: the ROS 2 node `qwen_vl`, a thin translation between ROS and the core.

    per camera: image / image/compressed  ->  newest frame (video mode: + ring of the last
    frames)  ->  its timer (period_s) or ~/describe, ~/detect, ~/describe_stream  ->  one
    inference worker (one bounded queue)  ->  ~/description, ~/description/stamped, ...

Parameter ``cameras`` unset: one camera, every name as above. ``cameras: [front, rear]``:
front/image, ~/front/description, ... per camera; requests name the camera. All names are
relative (namespaces and remaps work). Image messages are stored as received and converted on
the worker thread, so an image callback never waits behind inference. Callbacks sit in separate
groups of a MultiThreadedExecutor: each image subscription and the timers in their own mutually
exclusive groups, services and the action in reentrant groups (each call waits for its own job).

This module only puts the parts together (docs/LAYOUT.md):
- housekeeping.Housekeeping: parameters, counters, /diagnostics, hang watchdog, logging;
- serving.Serving: the cameras, the interfaces, the timers and the one worker;
- process.main: signals, spinning, shut-down and exit.
"""

from __future__ import annotations

import sys

from rclpy.node import Node

from . import process
from .housekeeping import Housekeeping, HousekeepingViews
from .process import NODE_NAME
from .serving import Serving, executor_threads


class DescribeNode(HousekeepingViews, Node):
    """The plain qwen_vl node: one Serving, made and activated at once.

    It subscribes the cameras, answers ~/describe, ~/detect, ~/describe_stream and describes
    on timers.
    """

    def __init__(self):
        super().__init__(NODE_NAME)
        self.serving = None
        self.house = Housekeeping(self)   # ValueError: bad parameters
        self.serving = Serving(self, self.house, self.house.load)
        self.serving.activate()

    @property
    def worker(self):
        return self.serving.worker

    @property
    def _stream(self):
        """The ~/describe_stream action (stream_action.StreamAction)."""
        return self.serving.stream

    @property
    def executor_threads(self) -> int:
        return executor_threads(self.settings)

    # -- what Housekeeping asks ---------------------------------------------------------------
    def model_state(self) -> str:
        """Return the worker's state: loading | ready | failed | hung | stopped."""
        return self.worker.state

    state = property(model_state)

    def not_serving(self) -> str | None:
        """Why every request is refused now (None: serving): 'shutting down' after SIGINT.

        The one reason every entry point gives (~/describe, ~/detect, ~/describe_stream goals,
        the timer, /diagnostics).
        """
        return 'shutting down' if self.house.closing.is_set() else None

    def lifecycle_state(self) -> str:
        """'' (an unmanaged node has no lifecycle state)."""
        return ''

    def load_error(self) -> BaseException | None:
        return self.worker.load_error

    # -- life ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start loading the model on the worker thread."""
        s = self.settings
        self.get_logger().info(
            f'loading {s.model_dir} (backend {s.backend}); requests get "loading" until ready')
        self.serving.start()
        self.house.watchdog.start()

    def close(self, timeout: float = 1.0) -> bool:
        """Stop the worker (cancels the running generation); True when its thread has ended."""
        return self.house.close(self.worker, timeout)


def main(args=None) -> int:
    """Entry point of `describe_node` (ros2 run qwen_vl_ros describe_node --ros-args ...).

    Exit codes: 0 after SIGINT / SIGTERM (any number of them), 1 when the model does not load
    (or on an unexpected error: its traceback is logged), 2 for bad parameters, 3 after a
    runtime hang (health.py); see process.main.
    """
    return process.main(args, DescribeNode)


if __name__ == '__main__':
    sys.exit(main())
