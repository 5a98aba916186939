#!/usr/bin/env bash
# Headless Chromium and its WebDriver for the report test (tests/workflow/test_report_browser.py),
# from Debian's own packages: no browser download at test time. Idempotent: exits at once when
# both binaries are already there. Needs root and a reachable apt mirror; .ci/run lets it fail
# (the browser test then skips with the reason).
set -euo pipefail

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    echo "setup-browser: $(/usr/bin/chromium --version 2>/dev/null || echo chromium) already installed"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "setup-browser: needs root to apt-get install chromium chromium-driver" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
echo "setup-browser: installed $(/usr/bin/chromium --version)"
