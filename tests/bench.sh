#!/usr/bin/env bash
# Benchmarks that print tables of ratios measured side by side in one run:
#   tests/bench.sh boot      husk-vmm vs qemu -M microvm, boot to power-off
#   tests/bench.sh devices   virtio-blk and vsock throughput vs the host
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
case "${1:-boot}" in
  boot) HUSK_E2E_WITH_QEMU=1 exec "$here/e2e.sh" bench-boot ;;
  devices) exec "$here/e2e.sh" bench-devices ;;
  *) echo "usage: tests/bench.sh [boot|devices]" >&2; exit 2 ;;
esac
