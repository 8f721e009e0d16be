# Benchmark bench-devices, all in one test host:
# - virtio-blk: sequential read of a 256 MiB image in the guest (dd bs=1M)
#   against dd of the same file on the host running husk-vmm;
# - virtio-vsock: one 256 MiB stream host->guest through husk-vmm against the
#   same stream over a Unix socket on the host.
. "$HUSK_E2E_DIR/lib/assert.sh"
MIB=${BENCH_MIB:-256}
BYTES=$((MIB * 1024 * 1024))
cs() { read -r up _ < /proc/uptime; echo "${up%.*}${up#*.}"; }
img=$WORK/bench.img
dd if=/dev/urandom of="$img" bs=1M count="$MIB" 2>/dev/null
t0=$(cs); dd if="$img" of=/dev/null bs=1M 2>/dev/null; t1=$(cs)
host_cs=$((t1 - t0))
[ $host_cs -gt 0 ] || host_cs=1

"$HUSK_VSOCK" unix-sink "$WORK/sink.sock" > /dev/null &
sleep 1
unix=$("$HUSK_VSOCK" unix-bench "$WORK/sink.sock" $BYTES) || fail "unix socket run failed: $unix"
unix_mbs=$(echo "$unix" | grep -o '[0-9.]* MB/s' | cut -d' ' -f1)

uds=$WORK/bench-vsock.sock
log=$WORK/bench-devices.log
"$HUSK_VMM" --kernel "$GUEST_KERNEL" --initrd "$GUEST_TEST_INITRD" --vcpus 2 --mem-mib 256 \
  --cmdline "console=ttyS0 reboot=k panic=-1 rdinit=/tests/bench.sh husk.no_serve" \
  --disk "$img,ro" --vsock "3,$uds" > "$log" 2>&1 &
vmm=$!
i=0
until grep -q 'guest-sink listening on 7000' "$log" || [ $i -ge 300 ]; do sleep 1; i=$((i + 1)); done
grep -q 'guest-sink listening' "$log" || { kill -KILL $vmm; show_tail "$log"; fail "guest never started its vsock sink"; }
vs=$("$HUSK_VSOCK" host-bench "$uds" 7000 $BYTES) || { kill -KILL $vmm; fail "vsock run failed: $vs"; }
vsock_mbs=$(echo "$vs" | grep -o '[0-9.]* MB/s' | cut -d' ' -f1)
wait $vmm
RC=$?
[ $RC = 0 ] || { show_tail "$log"; fail "husk-vmm status $RC"; }
guest_cs=$(grep -o 'blk-read-cs=[0-9]*' "$log" | cut -d= -f2)
[ -n "$guest_cs" ] || { show_tail "$log"; fail "guest did not report its read time"; }
[ "$guest_cs" -gt 0 ] || guest_cs=1

echo
echo "| benchmark (one run, same host, $MIB MiB) | husk guest | host | ratio guest/host |"
echo "|---|---|---|---|"
awk -v g=$guest_cs -v h=$host_cs -v m=$MIB 'BEGIN { printf "| virtio-blk sequential read (dd bs=1M) vs dd on the host | %.1f MB/s | %.1f MB/s | %.2f |\n", m*1.048576/(g/100), m*1.048576/(h/100), h/g }'
awk -v v=$vsock_mbs -v u=$unix_mbs 'BEGIN { printf "| vsock stream host->guest vs Unix socket on the host | %.1f MB/s | %.1f MB/s | %.2f |\n", v, u, v/u }'
