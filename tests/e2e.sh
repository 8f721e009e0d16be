#!/usr/bin/env bash
# End-to-end scenarios that boot real guests: tests/e2e.sh SCENARIO...
#
# On a host whose CPU has vmx/svm the scenario runs here on /dev/kvm. Otherwise
# it runs inside the nested test host (QEMU TCG + emulated SVM, a real
# /dev/kvm inside). A scenario that cannot boot its guest fails; it never skips.
# Scenarios: tests/scenarios/*.sh (boot, bench-boot, ...).
set -euo pipefail
HUSK_ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib/build.sh
. "$HUSK_ROOT/tests/lib/build.sh"
# shellcheck source=lib/nested.sh
. "$HUSK_ROOT/tests/lib/nested.sh"

[ $# -ge 1 ] || { echo "usage: tests/e2e.sh SCENARIO... (one of: $(cd "$HUSK_ROOT/tests/scenarios" && ls *.sh | sed 's/\.sh$//' | tr '\n' ' '))" >&2; exit 2; }
for s in "$@"; do
  [ -f "$HUSK_ROOT/tests/scenarios/$s.sh" ] || { echo "e2e: unknown scenario $s" >&2; exit 2; }
done
build_all

failed=0
host_pid=
# A scenario's host-side server never outlives e2e.sh, even when it is
# interrupted.
trap '[ -z "$host_pid" ] || kill "$host_pid" 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM
for s in "$@"; do
  start=$(date +%s)
  # A scenario's NAME.prep.sh runs here, on the machine running e2e.sh, and
  # leaves files in DATA_DIR (copied into the nested test host).
  DATA_DIR=$(mktemp -d)
  export DATA_DIR
  if [ -f "$HUSK_ROOT/tests/scenarios/$s.prep" ]; then
    bash "$HUSK_ROOT/tests/scenarios/$s.prep" || { say "scenario $s: preparation failed"; failed=$((failed + 1)); continue; }
  fi
  # A scenario's NAME.host runs beside it on this machine (a server the
  # guest reaches through the nested host's user network); it writes
  # KEY=VALUE lines to $DATA_DIR/env for the scenario.
  host_pid=
  if [ -f "$HUSK_ROOT/tests/scenarios/$s.host" ]; then
    if have_hw_kvm; then HUSK_E2E_HOST=direct; else HUSK_E2E_HOST=nested; fi
    HUSK_E2E_HOST=$HUSK_E2E_HOST bash "$HUSK_ROOT/tests/scenarios/$s.host" &
    host_pid=$!
    i=0; until [ -s "$DATA_DIR/env" ] || [ $i -ge 50 ]; do sleep 0.1; i=$((i + 1)); done
    export HUSK_E2E_NIC="-nic user,model=virtio-net-pci"
  else
    unset HUSK_E2E_NIC
  fi
  if have_hw_kvm; then
    say "scenario $s on this host's /dev/kvm"
    work=$(mktemp -d)
    set +e
    [ ! -f "$DATA_DIR/env" ] || { set -a; . "$DATA_DIR/env"; set +a; }
    GUEST_BZIMAGE=$(nested_kernel) HUSK_E2E_DIR=$HUSK_ROOT/tests HUSK_E2E_HOST=direct WORK=$work sh "$HUSK_ROOT/tests/scenarios/$s.sh"
    rc=$?
    set -e
    rm -rf "$work"
  else
    set +e
    nested_run "$s" "${HUSK_E2E_TIMEOUT:-900}"
    rc=$?
    set -e
  fi
  [ -z "$host_pid" ] || { kill "$host_pid" 2>/dev/null; wait "$host_pid" 2>/dev/null || true; }
  host_pid=
  rm -rf "$DATA_DIR"
  took=$(( $(date +%s) - start ))
  if [ "$rc" = 0 ]; then say "scenario $s: PASS (${took}s)"; else say "scenario $s: FAIL, status $rc (${took}s)"; failed=$((failed + 1)); fi
done
passed=$(( $# - failed ))
echo "e2e: $passed passed, $failed failed"
[ "$failed" = 0 ]
