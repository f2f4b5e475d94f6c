#!/usr/bin/env bash
# Run a command with one of AXERA's pyaxengine releases over the stub NPU libraries:
#
#   scripts/with_npu_stub.sh ../shared/pyaxengine/pyaxengine-0.1.3.rc3.tar.gz -- \
#       qwen-vl-describe --backend axengine --model-dir DIR --image a.jpg
#   scripts/with_npu_stub.sh --card ../shared/pyaxengine/pyaxengine-0.1.3.rc3.tar.gz -- CMD
#
# Builds libax_sys.so / libax_engine.so (the board) and libaxcl_rt.so (the M.2 card) from
# test/npu_stub/*.c (cached by source hash under build/npu_stub/), unpacks the release there,
# puts the libraries on LD_LIBRARY_PATH (--card: libaxcl_rt.so alone, so pyaxengine picks
# AXCLRTExecutionProvider by itself, as on a Raspberry Pi 5 with the card), the release and the
# stub NPU's Python host on PYTHONPATH, and runs CMD. A model directory for it comes from
# scripts/pack_npu_stub.py. Environment: AX_STUB_CMM_FILL=garbage|nan|5a|zero (what fresh CMM
# and device memory hold; default garbage; AX_STUB_AXCL_FILL overrides it for the card),
# AX_STUB_CMM_STRICT=1 (flushes only from a block start), AX_STUB_AXCL_DEVICES=N (cards),
# AX_STUB_LINK_STATS=FILE (--card: bytes and calls over the link as JSON, written at exit).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
card=()
if [ "${1:-}" = "--card" ]; then
  card=(--card)
  shift
fi
if [ $# -lt 3 ] || [ "$2" != "--" ]; then
  echo "usage: $0 [--card] PYAXENGINE_TARBALL -- CMD [ARGS...]" >&2
  exit 2
fi
tarball="$1"
shift 2
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$repo/.venv/bin/python3" ]; then py="$repo/.venv/bin/python3"; else py=python3; fi
fi
eval "$("$py" "$repo/test/npu_stub/build.py" "${card[@]}" "$tarball")"
exec "$@"
