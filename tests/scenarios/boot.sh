# Scenario boot: the guest kernel boots to husk-agent with 1 and 2 vCPUs
# (PVH entry) and with the 64-bit Linux entry; every online CPU comes up;
# the guest powers off with status 0; bad input gets a one-line error.
. "$HUSK_E2E_DIR/lib/assert.sh"

boot_check() {
  n=$1
  shift
  log=$WORK/console-$n-$#.log
  echo "== boot with $n vCPU(s) $*"
  run_vmm 180 "$log" --kernel "$GUEST_KERNEL" --initrd "$GUEST_INITRD" --vcpus "$n" --mem-mib 128 "$@"
  if [ "$RC" = 124 ]; then show_tail "$log"; fail "guest with $n vCPU(s) did not power off within 180 s"; fi
  cat "$log"
  ready=$(grep -o 'husk-agent [^:]*: ready cpus=[0-9]* uptime=[0-9.]*s' "$log" | head -1)
  [ -n "$ready" ] || { show_tail "$log"; fail "no ready line from husk-agent ($n vCPUs)"; }
  cpus=${ready#*cpus=}
  cpus=${cpus%% *}
  [ "$cpus" = "$n" ] || fail "agent saw $cpus online CPUs, want $n"
  [ "$RC" = 0 ] || fail "husk-vmm exit status $RC after guest power-off, want 0"
  grep -q 'guest boot marker: [0-9]* ms since husk-vmm start' "$log" || fail "no boot-time marker logged"
  pass "$n vCPU(s) $*: $ready, exit 0"
}

boot_check 1
boot_check 2
boot_check 1 --no-pvh

# Bad input: one line on stderr, status 1, no panic.
run_vmm 30 "$WORK/bad.log" --kernel /nonexistent/vmlinux
[ "$RC" = 1 ] || fail "missing kernel: status $RC, want 1"
[ "$(wc -l < "$WORK/bad.log")" = 1 ] || { cat "$WORK/bad.log"; fail "missing kernel: want a one-line error"; }
grep -q '^husk-vmm: kernel /nonexistent/vmlinux: ' "$WORK/bad.log" || fail "missing kernel: unclear error: $(cat "$WORK/bad.log")"
run_vmm 30 "$WORK/bad2.log" --kernel "$GUEST_KERNEL" --vcpus 0
[ "$RC" = 1 ] && grep -q 'vcpus must be between' "$WORK/bad2.log" || fail "vcpus 0 accepted or unclear: $(cat "$WORK/bad2.log")"
pass "bad input rejected with one-line errors"
