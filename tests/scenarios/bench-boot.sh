# Benchmark bench-boot: husk-vmm against qemu-system-x86_64 -M microvm booting
# the same guest kernel and initramfs to husk-agent and back (power-off), in
# the same test host, alternating runs. Prints a table with the ratio, the
# boot marker time, and husk-vmm's resident memory beyond guest memory.
# Needs HUSK_E2E_WITH_QEMU=1 in the nested host (tests/bench.sh sets it).
. "$HUSK_E2E_DIR/lib/assert.sh"
RUNS=${BENCH_RUNS:-3}
MEM=128
CMDLINE="console=ttyS0 reboot=k panic=-1 quiet"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 is not in the test host"

# Centiseconds since the test host booted (busybox has no nanosecond date).

husk_once() {
  : > "$WORK/h.log"
  "$HUSK_VMM" --kernel "$GUEST_KERNEL" --initrd "$GUEST_INITRD" --vcpus 1 --mem-mib $MEM \
    --cmdline "$CMDLINE" --console "file:$WORK/h.log" 2> "$WORK/h.err"
}
qemu_once() {
  : > "$WORK/q.log"
  qemu-system-x86_64 -M microvm,acpi=off -accel kvm -cpu host -smp 1 -m $MEM \
    -nodefaults -no-user-config -display none -no-reboot \
    -serial "file:$WORK/q.log" -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" \
    -append "$CMDLINE" 2> "$WORK/q.err"
}

# uptime_cs LOG: the guest kernel's uptime at husk-agent's ready line.
uptime_cs() { grep -o 'ready cpus=[0-9]* uptime=[0-9.]*s' "$1" | head -1 | awk -F'uptime=' '{ printf "%d", $2 * 100 }'; }

# QEMU's own process start-up (no guest): loading a large dynamic binary is
# expensive in an emulated test host.
t0=$(now_cs); qemu-system-x86_64 -version > /dev/null; t1=$(now_cs)
qemu_startup=$(( (t1 - t0) * 10 ))

h_total=0 q_total=0 marker_total=0 hu_total=0 qu_total=0
i=0
while [ $i -lt "$RUNS" ]; do
  t0=$(now_cs); husk_once; rc=$?; t1=$(now_cs)
  [ $rc = 0 ] || { cat "$WORK/h.err"; fail "husk-vmm run $i: status $rc"; }
  grep -q 'ready cpus=1' "$WORK/h.log" || fail "husk-vmm run $i: agent never ready"
  m=$(grep -o 'guest boot marker: [0-9]* ms' "$WORK/h.err" | grep -o '[0-9]*')
  t2=$(now_cs); qemu_once; qrc=$?; t3=$(now_cs)
  grep -q 'ready cpus=1' "$WORK/q.log" || { cat "$WORK/q.err"; tail -5 "$WORK/q.log"; fail "qemu run $i (status $qrc): agent never ready"; }
  hu=$(uptime_cs "$WORK/h.log"); qu=$(uptime_cs "$WORK/q.log")
  echo "run $i: husk-vmm $(( (t1 - t0) * 10 )) ms (marker ${m} ms, guest uptime at ready $((hu * 10)) ms), qemu microvm $(( (t3 - t2) * 10 )) ms (guest uptime at ready $((qu * 10)) ms)"
  h_total=$((h_total + t1 - t0)); q_total=$((q_total + t3 - t2)); marker_total=$((marker_total + m))
  hu_total=$((hu_total + hu)); qu_total=$((qu_total + qu))
  i=$((i + 1))
done

# Resident memory of husk-vmm beyond guest memory, sampled while it boots.
"$HUSK_VMM" --kernel "$GUEST_KERNEL" --initrd "$GUEST_INITRD" --vcpus 1 --mem-mib $MEM \
  --cmdline "$CMDLINE" --console "file:$WORK/h.log" 2>/dev/null &
pid=$!
best=""
while kill -0 $pid 2>/dev/null; do
  s=$(awk -v guest=$((MEM * 1024)) '
    /^[0-9a-f]+-[0-9a-f]+ / { cur = "" }
    /^Size:/ { cur = ($2 == guest) ? "guest" : "other" }
    /^Rss:/ { if (cur == "guest") g += $2; else o += $2 }
    END { if (o > 0) print o, g }' /proc/$pid/smaps 2>/dev/null)
  [ -n "$s" ] && best=$s
  usleep 50000
done
wait $pid
other=${best%% *}
guest=${best#* }

echo
echo "| metric (mean of $RUNS alternating runs, same host) | value |"
echo "|---|---|"
echo "| husk-vmm start to guest power-off | $(( h_total * 10 / RUNS )) ms |"
echo "| qemu -M microvm start to guest power-off | $(( q_total * 10 / RUNS )) ms |"
echo "| ratio husk / qemu | $(awk -v h=$h_total -v q=$q_total 'BEGIN { printf "%.2f", h / q }') |"
echo "| husk-vmm start to guest boot marker | $(( marker_total / RUNS )) ms |"
echo "| guest kernel uptime at agent ready: husk / qemu | $(( hu_total * 10 / RUNS )) ms / $(( qu_total * 10 / RUNS )) ms = $(awk -v h=$hu_total -v q=$qu_total 'BEGIN { printf "%.2f", h / q }') |"
echo "| qemu-system-x86_64 -version alone (process start-up) | $qemu_startup ms |"
echo "| husk-vmm RSS beyond guest memory | ${other:-?} KiB (guest memory touched: ${guest:-?} KiB) |"
