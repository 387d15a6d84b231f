#!/usr/bin/env bash
# Installs what the browser tests need when missing: Debian's chromium and Playwright's Python package
# (never Playwright's own browser download, which cannot work offline).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f scripts/ensure_chromium.sh ]; then
  bash scripts/ensure_chromium.sh
fi
