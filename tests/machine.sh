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
watchdog_pid=
cleanup() {
  local rc=$? again= why="the husk machine wedged"
  [ -z "$watchdog_pid" ] || kill "$watchdog_pid" 2>/dev/null || true
  if [ -n "$data" ]; then
    [ ! -e "$data/wedged" ] || again=1
    # A failed run during which a container's guest triple-faulted (the
    # same emulator faults a guest now and then) is run once more too.
    if [ -z "$again" ] && [ "$failed" != 0 ] && guest_faults; then
      again=1 why="a guest triple-faulted"
    fi
    h machine stop >/dev/null 2>&1 || true
    rm -rf "$data"
  fi
  if [ -n "$again" ]; then
    echo "machine: $passed passed, $failed failed; $why (status 75: run again)"
    exit 75
  fi
  summary "$rc" || exit 1
}
trap cleanup EXIT
# Prints the machine's husk-vmm logs' triple-fault lines; false when none.
guest_faults() {
  local lines
  lines=$(timeout -k 5 60 "$HUSK" --data-dir "$data" machine ssh -- sh -c \
    'grep -h "guest stopped: triple_fault" /var/lib/husk/containers/*/vmm.log' 2>/dev/null) || true
  [ -n "$lines" ] || return 1
  echo "$lines" | head -n 5 | sed 's/^/machine.sh: /' >&2
}

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

# The machine runs KVM under TCG with nested SVM, which now and then wedges
# it (both CPUs stuck, as the nested test host's stalls). A watchdog pings
# it every 20 s; after two pings without an answer it stops the machine and
# marks the run, which then ends with status 75 (./test.sh runs machine.sh
# once more, saying so) instead of hanging.
watchdog() {
  local misses=0
  while sleep 20; do
    if timeout -k 5 30 "$HUSK" --data-dir "$data" machine ssh -- true >/dev/null 2>&1; then
      misses=0
    else
      misses=$((misses + 1))
    fi
    if [ "$misses" -ge 2 ]; then
      touch "$data/wedged"
      say "the husk machine does not answer (wedged); stopping it; console: $(tail -n 3 "$data/machine/console.log" | tr '\n' ' ')"
      pkill -KILL -f "husk-machine.*$data/machine/" || true
      return
    fi
  done
}
watchdog &
watchdog_pid=$!

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

# Template snapshots: a start restores the template of its microVM's shape
# (built by the first such start) instead of booting; --no-snapshot boots.
err=$(HUSK_MACHINE=1 h run --rm --timings busybox true 2>&1 >/dev/null)
echo "$err" | grep -q 'restore [0-9]* ms' && ok || fail "husk run did not restore a template: '$err'"
say "template start: $err"
err=$(HUSK_MACHINE=1 h run --rm --timings --no-snapshot busybox true 2>&1 >/dev/null)
echo "$err" | grep -q 'kernel [0-9]* ms' && ok || fail "husk run --no-snapshot did not boot: '$err'"
say "cold boot: $err"
# Two guests from one template draw their own random numbers, and keep the
# host's time (not the template's).
draw() { HUSK_MACHINE=1 h run --rm busybox sh -c 'cat /proc/sys/kernel/random/uuid; head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n"; echo; date +%s'; }
a=$(draw); b=$(draw)
now=$(h machine ssh -- date +%s)
[ "$(echo "$a" | sed -n 1p)" != "$(echo "$b" | sed -n 1p)" ] && [ -n "$(echo "$a" | sed -n 1p)" ] && ok ||
  fail "two containers from one template have one uuid: '$a' '$b'"
[ "$(echo "$a" | sed -n 2p)" != "$(echo "$b" | sed -n 2p)" ] && [ -n "$(echo "$a" | sed -n 2p)" ] && ok ||
  fail "two containers from one template read the same /dev/urandom bytes: '$a' '$b'"
skew=$(( now - $(echo "$b" | sed -n 3p) ))
[ "${skew#-}" -le 10 ] && ok || fail "a restored guest's clock is $skew s off the host's"
# A volume is one more disk slot: a template of that shape.
HUSK_MACHINE=1 h run --rm -v tplvol:/data busybox sh -c 'echo kept > /data/f' && ok || fail "run with a volume from a template"
err=$(HUSK_MACHINE=1 h run --rm --timings -v tplvol:/data busybox cat /data/f 2>"$data/err")
[ "$err" = kept ] && grep -q 'restore [0-9]* ms' "$data/err" && ok ||
  fail "a volume through a template: '$err' $(cat "$data/err")"
HUSK_MACHINE=1 h volume rm tplvol >/dev/null || true
# A corrupt template is refused: that start boots, and the next builds it again.
h machine ssh -- sh -c 'for d in /var/lib/husk/templates/*/; do truncate -s 100 "$d/state"; done'
out=$(HUSK_MACHINE=1 h run --rm --timings busybox echo fine 2>"$data/err")
[ "$out" = fine ] && grep -q 'kernel [0-9]* ms' "$data/err" && ok ||
  fail "a start with a corrupt template: '$out' $(cat "$data/err")"
HUSK_MACHINE=1 h run --rm --timings busybox true 2>"$data/err"
grep -q 'restore [0-9]* ms (template built in [0-9]* ms)' "$data/err" && ok ||
  fail "the corrupt template was not built again: $(cat "$data/err")"

# A template build killed half-way (SIGKILL to the supervisor building it)
# leaves nothing a later start uses: that start builds the template again.
HUSK_MACHINE=1 h gc >/dev/null
h machine ssh -- sh -c 'husk run -d busybox true >/dev/null 2>&1 &
  for i in $(seq 400); do ls -a /var/lib/husk/templates 2>/dev/null | grep -q "partial$" && break; sleep 0.05; done
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" = "$$" ] && continue
    case "$(tr "\\0" " " < "$p/cmdline" 2>/dev/null)" in *husk\ container-supervise*|*husk-vmm\ --config*) kill -9 "${p#/proc/}" 2>/dev/null;; esac
  done; true'
left=$(h machine ssh -- sh -c 'ls -a /var/lib/husk/templates | grep -v "^\.*$" | grep -v "\.lock$"; true')
echo "$left" | grep -q partial && ! echo "$left" | grep -qv '^\.' && ok || fail "after a killed template build the templates are: '$left'"
HUSK_MACHINE=1 h run --rm --timings busybox true 2>"$data/err"
grep -q 'restore [0-9]* ms (template built in [0-9]* ms)' "$data/err" && ok ||
  fail "the start after a killed template build did not build it again: $(cat "$data/err")"
HUSK_MACHINE=1 h ps -aq | while read -r c; do HUSK_MACHINE=1 h rm -f "$c" >/dev/null; done

# Checkpoints: a running container saved whole (its processes and memory)
# and started again from it; its counter goes on where it was and its
# server answers again on the same published port.
ck=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HUSK_MACHINE=1 h run -d --name ck -p "$ck:80" busybox sh -c 'mkdir -p /w; httpd -p 80 -h /w; i=0; while true; do i=$((i+1)); echo $i > /w/count; echo "tick $i"; sleep 1; done' >/dev/null
count() { curl -s -m 5 "http://127.0.0.1:$ck/count" 2>/dev/null || true; }
before=0
for _ in $(seq 60); do
  before=$(count); [ "${before:-0}" -ge 5 ] 2>/dev/null && break
  sleep 0.5
done
[ "${before:-0}" -ge 5 ] 2>/dev/null && ok || fail "the checkpoint test's counter did not reach 5: '$before'"
out=$(HUSK_MACHINE=1 h checkpoint create ck one 2>&1)
[ "$out" = one ] && ok || fail "checkpoint create: '$out'"
HUSK_MACHINE=1 h ps -a | grep ' ck$' | grep -q 'Exited (0)' && ok || fail "after checkpoint create: $(HUSK_MACHINE=1 h ps -a | grep ' ck$')"
HUSK_MACHINE=1 h checkpoint ls ck | grep -qx one && ok || fail "checkpoint ls does not list one"
HUSK_MACHINE=1 h start --checkpoint one ck && ok || fail "start --checkpoint one"
after=
for _ in $(seq 40); do
  after=$(count); [ -n "$after" ] && break
  sleep 0.5
done
[ "${after:-0}" -ge "$before" ] 2>/dev/null && ok || fail "after the restore the counter is at '$after', before the checkpoint at $before (a fresh start would begin at 1)"
sleep 2
last=$(HUSK_MACHINE=1 h logs ck | tail -1)
[ "${last#tick }" -gt "$before" ] 2>/dev/null && ok || fail "logs after the restore end with '$last' (before: $before)"
[ "$(HUSK_MACHINE=1 h exec ck cat /w/count 2>&1)" -gt 0 ] 2>/dev/null && ok || fail "exec in the restored container"
out=$(HUSK_MACHINE=1 h checkpoint create --leave-running ck two 2>&1)
[ "$out" = two ] && HUSK_MACHINE=1 h ps | grep ' ck$' | grep -q ' Up ' && ok || fail "checkpoint --leave-running: '$out', $(HUSK_MACHINE=1 h ps -a | grep ' ck$')"
err=$(HUSK_MACHINE=1 h checkpoint create ck two 2>&1) && fail "a taken checkpoint name was accepted" || { echo "$err" | grep -q 'already exists' && ok || fail "taken name: '$err'"; }
err=$(HUSK_MACHINE=1 h checkpoint create ck 'a/b' 2>&1) && fail "a bad checkpoint name was accepted" || { echo "$err" | grep -q 'invalid checkpoint name' && ok || fail "bad name: '$err'"; }
HUSK_MACHINE=1 h run -d -t --name ckt busybox sh >/dev/null
err=$(HUSK_MACHINE=1 h checkpoint create ckt x 2>&1) && fail "a terminal container was checkpointed" || { echo "$err" | grep -q 'not supported' && ok || fail "tty checkpoint: '$err'"; }
HUSK_MACHINE=1 h rm -f ckt >/dev/null
HUSK_MACHINE=1 h run -d --rm --name ckrm busybox sleep 1000 >/dev/null
err=$(HUSK_MACHINE=1 h checkpoint create ckrm x 2>&1) && fail "a --rm container was checkpointed and stopped" || { echo "$err" | grep -q 'leave-running' && HUSK_MACHINE=1 h ps | grep -q ' ckrm$' && ok || fail "--rm checkpoint: '$err'"; }
HUSK_MACHINE=1 h rm -f ckrm >/dev/null
HUSK_MACHINE=1 h stop -t 1 ck >/dev/null
err=$(HUSK_MACHINE=1 h start --checkpoint nosuch ck 2>&1) && fail "start from a missing checkpoint worked" || { echo "$err" | grep -q 'no checkpoint nosuch' && ok || fail "missing checkpoint: '$err'"; }
HUSK_MACHINE=1 h checkpoint rm ck one && ! HUSK_MACHINE=1 h checkpoint ls ck | grep -qx one && ok || fail "checkpoint rm"
HUSK_MACHINE=1 h rm -f ck >/dev/null

# Fork: a new container from a running one's microVM as it is now; both
# run on, each with its own address and writable layer.
HUSK_MACHINE=1 h run -d --name fk busybox sh -c 'mkdir -p /w; echo parent > /w/who; httpd -p 80 -h /w; i=0; while true; do i=$((i+1)); echo $i > /w/count; sleep 1; done' >/dev/null
n=0
for _ in $(seq 60); do
  n=$(HUSK_MACHINE=1 h exec fk cat /w/count 2>/dev/null || true); [ "${n:-0}" -ge 3 ] 2>/dev/null && break
  sleep 0.5
done
child=$(HUSK_MACHINE=1 h fork --name fk2 fk 2>&1)
[ "${#child}" = 64 ] && ok || fail "husk fork printed '$child'"
HUSK_MACHINE=1 h ps | grep -q ' fk2$' && HUSK_MACHINE=1 h ps | grep -q ' fk$' && ok || fail "after fork: $(HUSK_MACHINE=1 h ps)"
[ "$(HUSK_MACHINE=1 h exec fk2 cat /w/who 2>&1)" = parent ] && ok || fail "the fork does not have the parent's files"
m=$(HUSK_MACHINE=1 h exec fk2 cat /w/count 2>&1)
[ "${m:-0}" -ge "$n" ] 2>/dev/null && ok || fail "the fork's counter is at '$m', the parent's was at $n before the fork (a fresh start would begin at 1)"
HUSK_MACHINE=1 h exec fk2 sh -c 'echo child > /w/who'
[ "$(HUSK_MACHINE=1 h exec fk cat /w/who 2>&1)" = parent ] && ok || fail "a file written in the fork changed the parent's"
ipof() { HUSK_MACHINE=1 h inspect "$1" | sed -n 's/.*"IPAddress": "\([0-9.]*\)".*/\1/p' | head -1; }
ip1=$(ipof fk)
ip2=$(ipof fk2)
[ -n "$ip2" ] && [ "$ip1" != "$ip2" ] && ok || fail "fork addresses: parent '$ip1', fork '$ip2'"
got1=$(h machine ssh -- timeout 10 wget -q -O - "http://$ip1/who" 2>&1 || true)
got2=$(h machine ssh -- timeout 10 wget -q -O - "http://$ip2/who" 2>&1 || true)
[ "$got1/$got2" = parent/child ] && ok || fail "each serves on its own address: '$got1' from $ip1, '$got2' from $ip2"
# Layers: the first fork's snapshot wrote the pages fk changed since its
# template into a layer; the second maps that layer and writes only what
# changed again. A fork of a fork maps its parent's chain. With fk gone
# (its layers with it), its forks can still be forked: the pages go into
# a layer of their own.
HUSK_MACHINE=1 h fork --name fk3 fk >/dev/null && [ "$(HUSK_MACHINE=1 h exec fk3 cat /w/who 2>&1)" = parent ] && ok || fail "a second fork of fk"
diffs=$(h machine ssh -- sh -c "grep -ho 'a diff of [0-9]* KiB, [0-9]* layers' /var/lib/husk/containers/*/vmm.log" 2>&1)
echo "$diffs" | awk '/, 1 layers/{a=$4} /, 2 layers/{b=$4} END{exit !(a > 0 && b > 0 && b < a)}' && ok || fail "the second fork did not reuse the first's layer: $diffs"
HUSK_MACHINE=1 h fork --name fk4 fk2 >/dev/null && [ "$(HUSK_MACHINE=1 h exec fk4 cat /w/who 2>&1)" = child ] && ok || fail "a fork of a fork"
HUSK_MACHINE=1 h rm -f fk >/dev/null
HUSK_MACHINE=1 h fork --name fk5 fk3 >/dev/null && [ "$(HUSK_MACHINE=1 h exec fk5 cat /w/who 2>&1)" = parent ] && ok || fail "a fork of a fork whose parent is gone"
HUSK_MACHINE=1 h rm -f fk2 fk3 fk4 fk5 >/dev/null

# ps --format (Docker's templates, table, json) and run --label.
HUSK_MACHINE=1 h run -d --name fmt1 -l tier=front -l solo busybox sleep 300 >/dev/null
HUSK_MACHINE=1 h create --name fmt2 busybox true >/dev/null
got=$(HUSK_MACHINE=1 h ps --format '{{.Names}} {{.State}} {{.Labels}}' 2>&1)
echo "$got" | grep -qx 'fmt1 running solo=,tier=front' && ! echo "$got" | grep -q fmt2 && ok || fail "ps --format: '$got'"
got=$(HUSK_MACHINE=1 h ps -a --format 'table {{.Names}}\t{{.Status}}' 2>&1)
echo "$got" | head -1 | grep -q '^NAMES  *STATUS$' && echo "$got" | grep -q '^fmt2  *Created$' && ok || fail "ps --format table: '$got'"
got=$(HUSK_MACHINE=1 h ps --format json 2>&1 | grep '"Names":"fmt1"')
echo "$got" | grep -q '"State":"running"' && echo "$got" | grep -q '"Labels":"solo=,tier=front"' && ok || fail "ps --format json: '$got'"
HUSK_MACHINE=1 h inspect fmt1 | grep -q '"tier": "front"' && ok || fail "inspect shows no labels"
err=$(HUSK_MACHINE=1 h ps --format '{{.Size}}' 2>&1) && fail "ps --format {{.Size}} worked" || { [ "$(echo "$err" | wc -l)" = 1 ] && echo "$err" | grep -q 'not supported' && ok || fail "ps --format {{.Size}}: '$err'"; }
HUSK_MACHINE=1 h rm -f fmt1 fmt2 >/dev/null

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

# The Docker API through the machine: `husk serve` here relays each client
# connection to a `husk serve` inside, where the microVMs run.
sock=$data/docker.sock
HUSK_MACHINE=1 "$HUSK" --data-dir "$data" serve --socket "$sock" 2>"$data/serve.err" &
serve_pid=$!
for _ in $(seq 240); do grep -q 'serving the Docker API' "$data/serve.err" 2>/dev/null && break; sleep 0.5; done
grep -q 'through the husk machine' "$data/serve.err" && ok || fail "husk serve did not start through the machine: $(cat "$data/serve.err")"
d() { DOCKER_HOST=unix://$sock /usr/bin/docker "$@"; }
got=$(d version --format '{{.Server.Os}} {{.Server.APIVersion}}' 2>&1) || true
[ "$got" = "linux 1.41" ] && ok || fail "docker version through the machine: '$got'"
set +e
out=$(d run --rm busybox sh -c 'echo hi-from-docker; exit 3' 2>&1)
rc=$?
set -e
[ "$rc" = 3 ] && [ "$out" = hi-from-docker ] && ok || fail "docker run through the machine: status $rc, '$out'"
dweb=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
d run -d --name dweb -p "127.0.0.1:$dweb:80" busybox httpd -f -p 80 -h /etc >/dev/null 2>&1 || fail "docker run -d -p through the machine"
got=
for _ in $(seq 40); do
  got=$(curl -s -m 5 "http://127.0.0.1:$dweb/hostname") && break
  sleep 0.5
done
[ -n "$got" ] && ok || fail "docker run -p $dweb:80: no answer on this host"
[ "$(d exec dweb cat /etc/hostname 2>&1)" = "$got" ] && ok || fail "docker exec through the machine"
HUSK_MACHINE=1 h ps | grep -q dweb && ok ||
  fail "husk ps does not show the container docker made"
# top: the container's own ps, without the ps itself.
out=$(d top dweb 2>&1)
echo "$out" | grep -q 'httpd -f -p 80' && ! echo "$out" | grep -q 'ps -ef' && ok || fail "docker top: $out"
out=$(HUSK_MACHINE=1 h top dweb 2>&1)
echo "$out" | head -1 | grep -q '^PID' && echo "$out" | grep -q 'httpd -f -p 80' && ok || fail "husk top: $out"
# Files both ways: docker cp (the client tars and untars) and husk cp.
printf 'into-the-container\n' > "$data/cpin.txt"
d cp "$data/cpin.txt" dweb:/tmp/cpin.txt >/dev/null 2>&1 && ok || fail "docker cp into the container"
[ "$(d exec dweb cat /tmp/cpin.txt 2>&1)" = into-the-container ] && ok || fail "the copied file is not in the container"
mkdir -p "$data/cpout"
d cp dweb:/etc "$data/cpout/" >/dev/null 2>&1 && [ "$(cat "$data/cpout/etc/hostname" 2>&1)" = "$got" ] && ok ||
  fail "docker cp out of the container: $(ls -R "$data/cpout" 2>&1 | head -5)"
mkdir -p "$data/tree/sub" && echo deep > "$data/tree/sub/f"
out=$(HUSK_MACHINE=1 h cp "$data/tree" dweb:/tmp/ 2>&1) && [ "$(d exec dweb cat /tmp/tree/sub/f 2>&1)" = deep ] && ok ||
  fail "husk cp of a directory into the container: $out"
out=$(HUSK_MACHINE=1 h cp dweb:/tmp/tree/sub/f "$data/renamed" 2>&1) && [ "$(cat "$data/renamed" 2>&1)" = deep ] && ok ||
  fail "husk cp of a file out under a new name: $out"
set +e
err=$(HUSK_MACHINE=1 h cp dweb:/no/such "$data/x" 2>&1)
rc=$?
set -e
[ "$rc" = 1 ] && [ "$err" = "husk: Could not find the file /no/such in container dweb" ] && ok ||
  fail "husk cp of a missing path: status $rc, '$err'"
newer=$(command -v docker)
if [ "$newer" != /usr/bin/docker ]; then
  DOCKER_HOST=unix://$sock "$newer" ps --format '{{.Names}} {{.Ports}}' | grep -q "^dweb 127.0.0.1:$dweb->80/tcp" && ok ||
    fail "$("$newer" --version): ps through the machine: $(DOCKER_HOST=unix://$sock "$newer" ps 2>&1)"
  out=$(DOCKER_HOST=unix://$sock "$newer" run --rm busybox echo from-the-newer-client 2>&1) || true
  [ "$out" = from-the-newer-client ] && ok || fail "$("$newer" --version): run through the machine: $out"
fi
# docker-compose 1.29: two services on the project's network, one reaching
# the other by service name, a named volume, a published port; a second
# project reaches none of it; down -v leaves nothing behind.
mkdir -p "$data/p1" "$data/p2"
cport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$data/p1/docker-compose.yml" <<YML
version: "3"
services:
  web:
    image: busybox
    command: sh -c 'echo served-by-web > /www/index.html && exec httpd -f -p 80 -h /www'
    restart: unless-stopped
    ports: ["127.0.0.1:$cport:80"]
    volumes: ["site:/www"]
  client:
    image: busybox
    command: sleep 600
volumes:
  site: {}
YML
cat > "$data/p2/docker-compose.yml" <<YML
version: "3"
services:
  other:
    image: busybox
    command: sleep 600
YML
dc() { (cd "$data/$1" && shift && DOCKER_HOST=unix://$sock docker-compose "$@"); }
out=$(dc p1 up -d 2>&1) && ok || fail "docker-compose up -d: $out"
[ "$(dc p1 ps --services --filter status=running 2>/dev/null | sort | tr '\n' ' ')" = "client web " ] && ok ||
  fail "docker-compose ps: $(dc p1 ps 2>&1)"
got=
for _ in $(seq 40); do got=$(curl -s -m 5 "http://127.0.0.1:$cport/") && [ -n "$got" ] && break; sleep 0.5; done
[ "$got" = served-by-web ] && ok || fail "the compose service's published port answered '$got'"
# (Debian's busybox wget crashes with -T: timeout(1) bounds it instead.)
got=$(dc p1 exec -T client timeout 10 wget -q -O - http://web/ 2>&1)
[ "$got" = served-by-web ] && ok || fail "client did not reach web by its service name: '$got'"
dc p1 logs web >/dev/null 2>&1 && ok || fail "docker-compose logs"
webip=$(d inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' p1_web_1 2>&1)
got=$(dc p1 exec -T client timeout 10 wget -q -O - "http://$webip/" 2>&1)
[ "$got" = served-by-web ] && ok || fail "client did not reach web at its address $webip: '$got'"
dc p2 up -d >/dev/null 2>&1 && ok || fail "docker-compose up of the second project"
got=$(dc p2 exec -T other sh -c "timeout 5 wget -q -O - http://web/ 2>/dev/null || echo by-name-blocked; timeout 5 wget -q -O - http://$webip/ 2>/dev/null || echo by-address-blocked" 2>&1)
[ "$got" = "by-name-blocked
by-address-blocked" ] && ok || fail "the second project reached the first's web ($webip): '$got'"
dc p2 down -v >/dev/null 2>&1
out=$(dc p1 down -v 2>&1) && ok || fail "docker-compose down -v: $out"
left=$(d ps -aq --filter label=com.docker.compose.project=p1; d network ls -q --filter name=p1_; d volume ls -q --filter name=p1_)
[ -z "$left" ] && ok || fail "docker-compose down -v left: $left"
# A pull from a registry on this host's loopback (the machine reaches it at
# QEMU's 10.0.2.2).
reg=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$data/registry"
printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$data/registry" "$reg" > "$data/registry.yml"
docker-registry serve "$data/registry.yml" >"$data/registry.log" 2>&1 &
reg_pid=$!
h save -o "$data/pushme" busybox >/dev/null
for _ in $(seq 20); do curl -s -m 2 "http://127.0.0.1:$reg/v2/" >/dev/null && break; sleep 0.5; done
skopeo copy -q --dest-tls-verify=false "oci:$data/pushme" "docker://127.0.0.1:$reg/tools/bb:1" >/dev/null 2>&1 ||
  fail "skopeo could not push to the local registry"
out=$(d pull "localhost:$reg/tools/bb:1" 2>&1) && ok || fail "docker pull through the machine: $out"
d images --format '{{.Repository}}:{{.Tag}}' | grep -qx "localhost:$reg/tools/bb:1" && ok || fail "docker images lacks the pulled image"
kill "$reg_pid" 2>/dev/null || true
. tests/lib/docker-clients.sh
# Stopping the relay loses no container.
kill "$serve_pid"
wait "$serve_pid" 2>/dev/null || true
[ ! -e "$sock" ] && ok || fail "the API socket is left behind"
HUSK_MACHINE=1 h ps | grep -q dweb && ok || fail "dweb is gone after husk serve ended"
HUSK_MACHINE=1 h rm -f dweb >/dev/null
# husk bench measures in the machine; the table and the PNG come out here.
t0=$(date +%s.%N)
set +e
HUSK_MACHINE=1 h bench --runs 1 --density 1 --forks 2 --plot "$data/bench.png" >"$data/bench" 2>"$data/bench.err"
rc=$?
set -e
say "husk bench --runs 1 --density 1 in the machine: $(echo "$(date +%s.%N) - $t0" | bc) s"
cat "$data/bench" >&2
num='[0-9]+\.[0-9]+'
[ "$rc" = 0 ] && ok || fail "husk bench in the machine: status $rc: $(tail -3 "$data/bench.err")"
grep -q '^husk bench: .* on the husk machine (Linux ' "$data/bench" && ok || fail "husk bench did not measure in the machine"
for row in husk husk-snapshot husk-fork namespace; do
  grep -Eq "^$row +$num +$num +$num  " "$data/bench" && ok || fail "husk bench: no figures for $row"
done
grep -Eq "^density: 1 sandbox \(husk run -d\) .*: $num MiB" "$data/bench" && ok || fail "husk bench: no density figures"
grep -Eq "^fork density: 2 forks \(husk fork\) .*: $num MiB, ${num}x the container.s \($num MiB\), ${num}x the first fork.s alone" "$data/bench" && ok || fail "husk bench: no fork density figures"
[ "$(head -c 8 "$data/bench.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] && ok ||
  fail "husk bench wrote no PNG on this host"
[ -z "$(HUSK_MACHINE=1 h ps -aq)" ] && ok || fail "husk bench left containers in the machine"

# Stop keeps the data disk; a command starts the machine again on its own.
kill "$watchdog_pid" 2>/dev/null || true
watchdog_pid=
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
