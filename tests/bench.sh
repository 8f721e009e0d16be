#!/usr/bin/env bash
# Benchmarks that print tables of ratios measured side by side in one run:
#   tests/bench.sh boot      husk-vmm vs qemu -M microvm, boot to power-off
#   tests/bench.sh devices   virtio-blk and vsock throughput vs the host
#   tests/bench.sh run       husk run vs crun run vs qemu -M microvm, with husk's start-up breakdown
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
case "${1:-boot}" in
  boot) HUSK_E2E_WITH_QEMU=1 exec "$here/e2e.sh" bench-boot ;;
  devices) exec "$here/e2e.sh" bench-devices ;;
  run) HUSK_E2E_WITH_QEMU=1 HUSK_E2E_EXTRA_FILES="$(command -v crun)" exec "$here/e2e.sh" bench-run ;;
  *) echo "usage: tests/bench.sh [boot|devices|run]" >&2; exit 2 ;;
esac
