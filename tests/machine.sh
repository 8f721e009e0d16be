#!/usr/bin/env bash
# The husk machine end to end: starts the helper VM with QEMU (TCG + SVM),
# runs commands in it (stdio, exit status, /dev/kvm), publishes a port from
# it to this host, and stops it, keeping its data disk. Each check counts;
# the last line is "machine: N passed, M failed" and the status is non-zero
# when a check failed (a failure that leaves nothing to test stops the run).
#
# Needs qemu-system-x86, linux-image-cloud-amd64, busybox-static, e2fsprogs
# and the microVM files: $HUSK_LIB_DIR, or $HUSK_KERNEL/$HUSK_INITRD/$HUSK_VMM,
# else ~/.cache/husk/kernel/*/vmlinux, ~/.cache/husk/initramfs/husk-initramfs.cpio.gz
# and target/release/husk-vmm. $HUSK is the husk binary (default: built here).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

say() { echo "machine.sh: $*" >&2; }
passed=0 failed=0
ok() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); say "FAIL: $*"; }
die() { fail "$*"; exit 1; }
summary() {
  local rc=$1
  if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then
    failed=1
    say "FAIL: stopped by an unexpected error (status $rc)"
  fi
  echo "machine: $passed passed, $failed failed"
  [ "$failed" = 0 ]
}
data=
cleanup() {
  local rc=$?
  if [ -n "$data" ]; then
    h machine stop >/dev/null 2>&1 || true
    rm -rf "$data"
  fi
  summary "$rc" || exit 1
}
trap cleanup EXIT

if [ -z "${HUSK:-}" ]; then
  cargo build -q -p husk
  HUSK=$CARGO_TARGET_DIR/debug/husk
fi
if [ -z "${HUSK_LIB_DIR:-}" ]; then
  lib=$(mktemp -d)
  kernel=${HUSK_KERNEL:-$(ls ~/.cache/husk/kernel/*/vmlinux 2>/dev/null | tail -1)}
  initrd=${HUSK_INITRD:-$HOME/.cache/husk/initramfs/husk-initramfs.cpio.gz}
  vmm=${HUSK_VMM:-$CARGO_TARGET_DIR/release/husk-vmm}
  for f in "$kernel" "$initrd" "$vmm"; do
    [ -f "$f" ] || die "microVM file ${f:-(guest kernel)} missing: run ./run.sh or set HUSK_LIB_DIR"
  done
  ln -s "$kernel" "$lib/vmlinux"
  ln -s "$initrd" "$lib/initramfs.cpio.gz"
  ln -s "$vmm" "$lib/husk-vmm"
  export HUSK_LIB_DIR=$lib
fi
unset HUSK_KERNEL HUSK_INITRD HUSK_VMM HUSK_IN_MACHINE

data=$(mktemp -d)
h() { "$HUSK" --data-dir "$data" "$@"; }

t0=$(date +%s.%N)
h machine start >/dev/null && ok || die "machine start"
t1=$(date +%s.%N)
say "cold start (initramfs build, disk creation, boot) to ready: $(echo "$t1 - $t0" | bc) s"
grep -a 'serving after' "$data/machine/console.log" | sed 's/^/machine.sh: console: /' >&2 || true

status=$(h machine status)
[ "$(echo "$status" | head -1)" = running ] && ok || die "status after start: $status"
pid=$(echo "$status" | sed -n 's/^pid: //p')

h machine ssh -- sh -c 'iptables -t nat -S >/dev/null && mkfs.ext4 -V 2>&1 | grep -q mke2fs' && ok ||
  fail "iptables or mkfs.ext4 do not work in the machine"

h machine start | grep -q 'already running' && ok || fail "second start is not a no-op"

set +e
out=$(h machine ssh -- sh -c 'test -c /dev/kvm && echo kvm; echo to-stderr >&2; exit 4' 2>"$data/err")
rc=$?
set -e
[ "$rc" = 4 ] && ok || fail "ssh exit status $rc, want 4"
[ "$out" = kvm ] && ok || fail "ssh stdout '$out', want kvm"
[ "$(cat "$data/err")" = to-stderr ] && ok || fail "ssh stderr '$(cat "$data/err")'"

[ "$(printf 'a\nb\n' | h machine ssh -- wc -l)" = 2 ] && ok || fail "stdin is not passed through"

# husk commands are forwarded (HUSK_MACHINE=1 forces it on any host).
HUSK_MACHINE=1 h images | grep -q '^REPOSITORY' && ok || fail "forwarded 'husk images' printed no table"
set +e
err=$(HUSK_MACHINE=1 h rmi no-such-image 2>&1 >/dev/null)
rc=$?
set -e
[ "$rc" = 1 ] && [ "$err" = "husk: No such image: no-such-image" ] && ok ||
  fail "forwarded 'husk rmi' gave status $rc and '$err'"

# A published port: the machine reports it, the client adds the forward.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
h machine ssh -- sh -c "mkdir -p /www && echo hello-from-the-machine > /www/index.html &&
  httpd -p $port -h /www &&
  echo '[{\"host_ip\":\"127.0.0.1\",\"host_port\":$port,\"proto\":\"tcp\"}]' > /run/husk-machine-ports.json"
got=$(curl -s -m 20 "http://127.0.0.1:$port/") && ok || fail "no answer on the published port $port"
[ "$got" = hello-from-the-machine ] && ok || fail "published port answered '$got'"
h machine ssh -- sh -c 'echo "[]" > /run/husk-machine-ports.json'
if curl -s -m 5 "http://127.0.0.1:$port/" >/dev/null; then fail "port $port still forwarded after it was unpublished"; else ok; fi

# A port taken on this host gives a one-line error, and the command still runs.
python3 -c "import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1',$port)); s.listen(); time.sleep(20)" &
taker=$!
sleep 0.5
err=$(h machine ssh -- sh -c "echo '[{\"host_ip\":\"127.0.0.1\",\"host_port\":$port,\"proto\":\"tcp\"}]' > /run/husk-machine-ports.json" 2>&1)
kill "$taker"
echo "$err" | grep -q "cannot publish port 127.0.0.1:$port/tcp: it is already in use on this host" && ok ||
  fail "no port-in-use error: '$err'"
h machine ssh -- sh -c 'echo "[]" > /run/husk-machine-ports.json' 2>/dev/null

# Containers: `husk run` goes to the machine and boots a microVM there;
# its -p port reaches this host while it runs.
set +e
out=$(HUSK_MACHINE=1 h run --rm busybox sh -c 'echo from-a-container; exit 3')
rc=$?
set -e
[ "$rc" = 3 ] && [ "$out" = from-a-container ] && ok || fail "husk run in the machine: status $rc, output '$out'"
# Default deny in the machine: a container does not reach this host's
# loopback through QEMU's 10.0.2.2, which the machine itself reaches.
mkdir -p "$data/www" && echo loopback-service > "$data/www/index.html"
lo_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$data/www" "$lo_port" >/dev/null 2>&1 &
lo_pid=$!
sleep 1
got=$(h machine ssh -- timeout 10 wget -q -O - "http://10.0.2.2:$lo_port/" 2>/dev/null || true)
[ "$got" = loopback-service ] && ok || fail "the machine itself does not reach 10.0.2.2:$lo_port: '$got'"
out=$(HUSK_MACHINE=1 h run --rm busybox sh -c "timeout 5 wget -q -O - http://10.0.2.2:$lo_port/ 2>/dev/null && echo reached || echo blocked" 2>&1)
[ "$out" = blocked ] && ok || fail "a container in the machine reached this host's loopback: '$out'"
kill "$lo_pid" 2>/dev/null || true
web=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HUSK_MACHINE=1 h run -d --name web -p "$web:80" busybox httpd -f -p 80 -h /etc >/dev/null
got=
for _ in $(seq 40); do
  got=$(curl -s -m 5 "http://127.0.0.1:$web/hostname") && break
  sleep 0.5
done
[ -n "$got" ] && ok || fail "no answer from the container on port $web (forwards: $(cat "$data/machine/ports.json"))"
HUSK_MACHINE=1 h rm -f web >/dev/null
if curl -s -m 5 "http://127.0.0.1:$web/hostname" >/dev/null; then fail "port $web still forwarded after rm"; else ok; fi

# Images come from this host's store: one loaded here under a new name
# runs in the machine (copied in once), with --env-file read here.
h save -o "$data/layout" busybox >/dev/null
h load -i "$data/layout" --name localtool >/dev/null
printf 'FROM_HOST_FILE=yes\n' > "$data/env"
out=$(HUSK_MACHINE=1 h run --rm --env-file "$data/env" localtool:latest sh -c 'echo transferred $FROM_HOST_FILE')
[ "$out" = "transferred yes" ] && ok || fail "a host-loaded image in the machine: '$out'"
h machine ssh -- husk images | grep -q '^localtool ' && ok || fail "the machine's store has no localtool"
set +e
err=$(HUSK_MACHINE=1 h run --rm no-such-local-image-xyz:1 true 2>&1 >/dev/null)
rc=$?
set -e
[ "$rc" = 125 ] && ok || fail "unknown image through the machine: status $rc: $err"

# husk bench measures in the machine; the table and the PNG come out here.
t0=$(date +%s.%N)
set +e
HUSK_MACHINE=1 h bench --runs 1 --density 1 --plot "$data/bench.png" >"$data/bench" 2>"$data/bench.err"
rc=$?
set -e
say "husk bench --runs 1 --density 1 in the machine: $(echo "$(date +%s.%N) - $t0" | bc) s"
cat "$data/bench" >&2
num='[0-9]+\.[0-9]+'
[ "$rc" = 0 ] && ok || fail "husk bench in the machine: status $rc: $(tail -3 "$data/bench.err")"
grep -q '^husk bench: .* on the husk machine (Linux ' "$data/bench" && ok || fail "husk bench did not measure in the machine"
for row in husk namespace; do
  grep -Eq "^$row +$num +$num +$num  " "$data/bench" && ok || fail "husk bench: no figures for $row"
done
grep -Eq "^density: 1 sandbox \(husk run -d\) .*: $num MiB" "$data/bench" && ok || fail "husk bench: no density figures"
[ "$(head -c 8 "$data/bench.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] && ok ||
  fail "husk bench wrote no PNG on this host"
[ -z "$(HUSK_MACHINE=1 h ps -aq)" ] && ok || fail "husk bench left containers in the machine"

# Stop keeps the data disk; a command starts the machine again on its own.
h machine ssh -- sh -c 'echo kept > /var/lib/husk/marker'
h machine stop >/dev/null
st=$(ps -o stat= -p "$pid" || true)
[ -z "$st" ] || [ "${st:0:1}" = Z ] && ok || fail "qemu $pid still runs after stop"
[ "$(h machine status)" = stopped ] && ok || fail "status after stop: $(h machine status)"
# Two commands at once start one machine, which says so once.
t0=$(date +%s.%N)
h machine ssh -- cat /var/lib/husk/marker >"$data/out1" 2>"$data/err1" &
h machine ssh -- cat /var/lib/husk/marker >"$data/out2" 2>"$data/err2"
wait $!
t1=$(date +%s.%N)
[ "$(cat "$data/out1" "$data/out2")" = "kept
kept" ] && ok || fail "the data disk lost its content: '$(cat "$data/out1" "$data/out2")'"
[ "$(cat "$data/err1" "$data/err2" | grep -c 'starting the husk machine')" = 1 ] && ok ||
  fail "want one start message on stderr: $(cat "$data/err1" "$data/err2")"
[ "$(pgrep -c -f "husk-machine.*$data/machine/")" = 1 ] && ok || fail "not exactly one machine runs"
say "warm start (cached initramfs) + command: $(echo "$t1 - $t0" | bc) s"
h machine stop >/dev/null
