#!/usr/bin/env bash
# Check README "Install on a robot" step 3 as a robot user runs it: a clone of this repository's
# HEAD in a colcon workspace, the README's colcon command, then the installed node. Not part of
# `make test` (about a minute: a scratch venv with the ROS wheels, colcon and the README's pip
# dependencies, never torch). There is no /opt/ros here: the venv is the underlay, with the
# rosidl include-dir rewrite of scripts/build_interfaces.sh (shared/docs/PLATFORM.md pitfall 1).
# Usage: scripts/check_colcon.sh [SCRATCH_DIR]   (default /tmp/qvr_colcon; venv/ and ws/ inside)
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
scratch="${1:-/tmp/qvr_colcon}"
venv="$scratch/venv" ws="$scratch/ws"
pkgs=(src/qwen_vl_ros src/qwen_vl_ros/qwen_vl_interfaces)
fail() { echo "check_colcon: FAIL: $*" >&2; exit 1; }

[ -x "$venv/bin/python3" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check \
  $(grep -E '^(ros-|catkin-pkg)' "$repo/scripts/requirements.txt" | sed 's/[<>=].*//') \
  colcon-common-extensions 'setuptools>=68,<80' \
  numpy ml_dtypes opencv-python-headless transformers jinja2 onnxruntime pyyaml
# Pitfall 1: the rewrite is the Python here-document of build_interfaces.sh.
sed -n "/<<'PY'\$/,/^PY\$/p" "$repo/scripts/build_interfaces.sh" | sed '1d;$d' \
  | "$venv/bin/python3" - "$venv"

rm -rf "$ws" && mkdir -p "$ws/src" && git clone -q "$repo" "$ws/src/qwen_vl_ros" && cd "$ws"
export ROS_LOG_DIR="$ws/log/ros"
# shellcheck source=ros_env.sh
. "$repo/scripts/ros_env.sh" "$venv"   # loopback DDS, own domain id, AMENT_PREFIX_PATH=venv
export PATH="$venv/bin:$PATH" CMAKE_PREFIX_PATH="$venv"

[ "$(colcon list -n)" = qwen_vl_ros ] || fail "plain colcon list: $(colcon list -n | xargs)"
[ "$(colcon list -n -t --base-paths "${pkgs[@]}" | xargs)" = "qwen_vl_interfaces qwen_vl_ros" ] \
  || fail "colcon list --base-paths: not both packages in dependency order"
colcon build --base-paths "${pkgs[@]}" > "$ws/colcon_build.log" 2>&1 \
  || { tail -40 "$ws/colcon_build.log"; fail "colcon build"; }

for f in qwen_vl_ros/lib/qwen_vl_ros/describe_node \
         qwen_vl_ros/share/qwen_vl_ros/launch/describe.launch.py \
         qwen_vl_ros/share/qwen_vl_ros/config/describe.yaml \
         qwen_vl_ros/share/qwen_vl_ros/package.xml \
         qwen_vl_ros/share/ament_index/resource_index/packages/qwen_vl_ros \
         qwen_vl_interfaces/share/ament_index/resource_index/packages/qwen_vl_interfaces; do
  [ -e "install/$f" ] || fail "missing install/$f"
done

set +u; . install/setup.bash; set -u
python3 -c 'from qwen_vl_interfaces.srv import Describe; import qwen_vl_interfaces as m, sys
sys.exit(0 if m.__file__.startswith(sys.argv[1]) else "interfaces not from install/: " + m.__file__)' \
  "$ws/install/"
rc=0; out="$(timeout 60 install/qwen_vl_ros/lib/qwen_vl_ros/describe_node \
  --ros-args -p model_dir:=/nonexistent 2>&1)" || rc=$?
[ "$rc" = 1 ] && grep -q "cannot load the model from '/nonexistent'" <<<"$out" \
  || { echo "$out"; fail "describe_node exited $rc, expected 1 with the model error"; }
echo "check_colcon: ok: both packages built, installed and importable; describe_node runs ($ws)"
