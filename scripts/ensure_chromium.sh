#!/bin/sh
# Install headless Chromium and its WebDriver (Debian packages) when missing,
# for the report's browser test (tests/test_report_browser.py).
# Needs root (or sudo) the first time; does nothing when both are present.
set -eu
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "ensure_chromium: chromium/chromedriver missing and no root: the browser test will be skipped" >&2
    exit 0
fi
if ! $SUDO apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null 2>&1; then
    $SUDO apt-get update -qq && $SUDO apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null \
        || echo "ensure_chromium: could not install chromium: the browser test will be skipped" >&2
fi
