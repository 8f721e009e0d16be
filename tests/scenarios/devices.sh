# Scenario devices: virtio-blk and virtio-vsock driven by the real guest.
# - vda (read-write, serial husk-vda): the guest writes a pattern; after the VM
#   exits the host checks the image's sha256.
# - vdb (read-only, serial husk-vdb): the guest reads it (sha256 must match the
#   host's) and cannot write it.
# - vsock: 8 concurrent 1 MiB echoes host->guest (CONNECT handshake on the
#   Unix socket) and 8 guest->host (to <uds>_6000), at the same time.
# - virtio-net on TAP husk-tap0 (169.254.77.1 host, .2 guest): ping both
#   ways and a TCP echo from the host to a server in the guest.
. "$HUSK_E2E_DIR/lib/assert.sh"
dd if=/dev/zero of="$WORK/vda.img" bs=1M count=8 2>/dev/null
dd if=/dev/urandom of="$WORK/vdb.img" bs=1M count=4 2>/dev/null
vdb_sum=$(sha256sum "$WORK/vdb.img" | cut -d' ' -f1)
uds=$WORK/vsock.sock
log=$WORK/devices.log
"$HUSK_VSOCK" host-echo "${uds}_6000" > "$WORK/host-echo.log" 2>&1 &
hecho=$!
"$HUSK_VMM" --kernel "$GUEST_KERNEL" --initrd "$GUEST_TEST_INITRD" --vcpus 2 --mem-mib 256 \
  --cmdline "console=ttyS0 reboot=k panic=-1 rdinit=/tests/devices.sh husk.no_serve" \
  --disk "$WORK/vda.img,serial=husk-vda" --disk "$WORK/vdb.img,ro,serial=husk-vdb" \
  --vsock "3,$uds" --net tap=husk-tap0,mac=06:00:ac:10:00:02 > "$log" 2>&1 &
vmm=$!
i=0
until [ -e /sys/class/net/husk-tap0 ] || [ $i -ge 60 ]; do sleep 1; i=$((i + 1)); done
[ -e /sys/class/net/husk-tap0 ] || { kill -KILL $vmm $hecho; show_tail "$log"; fail "husk-vmm did not create tap husk-tap0"; }
ip addr add 169.254.77.1/24 dev husk-tap0
ip link set husk-tap0 up
i=0
until grep -q 'guest-echo listening on 5000' "$log" || [ $i -ge 150 ]; do
  kill -0 $vmm 2>/dev/null || break
  sleep 1; i=$((i + 1))
done
grep -q 'guest-echo listening on 5000' "$log" || { kill -KILL $vmm $hecho; show_tail "$log"; fail "guest vsock echo server never came up"; }
"$HUSK_VSOCK" host-send "$uds" 5000 8 1048576 > "$WORK/host-send.log" 2>&1
hs=$?
ping -c 3 -W 2 169.254.77.2 > "$WORK/ping.log" 2>&1
ping_rc=$?
tcp=$(echo husk-tcp-hello | nc -w 5 169.254.77.2 7000)
i=0
while kill -0 $vmm 2>/dev/null && [ $i -lt 150 ]; do sleep 1; i=$((i + 1)); done
kill -0 $vmm 2>/dev/null && { kill -TERM $vmm; show_tail "$log"; fail "guest did not power off within 120 s after the vsock tests"; }
wait $vmm
RC=$?
kill $hecho 2>/dev/null
cat "$log"
cat "$WORK/host-send.log"
[ $hs = 0 ] || fail "host->guest vsock echo failed: $(cat "$WORK/host-send.log")"
[ "$RC" = 0 ] || fail "husk-vmm status $RC, want 0"
grep -q 'guest: serial vda=husk-vda vdb=husk-vdb vdb-ro=1' "$log" || fail "disk serials or read-only flag wrong"
pass "disk serials (GET_ID) and read-only flag seen by the guest"
grep -q "guest: vdb-sha256=$vdb_sum" "$log" || fail "guest read of vdb does not match the image (want $vdb_sum)"
pass "guest read the read-only disk intact (sha256 $vdb_sum)"
grep -q 'guest: vdb-write=refused' "$log" || fail "write to the read-only disk was not refused"
want=$(yes husk-disk-pattern | head -c 8388608 | sha256sum | cut -d' ' -f1)
got=$(sha256sum "$WORK/vda.img" | cut -d' ' -f1)
[ "$want" = "$got" ] || fail "vda image after the guest wrote it: sha256 $got, want $want"
pass "guest's write to vda landed in the image (sha256 $got)"
grep -q 'guest: vda-end last-sector=512 past-end=0' "$log" ||
  fail "reads at vda's end: want the last sector whole and nothing past it, got: $(grep 'guest: vda-end' "$log" || echo 'no guest: vda-end line')"
pass "vda's last sector reads whole, a read past its end is empty"
grep -q 'husk-vsock: guest-send: 8 connections x 1048576 bytes echoed intact' "$log" || fail "guest->host vsock echo failed"
grep -q 'husk-vsock: guest-echo: 8 connections, 8388608 bytes echoed' "$log" || fail "guest echo server did not serve 8 connections"
pass "vsock echo both directions, 8 concurrent connections of 1 MiB each way"
grep -q 'ready cpus=2' "$log" || fail "husk-agent did not come up after the device tests"
grep -q 'guest: eth0 mac=06:00:ac:10:00:02' "$log" || fail "guest eth0 does not have the configured MAC"
grep -q 'guest: ping host ok' "$log" || fail "guest could not ping the host over the tap"
[ $ping_rc = 0 ] || { cat "$WORK/ping.log"; fail "host could not ping the guest"; }
[ "$tcp" = husk-tcp-hello ] || fail "TCP echo over the tap returned '$tcp'"
pass "virtio-net: MAC, ping both ways, TCP echo host->guest over the tap"
