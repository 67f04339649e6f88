#!/usr/bin/env bash
# System packages the test suite needs and pip cannot bring: Debian's Chromium and its ChromeDriver
# (tests/test_report.py renders the run report in headless Chromium). Idempotent: installs nothing
# when both are already there. Needs root (or sudo) and Debian's package registry.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-test-deps: chromium and chromium-driver are missing and this is not root;" \
             "install them with: apt-get install -y chromium chromium-driver" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver
