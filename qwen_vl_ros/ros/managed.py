"""describe_managed_node: the qwen_vl node as a ROS 2 managed (lifecycle) node.

    unconfigured --configure--> inactive --activate--> active --deactivate--> inactive
    inactive --cleanup--> unconfigured;   any state --shutdown--> finalized (the process exits 0)

- configure: load the model (progress logged), then make the publishers, ~/describe, ~/detect
  and ~/describe_stream (they answer "not active" until activate); a failure leaves the node
  unconfigured, logs the reason and reports it on /diagnostics (model: failed, ERROR);
  configure may be tried again, e.g. after the model directory is fixed;
- activate: the image subscriptions and the timers (Serving.activate): the node serves
  exactly as the unmanaged one;
- deactivate: the subscription and the timer are destroyed and the inference worker stopped
  (a running generation is cancelled: the NPU is free for other work);
- cleanup: the model is released (runtime sessions, memory-mapped embedding table), the
  services and publishers are destroyed.

Whenever the node is not active, every entry point that exists (~/describe, ~/detect,
~/describe_stream goals, a request or goal cut short by deactivate, the timer, /diagnostics)
gives one reason, naming the state and what to do (``not_active_reason``), e.g.
"not active (state inactive): activate it with `ros2 lifecycle set /qwen_vl activate`".
After SIGINT / SIGTERM it is "shutting down", as in the unmanaged node.

Composed, not inherited: the node has the same Housekeeping as describe_node for its whole
life, and a serving.Serving from configure to cleanup (None while unconfigured).

The state machine is rclpy's LifecycleNode (Humble and later), driven by `ros2 lifecycle set`
or launch_ros' lifecycle events (launch/describe_managed.launch.py). A second executable rather
than a `managed` parameter, because the node's class (Node or LifecycleNode) must be chosen
before the node exists, and parameters (from -p and from params files keyed by node name or
wildcards) are only resolved by a node once it is constructed.
"""

from __future__ import annotations

import gc
import sys
import threading
import time

from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

from . import process
from .convert import one_line
from .housekeeping import Housekeeping, HousekeepingViews
from .process import NODE_NAME
from .serving import Serving, executor_threads

# Seconds between the shutdown transition's answer and the process's exit.
EXIT_DELAY_S = 0.5


def not_active_reason(state: str, node: str) -> str:
    """Return the answer to every request while the lifecycle node is in ``state``.

    ``state``: a primary state (unconfigured, inactive, finalized) or a transition state
    (configuring, activating, deactivating, cleaningup, shuttingdown, errorprocessing), as
    `ros2 lifecycle get` names them (lifecycle_msgs/msg/State); ``node``: its full name.
    """
    def cli(*transitions):
        return ', then '.join(f'`ros2 lifecycle set {node} {t}`' for t in transitions)
    what = {
        'unconfigured': f'no model loaded; configure and activate it with '
                        f'{cli("configure", "activate")}',
        'configuring': f'the model is loading; activate it with {cli("activate")} once '
                       'configured',
        'inactive': f'activate it with {cli("activate")}',
        'activating': 'it serves as soon as the activate transition has finished',
        'deactivating': f'it is being deactivated; activate it again with {cli("activate")}',
        'cleaningup': f'the model is being released; configure and activate it again with '
                      f'{cli("configure", "activate")}',
        'shuttingdown': 'the lifecycle shutdown transition is ending the node',
        'finalized': 'the lifecycle shutdown transition ended the node; it exits',
        'errorprocessing': 'an error is being handled; the node goes back to unconfigured',
    }.get(state, f'see `ros2 lifecycle get {node}`')
    return f'not active (state {state}): {what}'


class ManagedDescribeNode(HousekeepingViews, LifecycleNode):
    """A qwen_vl node whose Serving exists from configure to cleanup, serving only while active."""

    def __init__(self):
        super().__init__(NODE_NAME)
        self.serving: Serving | None = None
        self.house = Housekeeping(self)     # ValueError: bad parameters
        self._lifecycle = 'unconfigured'    # lifecycle_msgs state label, transitions included
        self._pipeline = None
        self._configure_error: BaseException | None = None   # the last configure's failure

    @property
    def worker(self):
        """The inference worker (None while unconfigured)."""
        return self.serving.worker if self.serving is not None else None

    @property
    def _stream(self):
        return self.serving.stream if self.serving is not None else None

    @property
    def executor_threads(self) -> int:
        return executor_threads(self.settings)

    # -- what Housekeeping asks ---------------------------------------------------------------
    def model_state(self) -> str:
        """Return the model's state for /diagnostics.

        The worker's when active; else loading (while configuring), failed (unconfigured after
        a failed configure) or the lifecycle state.
        """
        if self._lifecycle == 'active' and self.serving is not None:
            return self.serving.worker.state
        if self._lifecycle == 'configuring':
            return 'loading'
        if self._lifecycle == 'unconfigured' and self._configure_error is not None:
            return 'failed'
        return self._lifecycle

    state = property(model_state)

    def not_serving(self) -> str | None:
        if self.house.closing.is_set():
            return 'shutting down'
        if self._lifecycle == 'active':
            return None
        return not_active_reason(self._lifecycle, self.house.full_name)

    def lifecycle_state(self) -> str:
        return self._lifecycle

    def load_error(self) -> BaseException | None:
        return self._configure_error

    def start(self) -> None:
        self.house.watchdog.start()
        self.get_logger().info(
            f'unconfigured: managed node, waiting for configure (ros2 lifecycle set '
            f'{self.house.full_name} configure)')

    def close(self, timeout: float = 1.0) -> bool:
        """Stop the worker (cancels the running generation); True when its thread has ended."""
        return self.house.close(self.worker, timeout)

    # -- transitions (called by rclpy's state machine on an executor thread) ----------------
    def on_configure(self, state) -> TransitionCallbackReturn:
        s = self.settings
        self._lifecycle = 'configuring'
        self._configure_error = None
        self.get_logger().info(f'configure: loading {s.model_dir} (backend {s.backend})')
        t0 = time.monotonic()
        try:
            self._pipeline = self._load_interruptible()
        except Exception as e:  # noqa: BLE001 - any failure to load is a failed transition
            self._configure_error = e
            self._lifecycle = 'unconfigured'
            self.get_logger().error(
                f'configure failed, still unconfigured: cannot load the model from '
                f'{s.model_dir!r}: {type(e).__name__}: {one_line(e)}')
            return TransitionCallbackReturn.FAILURE
        load_s = time.monotonic() - t0
        # publishers, services and action; until activate they answer "not active (state
        # inactive)"; each activate's worker takes the model loaded here (held by this node
        # only: cleanup drops it)
        self.serving = Serving(self, self.house, lambda: self._pipeline, load_seconds=load_s)
        self._lifecycle = 'inactive'
        self.get_logger().info(f'configured: model loaded in {load_s:.1f} s; inactive '
                               f'until activate')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        self._lifecycle = 'activating'
        self.serving.activate()      # image subscriptions and timers
        self.serving.start()         # "ready: ..." once the worker holds the loaded model
        self._lifecycle = 'active'
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._lifecycle = 'deactivating'
        self.serving.deactivate()
        self._lifecycle = 'inactive'
        self.get_logger().info('deactivated: not subscribed, no timer; requests get "not '
                               'active (state inactive)"')
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._lifecycle = 'cleaningup'
        self._unload()
        self.get_logger().info('cleaned up: model released, unconfigured')
        return super().on_cleanup(state)

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._lifecycle = 'shuttingdown'
        self._unload()
        self._lifecycle = 'finalized'
        self.get_logger().info('shut down (finalized): exiting')
        # exit after the transition's answer has gone out
        threading.Timer(EXIT_DELAY_S, self._finish).start()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state) -> TransitionCallbackReturn:
        self._lifecycle = 'errorprocessing'
        self._unload()
        return TransitionCallbackReturn.SUCCESS    # back to unconfigured

    # -- helpers ------------------------------------------------------------------------------
    def _load_interruptible(self):
        """Run Housekeeping.load on a daemon thread; give up (RuntimeError) on shut-down.

        A model load cannot be interrupted: waiting on a daemon thread lets SIGINT end the
        process during a long load instead of waiting for it.
        """
        result: dict = {}

        def load():
            try:
                result['pipeline'] = self.house.load()
            except BaseException as e:  # noqa: BLE001 - reported by the waiting thread
                result['error'] = e

        thread = threading.Thread(target=load, name='load', daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.1)
            if not self.context.ok():
                raise RuntimeError('shutting down during configure')
        if 'error' in result:
            raise result['error']
        return result['pipeline']

    def _unload(self) -> None:
        """Destroy the Serving (subscriptions, timers, worker, services, ...), drop the model."""
        if self.serving is not None:
            self.serving.destroy()
            self.serving = None
        self._pipeline = None
        gc.collect()
        self._lifecycle = 'unconfigured'

    def _finish(self) -> None:
        self.house.exit_code = 0


def main(args=None) -> int:
    """Entry point of `describe_managed_node` (same parameters and exit codes as describe_node).

    Starts unconfigured; 0 after the shutdown transition, SIGINT or SIGTERM.
    """
    return process.main(args, ManagedDescribeNode)


if __name__ == '__main__':
    sys.exit(main())
