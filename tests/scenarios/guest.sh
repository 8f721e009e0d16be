# Scenario guest: the host stays in charge of a container's microVM, even
# when the guest does not answer:
# - pause and unpause stop and resume the vCPUs (ps, inspect, exec refused
#   while paused, a counter that stops and goes on);
# - a wedged guest (its husk-vmm SIGSTOPped, so the agent never answers)
#   cannot hold up `stop -t N` or `kill`: each returns within its grace plus
#   a small margin, the container shows Exited (137), no husk-vmm is left.
. "$HUSK_E2E_DIR/lib/assert.sh"
export HUSK_DATA_DIR=$WORK/husk-data
export HUSK_RUN_DIR=$WORK/husk-run
export PATH="$PATH:/husk/bin"
husk=${HUSK_BIN:-husk}

show_diag() {
  for f in "$HUSK_DATA_DIR"/containers/*/console.log "$HUSK_DATA_DIR"/containers/*/supervisor.log "$HUSK_DATA_DIR"/containers/*/vmm.log; do
    [ -f "$f" ] && show_tail "$f"
  done
}
counter() { $husk exec "$1" cat /tmp/count 2>/dev/null; }

# 1. pause / unpause.
$husk run -d --name counter busybox sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done' > /dev/null \
  || { show_diag; fail "run -d counter"; }
i=0
until [ -n "$(counter counter)" ] || [ $i -ge 30 ]; do sleep 1; i=$((i + 1)); done
check "pause" counter "$($husk pause counter)"
$husk ps | grep -q 'Up .*(Paused)' || { $husk ps; fail "ps does not show (Paused)"; }
$husk inspect counter | grep -q '"Status": "paused"' || fail "inspect does not say paused"
err=$($husk exec counter true 2>&1)
check "exec while paused: status" 1 "$?"
echo "$err" | grep -q 'is paused' || fail "exec while paused: $err"
$husk pause counter 2> "$WORK/err"
check "pause twice: status" 1 "$?"
grep -q 'already paused' "$WORK/err" || fail "pause twice: $(cat "$WORK/err")"
check "unpause" counter "$($husk unpause counter)"
a=$(counter counter); sleep 2; b=$(counter counter)
[ -n "$a" ] && [ -n "$b" ] && [ "$b" -gt "$a" ] || fail "the counter does not advance after unpause: $a then $b"
$husk inspect counter | grep -q '"Status": "running"' || fail "inspect does not say running after unpause"
pass "pause stops the vCPUs (ps, inspect, exec refused), unpause resumes them (counter $a -> $b)"

# 2. A paused container still stops (it is resumed first, as Docker does).
$husk pause counter > /dev/null || fail "pause before stop"
$husk stop -t 2 counter > /dev/null || fail "stop of a paused container"
$husk ps -a | grep counter | grep -q 'Exited' || { $husk ps -a; fail "the paused container did not stop"; }
$husk rm counter > /dev/null || fail "rm counter"
pass "stop of a paused container"

# 3. A wedged guest cannot hold up stop -t 2.
$husk run -d --name wedged busybox sleep 600 > /dev/null || { show_diag; fail "run -d wedged"; }
pid=$(vmm_pid wedged)
[ -n "$pid" ] && [ "$pid" != 0 ] || fail "no husk-vmm pid for wedged"
kill -STOP "$pid"
t0=$(date +%s)
$husk stop -t 2 wedged > /dev/null
took=$(( $(date +%s) - t0 ))
echo "stop -t 2 of a wedged guest took ${took}s"
[ "$took" -le 20 ] || fail "stop -t 2 of a wedged guest took ${took}s"
$husk ps -a | grep wedged | grep -q 'Exited (137)' || { $husk ps -a; show_diag; fail "wedged: not Exited (137)"; }
kill -0 "$pid" 2>/dev/null && fail "husk-vmm $pid is still there"
$husk rm wedged > /dev/null || fail "rm wedged"
pass "stop -t 2 of a wedged guest returned in ${took}s; Exited (137); husk-vmm gone"

# 4. ... nor kill.
$husk run -d --name wedged2 busybox sleep 600 > /dev/null || { show_diag; fail "run -d wedged2"; }
pid=$(vmm_pid wedged2)
kill -STOP "$pid"
t0=$(date +%s)
$husk kill wedged2 > /dev/null
took=$(( $(date +%s) - t0 ))
echo "kill of a wedged guest took ${took}s"
[ "$took" -le 20 ] || fail "kill of a wedged guest took ${took}s"
i=0
until $husk ps -a | grep wedged2 | grep -q 'Exited (137)' || [ $i -ge 20 ]; do sleep 1; i=$((i + 1)); done
$husk ps -a | grep wedged2 | grep -q 'Exited (137)' || { $husk ps -a; show_diag; fail "wedged2: not Exited (137)"; }
$husk rm -f wedged2 > /dev/null || fail "rm wedged2"
check "no husk-vmm left" 0 "$(ps -o comm | grep -c '^husk-vmm')"
pass "kill of a wedged guest returned in ${took}s; Exited (137)"
