# Helpers for scenarios (POSIX sh: runs under busybox in the nested host).
# shellcheck shell=sh
fail() { echo "FAIL: $*"; exit 1; }
pass() { echo "ok: $*"; }
# show_tail FILE: the last console lines, for failure messages.
show_tail() { echo "--- last lines of $1:"; tail -n 15 "$1"; echo "---"; }
# run_vmm SECONDS LOG ARGS...: runs husk-vmm with a time limit, output to LOG;
# sets RC. A run that hits the limit gets RC=124.
run_vmm() {
  limit=$1 log=$2
  shift 2
  "$HUSK_VMM" "$@" > "$log" 2>&1 &
  vmm=$!
  ( sleep "$limit"; kill -TERM "$vmm" 2>/dev/null; sleep 5; kill -KILL "$vmm" 2>/dev/null ) &
  guard=$!
  wait "$vmm"
  RC=$?
  kill "$guard" 2>/dev/null
  wait "$guard" 2>/dev/null
  # SIGTERM from the guard: husk-vmm exits 143; SIGKILL: 137.
  if [ "$RC" = 143 ] || [ "$RC" = 137 ]; then RC=124; fi
}
# check DESCRIPTION WANT GOT: fails with the scenario's show_diag unless
# GOT is WANT.
check() {
  [ "$2" = "$3" ] || { show_diag; fail "$1: want [$2], got [$3]"; }
}
# now_cs: uptime in centiseconds (busybox date has no %N).
now_cs() { read -r up _ < /proc/uptime; echo "${up%.*}${up#*.}"; }
# vmm_pid CONTAINER: its husk-vmm's pid (State.VmmPid), run with $husk.
vmm_pid() { $husk inspect "$1" | sed -n 's/.*"VmmPid": \([0-9]*\).*/\1/p' | head -1; }
