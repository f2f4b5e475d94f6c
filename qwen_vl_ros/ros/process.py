"""The process around a qwen_vl node: start, spin, stop on a signal, shut down, exit.

    main(args, node_type)  ->  signals.install_stop_handlers, rclpy.init, the node, a
    MultiThreadedExecutor spun until a signal, a failed load or a hang exit  ->  shut_down
    (worker, executor, model, node, context; in that order)  ->  exit_process (os._exit)

Apart from the node classes (node.py, managed.py), which only say how to build themselves.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import traceback

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

from ..vlm.prompt import keep_torch_out
from . import signals
from .convert import one_line

NODE_NAME = 'qwen_vl'


def main(args, node_type) -> int:
    """Run a node of ``node_type`` (node.DescribeNode or managed.ManagedDescribeNode) to its end.

    ``args``: rclpy's command line (None = sys.argv). The entry points are node.main and
    managed.main.

    Exit codes: 0 after SIGINT / SIGTERM (any number of them), 1 when the model does not load
    (or on an unexpected error: its traceback is logged), 2 for bad parameters, 3 after a
    runtime hang (health.py). Every way out goes through shut_down and exit_process: the
    process never ends in interpreter teardown.
    """
    stop = signals.install_stop_handlers(NODE_NAME)   # before rclpy.init: it chains to them
    keep_torch_out()
    rclpy.init(args=args)
    made: dict = {}   # 'node', 'executor' as they are made
    code = 1
    try:
        code = _serve(made, stop, node_type)
    except (KeyboardInterrupt, ExternalShutdownException):
        code = 0
    except Exception:
        # SIGINT/SIGTERM shut the context down; a spin_once running at that moment may raise
        # RCLError ("context is not valid") instead of ExternalShutdownException: a normal stop.
        if rclpy.ok():
            print(f'[describe_node] unexpected error:\n{traceback.format_exc()}',
                  file=sys.stderr, flush=True)
            code = 1
        else:
            code = 0
    finally:
        left = shut_down(made.get('node'), made.get('executor'))
        signals.ignore_from_now_on()   # a signal from here on must not kill the exiting process
    exit_process(code, left)


def _serve(made: dict, stop, node_type) -> int:
    """Make the node and spin until a signal (``stop`` set), a failed load or a hang exit."""
    try:
        node = made['node'] = node_type()
    except (ValueError, ParameterException) as e:
        hint = (' (write floating-point values with a decimal point, e.g. 2.0)'
                if "expecting type 'DOUBLE'" in str(e) else '')
        print(f'[describe_node] bad parameters: {one_line(e)}{hint}', file=sys.stderr,
              flush=True)
        return 2
    executor = made['executor'] = MultiThreadedExecutor(num_threads=node.executor_threads)
    executor.add_node(node)
    node.start()
    while rclpy.ok() and node.exit_code is None and not stop.is_set():
        executor.spin_once(timeout_sec=0.25)
    return node.exit_code or 0


# How long shut-down waits for the inference worker, then for the executor's callbacks.
WORKER_JOIN_S = 1.0
EXECUTOR_JOIN_S = 1.0


def shut_down(node, executor) -> list:
    """Stop everything that runs threads, in a fixed order; return the threads still running.

    1. the inference worker: its generation is cancelled at the next token; a model run in
       progress cannot be interrupted, so it is waited for at most WORKER_JOIN_S;
    2. the executor's callback threads (service calls waiting for a job see the node closing);
    3. the model: onnxruntime sessions (and their thread pools) are released here, on this
       thread, once the worker has ended - not later by the garbage collector;
    4. the node's subscriptions, services and timers, then the rclpy context (the DDS
       participant and its threads, ROS logging).
    """
    if node is not None:
        node.close(timeout=WORKER_JOIN_S)
    if executor is not None:
        executor.shutdown(timeout_sec=EXECUTOR_JOIN_S)
    if node is not None:
        worker = node.worker
        if worker is not None and not worker.alive:
            worker.pipeline = None
            gc.collect()
        node.destroy_node()
    rclpy.try_shutdown()
    me = threading.current_thread()
    return sorted(t.name for t in threading.enumerate() if t is not me and t.is_alive())


def exit_process(code: int, left: list):
    """End the process now with ``code``, without interpreter teardown (never returns).

    After shut_down there is nothing left to clean up. What teardown would still do is run
    atexit handlers and destroy native objects (a session a still-running worker holds,
    Fast DDS's and onnxruntime's static state, C++ static destructors) in an order nobody
    controls while native threads may still be running: the likely source of a rare SIGSEGV
    (exit code -11) after "stopped". os._exit skips all of it; the output is flushed first.
    The last line names the code and any thread not waited for.
    """
    line = f'[describe_node] exit code {code}'
    if left:
        line += f' (threads not waited for: {", ".join(left)})'
    print(line, file=sys.stderr, flush=True)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
