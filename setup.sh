#!/usr/bin/env bash
# Set up ssdfa on a fresh machine: a virtual environment in .venv with the tested torch (CPU)
# and the package in editable mode, plus Debian's Fashion-MNIST when apt-get is available.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# integrations: transformers, accelerate and lightning, which tests/test_convert_integrations.py trains with
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,integrations]"
# Real Fashion-MNIST (IDX files in /usr/share/datasets/fashion-mnist); optional, digits needs none.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1 \
    || echo "setup.sh: could not install dataset-fashion-mnist with apt-get; Fashion-MNIST runs will need --data-dir" >&2
fi
# Chromium renders `ssdfa report --html` in tests/test_report_html.py (headless screenshot).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "setup.sh: could not install chromium with apt-get; the HTML report's browser test will be skipped" >&2
fi
echo "setup.sh: ready (.venv)"
