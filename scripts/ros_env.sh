# shellcheck shell=bash
# Environment for running ROS 2 code from the project venv. Source it, don't execute it:
#   . scripts/ros_env.sh [VENV]        (VENV defaults to $VENV, else <repo>/.venv)
# Keeps all DDS traffic on loopback (shared/docs/PLATFORM.md, "Network") with a per-run domain id,
# points the ament index at the venv (it is the ROS prefix: share/, lib/) and keeps Hugging Face
# offline. The one place where this environment is defined: make targets and scripts source it.

_qvr_repo="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
VENV="${1:-${VENV:-$_qvr_repo/.venv}}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
export VENV
[ -x "$VENV/bin/python3" ] || echo "ros_env.sh: warning: no venv at $VENV (run make venv)" >&2

# DDS: loopback only (Jazzy+ / Kilted name, and the older Humble name), own domain per run.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_LOCALHOST_ONLY=1
unset ROS_STATIC_PEERS
# 1..100 from this shell's pid (ids above 101 can collide with Linux ephemeral ports);
# QVR_ROS_DOMAIN_ID pins it (e.g. to debug by hand).
export ROS_DOMAIN_ID="${QVR_ROS_DOMAIN_ID:-$(( $$ % 100 + 1 ))}"
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp

# The venv is the ROS prefix: ament_index_python, get_package_share_directory, rosidl typesupport.
export AMENT_PREFIX_PATH="$VENV"
# The venv's commands (describe_node, qwen-vl-*, and ros2 once installed) as the README writes them.
case ":$PATH:" in *":$VENV/bin:"*) ;; *) export PATH="$VENV/bin:$PATH" ;; esac
# ROS logs stay out of $HOME.
export ROS_LOG_DIR="${ROS_LOG_DIR:-$_qvr_repo/build/ros_log}"

# The ros-wheels-bootstrapper (.pth in the venv) re-executes Python once with LD_LIBRARY_PATH set
# to the venv's ROS libraries, unless its guard variable says it already did. A guard inherited
# from another venv's Python would leave this venv's libraries off the path: drop it.
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE

# No model or tokenizer downloads: tests build their own tiny models.
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_HUB_DISABLE_TELEMETRY=1

unset _qvr_repo
