# Scenario bench: `husk bench` as a user runs it, on real guests. Every row
# this test host can measure is measured (husk cold boot, husk from its template
# snapshot, husk fork, the bare-namespace baseline, crun, qemu -M microvm) with
# numbers, the density row has its figures, runc is listed as unavailable, and the plot is a
# PNG of the expected size. A row that fails makes the scenario fail; a
# deliberately failing row makes `husk bench` exit 1 and say why.
. "$HUSK_E2E_DIR/lib/assert.sh"
export HUSK_DATA_DIR=$WORK/husk-data HUSK_RUN_DIR=$WORK/husk-run PATH="$PATH:/husk/bin"
command -v crun > /dev/null || fail "crun is not in the test host (tests/scenarios/bench.files)"
command -v qemu-system-x86_64 > /dev/null || fail "qemu-system-x86_64 is not in the test host"
# As in the husk machine: cgroup2 (crun needs it).
mkdir -p /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null

# Progress (stderr) shows on the console as it goes.
{ husk bench --runs 2 --density 2 --forks 2 --plot "$WORK/bench.png" 2>&1 > "$WORK/table"; echo $? > "$WORK/rc"; } | tee "$WORK/err"
rc=$(cat "$WORK/rc")
cat "$WORK/table"
[ "$rc" = 0 ] || fail "husk bench: status $rc"
grep -q '^error' "$WORK/table" && fail "a row failed"
num='[0-9]+\.[0-9]+'
for row in husk husk-snapshot husk-fork namespace crun qemu-microvm; do
  grep -Eq "^$row +$num +$num +$num  [a-z]" "$WORK/table" || fail "row $row has no p50, p90 and ratio"
done
grep -Eq "^namespace +$num +$num +1\.00  .*\(container baseline\)$" "$WORK/table" || fail "the namespace row is not the baseline"
grep -Eq "^density: 2 sandboxes \(husk run -d\) started at once in $num s \($num starts/s\); PSS of their husk-vmm at 2: $num MiB" "$WORK/table" \
  || fail "no density figures"
grep -Eq "^fork density: 2 forks \(husk fork\) of one idle container in $num s; PSS of their husk-vmm: $num MiB, ${num}x the container.s \($num MiB\), ${num}x the first fork.s alone \($num MiB\)" "$WORK/table" \
  || fail "no fork density figures"
grep -q '^unavailable: runc: runc is not installed$' "$WORK/table" || fail "runc is not listed as unavailable"
grep -q '^round 2/2: husk .* ms husk-snapshot .* ms husk-fork .* ms namespace .* ms crun .* ms qemu-microvm .* ms$' "$WORK/err" || fail "the rows did not take turns"
pass "husk bench: husk, husk-snapshot, husk-fork, namespace, crun and qemu-microvm rows with p50/p90/ratios, density, fork density, unavailable rows"

check_png() { # check_png FILE: a PNG of 1000x600 with more than a blank picture in it
  [ "$(od -An -tx1 -N8 "$1" | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "$1 is not a PNG"
  [ "$(od -An -tx1 -j12 -N12 "$1" | tr -d ' \n')" = 49484452000003e800000258 ] || fail "$1 is not a 1000x600 PNG"
  size=$(wc -c < "$1")
  [ "$size" -gt 10000 ] || fail "$1 has only $size bytes"
}
check_png "$WORK/bench.png"
pass "the plot is a 1000x600 PNG of $size bytes"
[ -z "$(husk ps -aq)" ] || { husk ps -a; fail "the density row left containers"; }
[ "$(ps -o comm | grep -c '^husk-vmm')" = 0 ] || fail "husk-vmm processes left"
pass "no container or husk-vmm left"

# A failing row: husk's kernel missing. The other rows are still measured,
# the table says why husk failed, the status is 1.
HUSK_KERNEL=/nonexistent/vmlinux husk bench --runs 1 --density 0 --forks 0 > "$WORK/table" 2> "$WORK/err"
rc=$?
cat "$WORK/table"
[ "$rc" = 1 ] || fail "a failing row gave status $rc"
grep -q '^error: husk: husk run: exit status: 125: .*guest kernel not found' "$WORK/table" || fail "no error line for the husk row"
grep -Eq "^namespace +$num" "$WORK/table" || fail "the namespace row was not measured beside a failing row"
pass "a failing row: status 1, one error line, the other rows measured"
