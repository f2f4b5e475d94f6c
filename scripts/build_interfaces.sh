#!/usr/bin/env bash
# Build the qwen_vl_interfaces package (rosidl: msg + srv + action) with plain cmake and install it into a
# venv that holds the ROS 2 wheels, working around the pitfalls listed in
# shared/docs/PLATFORM.md:
#   1. the message wheels' *rosidl_generator_pyExport.cmake files carry the wheel builder's
#      Python and numpy include dirs (/opt/python/cp3XX-cp3XX/...): rewrite them to this venv's;
#   2. AMENT_PREFIX_PATH=$VENV at configure time;
#   3. CMAKE_PREFIX_PATH / CMAKE_INSTALL_PREFIX = $VENV, Python3_EXECUTABLE = the venv's python,
#      BUILD_TESTING=OFF.
# Usage: scripts/build_interfaces.sh [VENV] [BUILD_DIR]
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$repo/.venv}"
build="${2:-$repo/build/qwen_vl_interfaces}"
case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac
case "$build" in /*) ;; *) build="$PWD/$build" ;; esac
py="$venv/bin/python3"
src="$repo/qwen_vl_interfaces"

[ -x "$py" ] || { echo "build_interfaces: no venv python at $py (run make venv)" >&2; exit 1; }

# shellcheck source=ros_env.sh
. "$repo/scripts/ros_env.sh" "$venv"
export PATH="$venv/bin:$PATH"   # ament/rosidl tools and a pip-installed cmake, if any

# (1) Rewrite the baked include dirs. Idempotent: a second run finds nothing to replace.
"$py" - "$venv" <<'PY'
import glob
import os
import re
import sys
import sysconfig

import numpy

venv = sys.argv[1]
py_inc = sysconfig.get_paths()['include']
np_inc = numpy.get_include()
py_pat = re.compile(r'/opt/python/cp3\d+-cp3\d+/include/python3\.\d+t?')
np_pat = re.compile(r'/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+t?/site-packages/numpy/(?:_core|core)/include')
changed = 0
files = glob.glob(os.path.join(venv, 'share', '*', 'cmake', '*rosidl_generator_pyExport.cmake'))
for path in files:
    with open(path) as f:
        text = f.read()
    new = np_pat.sub(np_inc, text)   # numpy first: its pattern is the longer one
    new = py_pat.sub(py_inc, new)
    if '/opt/python/' in new:
        print(f'build_interfaces: warning: {path} still names /opt/python/', file=sys.stderr)
    if new != text:
        with open(path, 'w') as f:
            f.write(new)
        changed += 1
print(f'build_interfaces: include dirs -> {py_inc}, {np_inc} '
      f'({changed} of {len(files)} export files rewritten)')
PY

# vision_msgs (for srv/Detect.srv): robots get it from apt (rosdep key vision_msgs); PyPI does
# not have it, so it is built into the venv from the team's unmodified upstream copy when that
# exists (VISION_MSGS_SRC, or ../shared/ros_vendor beside the repository), once. Without it
# qwen_vl_interfaces builds without Detect and the node says that detections are off.
vision_src="${VISION_MSGS_SRC:-$repo/../shared/ros_vendor/vision_msgs-4.1.1/vision_msgs}"
if "$py" -c 'import vision_msgs.msg' 2>/dev/null; then
  echo "build_interfaces: vision_msgs already in $venv"
elif [ -f "$vision_src/package.xml" ]; then
  echo "build_interfaces: building vision_msgs from $vision_src"
  vbuild="$(dirname "$build")/vision_msgs"
  rm -rf "$vbuild"
  cmake -S "$vision_src" -B "$vbuild" \
    -DCMAKE_PREFIX_PATH="$venv" -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$py" \
    -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release
  cmake --build "$vbuild" -j "$(nproc 2>/dev/null || echo 2)"
  cmake --install "$vbuild"
  "$py" -c 'from vision_msgs.msg import Detection2DArray; print("build_interfaces: vision_msgs ok")'
else
  echo "build_interfaces: no vision_msgs (not installed, no source at $vision_src):" \
       "qwen_vl_interfaces is built without srv/Detect.srv"
fi

# (2, 3) Configure from scratch (a stale cache may name another venv), build, install.
rm -rf "$build"
cmake -S "$src" -B "$build" \
  -DCMAKE_PREFIX_PATH="$venv" \
  -DCMAKE_INSTALL_PREFIX="$venv" \
  -DPython3_EXECUTABLE="$py" \
  -DBUILD_TESTING=OFF \
  -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)"
cmake --install "$build"

# Smoke test: the generated Python types import from the venv.
"$py" -c 'from qwen_vl_interfaces.msg import Description; from qwen_vl_interfaces.srv import Describe; from qwen_vl_interfaces.action import Describe as DescribeAction; print("build_interfaces: ok:", Description.__name__, Describe.__name__, DescribeAction.__name__)'
