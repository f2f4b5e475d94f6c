"""describe_node with the fault-injecting runtime wrapper (tests only).

    QVR_FAULT_PLAN=/tmp/plan.json python3 test/fault_node.py [describe_node path] --ros-args ...

The faults come from the plan file (fault_runtime.py), taken at the start of each request.
Usable as ``ros2 launch ... --launch-prefix 'python3 test/fault_node.py'``: a first argument
that is not ``--ros-args`` (the executable the launch file names) is dropped; when it names
describe_managed_node, the managed node runs. QVR_FAULT_LOAD_DELAY_S=SECONDS: the model load
starts that much later (a slow NPU load).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fault_runtime  # noqa: E402


def main() -> int:
    path = os.environ.get(fault_runtime.ENV_PLAN)
    if not path:
        print(f'fault_node: set {fault_runtime.ENV_PLAN} to a plan file path', file=sys.stderr)
        return 2
    args = sys.argv[1:]
    managed = False
    if args and args[0] != '--ros-args':
        managed = Path(args[0]).name == 'describe_managed_node'
        args = args[1:]
    sys.argv = [sys.argv[0]] + args
    fault_runtime.install(fault_runtime.FaultPlan(path=path),
                          float(os.environ.get('QVR_FAULT_LOAD_DELAY_S', '0')))
    if managed:
        from qwen_vl_ros.ros.managed import main as node_main
    else:
        from qwen_vl_ros.ros.node import main as node_main
    return node_main()


if __name__ == '__main__':
    sys.exit(main())
