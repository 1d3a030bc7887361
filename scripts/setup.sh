#!/usr/bin/env bash
# One-time set-up, safe to run again: a virtual environment in .venv with
# stylekit and everything it needs. Torch is installed first, explicitly,
# so that a CPU machine does not pull a multi-GB CUDA build; a torch that is
# already in .venv (a GPU build, say) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${STYLEKIT_TORCH:-torch==2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "installing $TORCH_SPEC"
    .venv/bin/python -m pip install --quiet "$TORCH_SPEC"
fi
.venv/bin/python -m pip install --quiet -e ".[test]"
# The browser test drives Debian's Chromium with Playwright (no browser download).
# CI installs it when missing; elsewhere that one test is skipped without it.
if [ "${CI:-}" = "true" ] && ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
    echo "installing chromium for the browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/python -c "import stylekit, torch; print('stylekit', stylekit.__version__, '| torch', torch.__version__)"
