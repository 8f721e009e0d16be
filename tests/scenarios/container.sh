# Scenario container: husk-agent in a guest takes a busybox image (two layers
# on a read-only virtio-blk disk, checked by digest), builds the rootfs and
# runs the container in its own namespaces; the host drives it over vsock
# with the control protocol and gets its output and exit status.
. "$HUSK_E2E_DIR/lib/assert.sh"
[ -f "$DATA_DIR/blobs.img" ] || fail "no image disk (container.prep did not run)"
uds=$WORK/agent.sock
log=$WORK/container-vm.log
cp "$DATA_DIR/blobs.img" "$WORK/blobs.img"
"$HUSK_VMM" --kernel "$GUEST_KERNEL" --initrd "$GUEST_INITRD" --vcpus 2 --mem-mib 256 \
  --cmdline "console=ttyS0 reboot=k panic=-1 husk.disk=vda:/mnt/blobs:ro husk.ip=169.254.78.2/24" \
  --disk "$WORK/blobs.img,ro" --vsock "3,$uds" --net tap=husk-tap1 > "$log" 2>&1 &
vmm=$!
i=0
until [ -e /sys/class/net/husk-tap1 ] || [ $i -ge 60 ]; do sleep 1; i=$((i + 1)); done
ip addr add 169.254.78.1/24 dev husk-tap1
ip link set husk-tap1 up
i=0
until grep -q 'husk-agent .*: ready' "$log" || [ $i -ge 120 ]; do sleep 1; i=$((i + 1)); done
grep -q 'husk-agent .*: ready' "$log" || { kill -KILL $vmm; show_tail "$log"; fail "agent never became ready"; }
# PID 1 brought eth0 up with the address from husk.ip.
ping -c 2 -W 3 169.254.78.2 > "$WORK/ping.log" 2>&1 || { cat "$WORK/ping.log"; show_tail "$log"; fail "guest eth0 (husk.ip) does not answer ping"; }
pass "husk-agent configured eth0 from husk.ip; the host pings it"
# The agent listens right after its ready line; retry the first connection briefly.
i=0
while :; do
  "$HUSK_AGENT_CLIENT" "$uds" "$DATA_DIR/layers.txt" husk-box -- \
    sh -c 'echo hello; hostname; id -u; echo $$; cat /etc/motd; test -e /etc/gone || echo gone-ok; exit 3' \
    > "$WORK/out.txt" 2> "$WORK/err.txt"
  rc=$?
  grep -q 'vsock handshake' "$WORK/err.txt" && [ $i -lt 10 ] || break
  sleep 1; i=$((i + 1))
done
cat "$WORK/out.txt" "$WORK/err.txt"
i=0
while kill -0 $vmm 2>/dev/null && [ $i -lt 60 ]; do sleep 1; i=$((i + 1)); done
kill -0 $vmm 2>/dev/null && { kill -KILL $vmm; show_tail "$log"; fail "guest did not power off after Shutdown"; }
wait $vmm
vrc=$?
[ $rc = 3 ] || { show_tail "$log"; fail "container exit status reached the host as $rc, want 3"; }
want='hello
husk-box
0
1
from layer 2
gone-ok
exit: code 3'
[ "$(cat "$WORK/out.txt")" = "$want" ] || fail "container output differs: $(cat "$WORK/out.txt")"
pass "container output, hostname, uid 0, shell is PID 1, layers with whiteout, exit 3 to the host"
[ $vrc = 0 ] || fail "husk-vmm status $vrc after the agent's shutdown, want 0"
pass "agent powered the VM off after Shutdown"
