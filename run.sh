#!/usr/bin/env bash
# The main job: build what is missing (Debian packages, the guest kernel,
# husk-vmm, husk-agent, the initramfs) and boot the guest with husk-vmm,
# showing its console and husk-agent's ready line. On a host without vmx/svm
# the VM runs inside the nested test host (see tests/e2e.sh).
set -euo pipefail
exec "$(cd "$(dirname "$0")" && pwd)/tests/e2e.sh" demo
