#!/usr/bin/env bash
# Run a command with one of AXERA's pyaxengine releases over the stub NPU libraries:
#
#   scripts/with_npu_stub.sh ../shared/pyaxengine/pyaxengine-0.1.3.rc3.tar.gz -- \
#       qwen-vl-describe --backend axengine --model-dir DIR --image a.jpg
#
# Builds libax_sys.so / libax_engine.so from test/npu_stub/*.c (cached by source hash under
# build/npu_stub/), unpacks the release there, puts both on the paths (LD_LIBRARY_PATH,
# PYTHONPATH) with the stub NPU's Python host, and runs CMD. A model directory for it comes from
# scripts/pack_npu_stub.py. Environment: AX_STUB_CMM_FILL=garbage|nan|5a|zero (what fresh CMM
# holds; default garbage), AX_STUB_CMM_STRICT=1 (flushes only from a block start).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 3 ] || [ "$2" != "--" ]; then
  echo "usage: $0 PYAXENGINE_TARBALL -- CMD [ARGS...]" >&2
  exit 2
fi
tarball="$1"
shift 2
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$repo/.venv/bin/python3" ]; then py="$repo/.venv/bin/python3"; else py=python3; fi
fi
eval "$("$py" "$repo/test/npu_stub/build.py" "$tarball")"
exec "$@"
