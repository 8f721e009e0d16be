# Scenario foundation: what a new user hits first, driven through the husk
# CLI in the nested host's microVMs:
# - a Debian nginx image whose logs are /dev/stdout and /dev/stderr links
#   serves a page through -p and its access line shows in `husk logs`;
# - a hostile image's escaping layer entry is refused with an error that
#   names the entry;
# - 8 concurrent `husk run -d` all start;
# - a data directory whose path has a comma, a space and a colon works.
. "$HUSK_E2E_DIR/lib/assert.sh"
export PATH="$PATH:/husk/bin"
husk=${HUSK_BIN:-husk}
export HUSK_RUN_DIR=$WORK/husk-run
# The odd data directory is the one every check below uses.
export HUSK_DATA_DIR="$WORK/husk data,dir:x"
mkdir -p "$HUSK_DATA_DIR"

show_diag() {
  for f in "$HUSK_DATA_DIR"/containers/*/console.log "$HUSK_DATA_DIR"/containers/*/supervisor.log "$HUSK_DATA_DIR"/containers/*/vmm.log; do
    [ -f "$f" ] && show_tail "$f"
  done
}

# 1. A data directory with ',', ' ' and ':' in its path (husk-vmm reads a
# vm.json, never comma-joined flags).
out=$($husk run --rm busybox echo odd-path-ok 2> "$WORK/err")
check "run in an odd data dir: status" 0 "$?"
check "run in an odd data dir: output" odd-path-ok "$out"
[ -f "$(ls -d "$HUSK_DATA_DIR"/rootfs/*.ext4 | head -1)" ] || fail "no rootfs disk under the odd data dir"
pass "a data directory whose path has ',', ' ' and ':' works"

# 2. nginx with its logs on /dev/stdout and /dev/stderr, published with -p.
[ -f "$DATA_DIR/nginx.tar" ] || fail "no nginx image (foundation.prep did not run)"
$husk load -i "$DATA_DIR/nginx.tar" --name nginx > "$WORK/load.out" 2>&1 || { cat "$WORK/load.out"; fail "husk load nginx"; }
cat "$WORK/load.out"
$husk run -d --name web -p 8088:80 nginx > /dev/null 2> "$WORK/err" || { cat "$WORK/err"; show_diag; fail "run -d nginx"; }
body=
i=0
while [ $i -lt 60 ]; do
  body=$(timeout 10 wget -q -O - http://127.0.0.1:8088/ 2>/dev/null) && [ -n "$body" ] && break
  sleep 1; i=$((i + 1))
done
check "nginx page through -p" "hello from nginx in a husk microVM" "$body"
i=0
until $husk logs web 2>/dev/null | grep -q '"GET / HTTP/1.[01]" 200' || [ $i -ge 20 ]; do sleep 1; i=$((i + 1)); done
$husk logs web 2>/dev/null | grep '"GET / HTTP/1.[01]" 200' || { $husk logs web; show_diag; fail "the access line is not in husk logs"; }
$husk inspect web | grep -q '"Status": "running"' || { show_diag; fail "nginx is not running after serving"; }
$husk rm -f web > /dev/null || fail "rm -f web"
pass "Debian nginx with logs linked to /dev/stdout serves through -p; access line in husk logs"

# 3. An escaping layer entry: refused, and the error names the entry.
$husk load -i "$DATA_DIR/escape.tar" --name escape > /dev/null 2>&1 || fail "husk load escape"
$husk run --rm escape /bin/sh -c true 2> "$WORK/err"
rc=$?
cat "$WORK/err"
check "hostile layer: status" 125 "$rc"
grep -q 'entry "\.\./\.\./x"' "$WORK/err" || fail "the error does not name the entry: $(cat "$WORK/err")"
check "hostile layer: one line" 1 "$(wc -l < "$WORK/err")"
pass "a layer entry escaping the rootfs is refused with an error naming it"

# 4. Eight concurrent `husk run -d` all start.
pids=
for n in 1 2 3 4 5 6 7 8; do
  $husk run -d --name c$n -m 64m busybox sleep 600 > "$WORK/c$n.out" 2>&1 &
  pids="$pids $!"
done
failed=0
for p in $pids; do wait "$p" || failed=$((failed + 1)); done
[ "$failed" = 0 ] || { cat "$WORK"/c*.out; show_diag
  fail "$failed of 8 concurrent husk run -d failed: $(grep -hv '^[0-9a-f]\{64\}$' "$WORK"/c*.out | head -3 | tr '\n' ' ')"; }
# A guest that stopped by itself while booting or while its container was
# being created is started once more; say so.
grep -h "once more" "$HUSK_DATA_DIR"/containers/*/supervisor.log 2>/dev/null || true
check "8 running" 8 "$($husk ps -q | wc -l)"
$husk rm -f c1 c2 c3 c4 c5 c6 c7 c8 > /dev/null || fail "rm -f the eight"
check "none left" 0 "$($husk ps -aq | wc -l)"
pass "8 concurrent husk run -d all start"
