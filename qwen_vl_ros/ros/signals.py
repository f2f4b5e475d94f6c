"""SIGINT / SIGTERM ask the node to stop, however many arrive and whenever they arrive.

Python's own SIGINT handler raises KeyboardInterrupt wherever the main thread happens to be;
a second Ctrl-C (or a supervisor's SIGTERM after its SIGINT) during shut-down then escapes
main() half-way through its clean-up and the process dies of the signal (exit code -2). With
these handlers a signal only sets an event and logs. They are installed before rclpy.init:
rclpy's own handler shuts the context down and then calls the handler it found, i.e. this one,
and it restores this one when the last context is shut down, so a signal after rclpy.shutdown
is also just logged. When main() returns, Python's finalization would put the default
handlers back (a signal then kills the exiting process with -2 / -15): ``ignore_from_now_on``
sets SIG_IGN, which finalization leaves alone.
"""

from __future__ import annotations

import os
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def install_stop_handlers(name: str) -> threading.Event:
    """Make SIGINT and SIGTERM set the returned event (main thread only; ``name`` for the log).

    The first signal is not logged (the node logs its "stopped" line); later ones say that the
    node is already stopping.
    """
    requested = threading.Event()

    def handler(signum, frame):
        if requested.is_set():
            # os.write, not print: the handler may interrupt a print of the main thread, and
            # a buffered stream refuses a reentrant write
            line = f'[INFO] [{name}]: {signal.Signals(signum).name} again: already stopping\n'
            os.write(2, line.encode())
        requested.set()

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    return requested


def ignore_from_now_on() -> None:
    """Ignore SIGINT and SIGTERM for the rest of the process (its exit is under way)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
