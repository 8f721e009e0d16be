# Benchmark bench-run: `husk run --rm busybox true` (first run: rootfs disk
# built; later runs: cached) against `crun run` of the same image as an OCI
# bundle and `qemu-system-x86_64 -M microvm` booting the same guest kernel
# and initramfs to husk-agent and back, alternating in one test host.
# Prints a table of ratios and husk's start-up breakdown (--timings).
# Needs HUSK_E2E_WITH_QEMU=1 and crun in the test host (tests/bench.sh run).
. "$HUSK_E2E_DIR/lib/assert.sh"
RUNS=${BENCH_RUNS:-3}
export HUSK_DATA_DIR=$WORK/husk-data HUSK_RUN_DIR=$WORK/husk-run PATH="$PATH:/husk/bin"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 is not in the test host"
command -v crun >/dev/null || fail "crun is not in the test host"
mkdir -p /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# First run: nothing cached (the rootfs disk is built from the layers).
t0=$(now_cs)
husk run --rm --timings busybox true 2> "$WORK/first.err" || { cat "$WORK/first.err"; fail "first husk run"; }
t1=$(now_cs)
first=$(( (t1 - t0) * 10 ))
grep 'start-up' "$WORK/first.err"

# The same image as an OCI bundle for crun: the rootfs disk's tree.
disk=$(ls "$HUSK_DATA_DIR"/rootfs/*.ext4 | head -1)
bundle=$WORK/bundle
mkdir -p "$bundle/rootfs"
debugfs -R "rdump / $bundle/rootfs" "$disk" 2>/dev/null
[ -x "$bundle/rootfs/bin/busybox" ] || fail "bundle rootfs has no busybox"
(cd "$bundle" && crun spec) || fail "crun spec"
sed -i 's/"terminal": true/"terminal": false/; s/"sh"$/"true"/' "$bundle/config.json"

qemu_once() {
  qemu-system-x86_64 -M microvm,acpi=off -accel kvm -cpu host -smp 1 -m 512 \
    -nodefaults -no-user-config -display none -no-reboot \
    -serial "file:$WORK/q.log" -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" \
    -append "console=ttyS0 reboot=k panic=-1 quiet" 2> "$WORK/q.err"
}

h_total=0 c_total=0 q_total=0
: > "$WORK/timings"
i=0
while [ $i -lt "$RUNS" ]; do
  t0=$(now_cs); husk run --rm --timings busybox true 2>> "$WORK/timings"; rc=$?; t1=$(now_cs)
  [ $rc = 0 ] || fail "husk run $i: status $rc"
  t2=$(now_cs); (cd "$bundle" && crun run --no-pivot "bench$i") > "$WORK/c.out" 2>&1; crc=$?; t3=$(now_cs)
  [ $crc = 0 ] || { cat "$WORK/c.out"; fail "crun run $i: status $crc"; }
  t4=$(now_cs); qemu_once; t5=$(now_cs)
  grep -q 'ready cpus=1' "$WORK/q.log" || { cat "$WORK/q.err"; fail "qemu run $i: agent never ready"; }
  echo "run $i: husk run $(( (t1 - t0) * 10 )) ms, crun run $(( (t3 - t2) * 10 )) ms, qemu microvm boot $(( (t5 - t4) * 10 )) ms"
  h_total=$((h_total + t1 - t0)); c_total=$((c_total + t3 - t2)); q_total=$((q_total + t5 - t4))
  i=$((i + 1))
done
grep 'start-up' "$WORK/timings"
# Mean of each start-up phase over the cached runs.
phase() { sed -n "s/.*[ ,]$1 \\([0-9]*\\) ms.*/\\1/p" "$WORK/timings" | awk '{ s += $1 } END { printf "%d", s / NR }'; }

h=$(( h_total * 10 / RUNS )); c=$(( c_total * 10 / RUNS )); q=$(( q_total * 10 / RUNS ))
echo
echo "| measure (same test host; cached runs: mean of $RUNS alternating) | value | ratio to crun |"
echo "|---|---|---|"
echo "| husk run --rm busybox true, first run (rootfs disk built) | $first ms | $(ratio $first $c) |"
echo "| husk run --rm busybox true, cached image | $h ms | $(ratio $h $c) |"
echo "| crun run --no-pivot (same image as a bundle) | $c ms | 1.00 |"
echo "| qemu -M microvm, same kernel to husk-agent and power-off | $q ms | $(ratio $q $c) |"
echo "| husk run (cached) / qemu microvm boot alone | $(ratio $h $q) | |"
echo
echo "| husk start-up phase (cached runs, mean) | ms |"
echo "|---|---|"
for p in rootfs vmm kernel agent "rootfs mount" exec; do
  echo "| $p | $(phase "$p") |"
done
echo "| total (supervisor start to process running) | $(sed -n 's/.*start-up \([0-9]*\) ms.*/\1/p' "$WORK/timings" | awk '{ s += $1 } END { printf "%d", s / NR }') |"
