"""Hang detection: a runtime call that never returns must not leave the node silently stuck.

A model run on the NPU cannot be interrupted from Python. When the running job shows no sign of
life (InferenceWorker.stalled_for: the job start and each decode step count) for
``hang_timeout_s`` seconds, the watchdog declares the runtime hung: every waiting request is
answered with the reason at once, new ones are refused with it, and /diagnostics reports ERROR.
``hang_exit_s`` seconds later it asks the process to exit with EXIT_HUNG, so that the supervisor
(``respawn:=true`` in the launch file, systemd, ...) starts a fresh one; 0 = stay up, refusing.
If the stuck call returns before that, the worker is ready again and the exit is called off.

The watchdog is a plain thread on the monotonic clock: it works when the executor is busy and
with use_sim_time (a stopped /clock must not hide a hang). Nothing here imports rclpy.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

EXIT_HUNG = 3   # process exit code after a hang (1: the model did not load, 2: bad parameters)
POLL_S = 0.1


class HangWatchdog:
    """Watches an InferenceWorker; reports a hang, a recovery, and when to exit.

    ``limits()`` returns (hang_timeout_s, hang_exit_s) and is asked on every poll, so the
    parameters can change at run time (hang_timeout_s 0 = no detection). ``on_hung(reason)``,
    ``on_recovered(seconds)`` and ``on_exit(reason)`` run on the watchdog thread.
    """

    def __init__(self, worker, limits: Callable[[], tuple],
                 on_hung: Callable[[str], None], on_recovered: Callable[[float], None],
                 on_exit: Callable[[str], None], poll_s: float = POLL_S):
        self._worker = worker
        self._limits = limits
        self._on_hung = on_hung
        self._on_recovered = on_recovered
        self._on_exit = on_exit
        self._poll_s = poll_s
        self._stop = threading.Event()
        self.hung_since: float | None = None    # time.monotonic() of the declaration
        self.reason = ''
        self._thread = threading.Thread(target=self._main, name='hang-watchdog', daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def watch(self, worker) -> None:
        """Watch ``worker`` from now on (a managed node makes a new one on each activate)."""
        self._worker = worker
        self.hung_since, self.reason = None, ''

    def exit_in(self) -> float | None:
        """Seconds until the exit (None: not hung, or hang_exit_s is 0)."""
        since = self.hung_since
        exit_s = self._limits()[1]
        if since is None or exit_s <= 0:
            return None
        return max(0.0, since + exit_s - time.monotonic())

    def _main(self) -> None:
        while not self._stop.wait(self._poll_s):
            if self._worker is None:      # a managed node before its first configure
                continue
            timeout_s, exit_s = self._limits()
            if self.hung_since is None:
                stalled = self._worker.stalled_for()
                if timeout_s > 0 and stalled > timeout_s:
                    self._declare(stalled, timeout_s, exit_s)
                continue
            if self._worker.state != 'hung':       # the call returned after all
                took = time.monotonic() - self.hung_since
                self.hung_since, self.reason = None, ''
                self._on_recovered(took)
                continue
            if exit_s > 0 and time.monotonic() - self.hung_since >= exit_s:
                self._on_exit(self.reason)
                return

    def _declare(self, stalled: float, timeout_s: float, exit_s: float) -> None:
        then = (f'the node exits in {exit_s:g} s (hang_exit_s) so that its supervisor restarts '
                'it' if exit_s > 0 else 'hang_exit_s is 0: the node stays up, refusing requests')
        reason = (f'the inference runtime has not returned for {stalled:.1f} s (hang_timeout_s '
                  f'= {timeout_s:g}): the NPU or its driver is stuck; {then}')
        if self._worker.declare_hung(reason):
            self.reason = reason
            self.hung_since = time.monotonic()
            self._on_hung(reason)
