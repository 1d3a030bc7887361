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
# Two tests need Debian packages: the browser test drives Debian's Chromium with
# Playwright (no browser download), and one test reads the tiny model's pretraining
# corpus where its wallpaper packages install it. CI installs them when missing;
# elsewhere those tests are skipped without them.
CORPUS_PACKAGES="gnome-backgrounds mate-backgrounds ukui-wallpapers plasma-workspace-wallpapers lomiri-wallpapers-16.04 lomiri-wallpapers-20.04"
if [ "${CI:-}" = "true" ] && command -v apt-get >/dev/null; then
    missing=""
    for package in $CORPUS_PACKAGES; do
        dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
    done
    if [ -n "$missing" ] || ! command -v chromium >/dev/null; then
        apt-get update -qq
    fi
    if ! command -v chromium >/dev/null; then
        echo "installing chromium for the browser test"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    fi
    if [ -n "$missing" ]; then
        echo "installing the pretraining corpus's packages:$missing"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
fi
.venv/bin/python -c "import stylekit, torch; print('stylekit', stylekit.__version__, '| torch', torch.__version__)"
