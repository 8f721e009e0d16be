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

# A bzImage (Debian's stock cloud kernel: ACPI, modules and all) boots to the
# same agent through the 64-bit entry of its protected-mode part. That kernel
# finds CPUs only through ACPI (no CONFIG_X86_MPPARSE) and husk gives no ACPI
# tables, so it gets one vCPU.
[ -n "${GUEST_BZIMAGE:-}" ] && [ -f "$GUEST_BZIMAGE" ] || fail "no bzImage to boot (install linux-image-cloud-amd64)"
log=$WORK/bzimage.log
run_vmm 180 "$log" --kernel "$GUEST_BZIMAGE" --initrd "$GUEST_INITRD" --vcpus 1 --mem-mib 256
grep -q 'ready cpus=1 ' "$log" || { show_tail "$log"; fail "bzImage guest: no ready line"; }
[ "$RC" = 0 ] || fail "bzImage guest: status $RC, want 0"
pass "bzImage kernel $(basename "$GUEST_BZIMAGE") boots to the agent"

# Bad input: one line on stderr, status 1, no panic.
run_vmm 30 "$WORK/bad.log" --kernel /nonexistent/vmlinux
[ "$RC" = 1 ] || fail "missing kernel: status $RC, want 1"
[ "$(wc -l < "$WORK/bad.log")" = 1 ] || { cat "$WORK/bad.log"; fail "missing kernel: want a one-line error"; }
grep -q '^husk-vmm: kernel /nonexistent/vmlinux: ' "$WORK/bad.log" || fail "missing kernel: unclear error: $(cat "$WORK/bad.log")"
run_vmm 30 "$WORK/bad2.log" --kernel "$GUEST_KERNEL" --vcpus 0
[ "$RC" = 1 ] && grep -q 'vcpus must be between' "$WORK/bad2.log" || fail "vcpus 0 accepted or unclear: $(cat "$WORK/bad2.log")"
pass "bad input rejected with one-line errors"

# The same boot from a vm.json file.
cat > "$WORK/vm.json" <<JSON
{"kernel": "$GUEST_KERNEL", "initrd": "$GUEST_INITRD", "vcpus": 2, "mem_mib": 128,
 "console": {"file": "$WORK/json-console.log"}}
JSON
run_vmm 180 "$WORK/json.log" --config "$WORK/vm.json"
[ "$RC" = 0 ] || { cat "$WORK/json.log"; fail "boot from vm.json: status $RC"; }
grep -q 'ready cpus=2 ' "$WORK/json-console.log" || { show_tail "$WORK/json-console.log"; fail "boot from vm.json: no ready line in the console file"; }
pass "boot from vm.json with the console in a file"

# A guest that panics (no init) resets itself with panic=-1: status 3.
run_vmm 180 "$WORK/panic.log" --kernel "$GUEST_KERNEL" --mem-mib 64 \
  --cmdline "console=ttyS0 reboot=k panic=-1"
grep -q 'Kernel panic' "$WORK/panic.log" || { show_tail "$WORK/panic.log"; fail "guest without init did not panic"; }
[ "$RC" = 3 ] || fail "guest reset: status $RC, want 3"
pass "guest reset after panic gives status 3"

# SIGTERM stops a running VM (here one that would wait forever after its
# panic), whatever the guest is doing at that moment: status 143.
"$HUSK_VMM" --kernel "$GUEST_KERNEL" --mem-mib 64 --cmdline "console=ttyS0 reboot=k panic=0" \
  > "$WORK/term.log" 2>&1 &
vmm=$!
sleep 3
kill -0 $vmm 2>/dev/null || { show_tail "$WORK/term.log"; fail "husk-vmm exited before SIGTERM"; }
kill -TERM $vmm
i=0
while kill -0 $vmm 2>/dev/null && [ $i -lt 30 ]; do sleep 1; i=$((i + 1)); done
kill -0 $vmm 2>/dev/null && { kill -KILL $vmm; fail "husk-vmm still running 30 s after SIGTERM"; }
wait $vmm
RC=$?
[ "$RC" = 143 ] || fail "SIGTERM: status $RC, want 143"
grep -q 'stopped by signal 15' "$WORK/term.log" || fail "SIGTERM not logged"
pass "SIGTERM stops the VM with status 143"
