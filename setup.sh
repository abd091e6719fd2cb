#!/usr/bin/env bash
# Set up .venv at the repository root with the library, its CLI and the test tools, then run the demo.
#   bash setup.sh            set up and run the demo (writes out/demo/)
#   bash setup.sh --no-demo  set up only
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: a CPU build where one is provided; any later torch requirement is then already met.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
if [ "${1:-}" != "--no-demo" ]; then
  .venv/bin/xrayctreg demo --out-dir out/demo
fi
