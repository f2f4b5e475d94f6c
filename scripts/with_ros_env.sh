#!/usr/bin/env bash
# Run a command in the project venv with the loopback ROS environment of scripts/ros_env.sh:
#   scripts/with_ros_env.sh python -m pytest test -q
#   scripts/with_ros_env.sh describe_node --ros-args -p model_dir:=/path
# VENV (default <repo>/.venv) selects the venv; its bin/ goes first on PATH.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
# An explicit argument: a bare `. ros_env.sh` would see this script's own arguments as $1.
# shellcheck source=ros_env.sh
. "$repo/scripts/ros_env.sh" "${VENV:-$repo/.venv}"
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
exec "$@"
