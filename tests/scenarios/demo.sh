# Scenario demo (the README's first command): boot the guest once with
# husk-vmm, 2 vCPUs, console on stdout, and show the agent's ready line.
. "$HUSK_E2E_DIR/lib/assert.sh"
"$HUSK_VMM" --kernel "$GUEST_KERNEL" --initrd "$GUEST_INITRD" --vcpus 2 --mem-mib 256
rc=$?
[ $rc = 0 ] || fail "husk-vmm exited with status $rc"
