#!/usr/bin/env bash
# Benchmarks that print tables of ratios measured side by side in one run:
#   tests/bench.sh boot   husk-vmm vs qemu -M microvm, boot to power-off
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
case "${1:-boot}" in
  boot) HUSK_E2E_WITH_QEMU=1 exec "$here/e2e.sh" bench-boot ;;
  *) echo "usage: tests/bench.sh [boot]" >&2; exit 2 ;;
esac
