#!/usr/bin/env bash
# Colin27, a real single-subject 1 mm T1 (whole head and brain-extracted), from Debian's
# mricron-data package: tests/unit/test_registration.py registers it when it is present and
# skips, saying so, when it is not.
set -euo pipefail
[[ -e /usr/share/mricron/templates/ch2.nii.gz ]] && exit 0
if [[ $(id -u) -ne 0 ]]; then
    echo "setup-data: not root; cannot apt-get install mricron-data" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q mricron-data >/dev/null 2>&1 || {
    apt-get update -q >/dev/null && apt-get install -y -q mricron-data >/dev/null
}
