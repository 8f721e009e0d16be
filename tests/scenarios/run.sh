# Scenario run: `husk run` and the container lifecycle as a user drives
# them, each container in its own microVM: --rm with output and exit status,
# -e/-w/-u, -d then ps/logs/exec/stop/rm, -p with busybox httpd fetched from
# the host, outbound access through NAT, a named volume written by one
# container and read by the next, -t through a real pty, Docker's 125/126/127,
# bad input, SIGKILLed supervisors and VMMs, and husk-vmm's jail. First runs
# build the image's rootfs disk in a builder microVM; a corrupt layer is
# refused there.
. "$HUSK_E2E_DIR/lib/assert.sh"
export HUSK_DATA_DIR=$WORK/husk-data
export HUSK_RUN_DIR=$WORK/husk-run
export PATH="$PATH:/husk/bin"
husk=${HUSK_BIN:-husk}
log=$WORK/run.log

# show_diag: what a failing check needs to be understood.
show_diag() {
  for f in "$HUSK_DATA_DIR"/containers/*/console.log "$HUSK_DATA_DIR"/containers/*/supervisor.log "$HUSK_DATA_DIR"/containers/*/vmm.log; do
    [ -f "$f" ] && show_tail "$f"
  done
}
vmm_count() { ps -o comm 2>/dev/null | grep -c '^husk-vmm' ; }

# 0. Measurement only: with a husk built from before the builder microVM
# (tests/e2e.sh run with HUSK_E2E_EXTRA_FILES=/var/tmp/husk-before/husk),
# the first `run --rm busybox true` of each, alternating, on empty data dirs.
before=${HUSK_BEFORE:-/var/tmp/husk-before/husk}
if [ -x "$before" ]; then
  for i in 1 2; do
    for which in before after; do
      bin=$husk; [ $which = after ] || bin=$before
      t0=$(now_cs)
      HUSK_DATA_DIR=$WORK/m-$which-$i HUSK_RUN_DIR=$WORK/m-run-$which-$i \
        $bin run --rm --timings busybox true 2> "$WORK/m.err" || { cat "$WORK/m.err"; fail "first run ($which)"; }
      t1=$(now_cs)
      echo "first-run $which #$i: $(( (t1 - t0) * 10 )) ms; $(grep start-up "$WORK/m.err")"
      rm -rf "$WORK/m-$which-$i" "$WORK/m-run-$which-$i"
    done
  done
fi

# 1. run --rm: output, stderr and the exit status come back; nothing stays.
out=$($husk run --rm --timings busybox sh -c 'echo hello; echo oops >&2; exit 3' 2> "$WORK/err")
rc=$?
cat "$WORK/err"
check "run --rm status" 3 "$rc"
check "run --rm stdout" hello "$out"
grep -q '^oops$' "$WORK/err" || fail "stderr did not come back: $(cat "$WORK/err")"
grep -q 'start-up .*rootfs .*(built)' "$WORK/err" || fail "first run did not build the rootfs disk: $(cat "$WORK/err")"
check "ps -aq after --rm" "" "$($husk ps -aq)"
pass "run --rm: stdout, stderr, exit status 3, container removed"

# 1b. Without -t, stdio is pipes (as Docker's): /dev/stdout and /dev/stderr
# can be opened (an nginx image's logs are symlinks to them).
out=$($husk run --rm busybox sh -c 'echo a > /dev/stdout; echo b > /dev/stderr' 2> "$WORK/err")
check "run --rm /dev/stdout status" 0 "$?"
check "run --rm /dev/stdout" a "$out"
check "run --rm /dev/stderr" b "$(cat "$WORK/err")"
$husk run -d --name devout busybox sh -c 'echo a > /dev/stdout; echo b > /dev/stderr' > /dev/null || fail "run -d devout"
check "run -d /dev/stdout: wait" 0 "$($husk wait devout)"
out=$($husk logs devout 2> "$WORK/err")
check "logs /dev/stdout" a "$out"
check "logs /dev/stderr" b "$(cat "$WORK/err")"
$husk rm devout > /dev/null || fail "rm devout"
pass "/dev/stdout and /dev/stderr open in a container (run --rm, and -d with logs)"

# 1c. That build ran in a builder microVM and left nothing but the disk; a
# layer corrupted in the store is refused there (the guest checks each
# blob's digest) with one line naming it, and no cache entry is made.
ls "$HUSK_DATA_DIR/rootfs" > "$WORK/cache"
grep -q '^tmp-' "$WORK/cache" && fail "the build left temporaries: $(cat "$WORK/cache")"
check "rootfs disks after the first run" 1 "$(grep -c '^[0-9a-f]\{64\}\.ext4$' "$WORK/cache")"
check "builder VM directories left" "" "$(find "$HUSK_RUN_DIR" -name 'build-*')"
bad=$WORK/bad-data
HUSK_DATA_DIR=$bad $husk images > /dev/null || fail "images (bad data dir)"
layer=$(ls -S "$bad"/images/blobs/sha256/* | head -1)
size=$(stat -c %s "$layer")
printf '\377' | dd of="$layer" bs=1 seek=$((size / 2)) conv=notrunc 2> /dev/null
HUSK_DATA_DIR=$bad $husk run --rm busybox true > "$WORK/out" 2> "$WORK/err"
rc=$?
cat "$WORK/err"
check "run of a corrupt layer: status" 125 "$rc"
check "run of a corrupt layer: stderr lines" 1 "$(wc -l < "$WORK/err")"
grep -q "cannot build the rootfs disk of image .*: the builder microVM: layer sha256:$(basename "$layer"): digest mismatch" "$WORK/err" \
  || fail "corrupt layer not named: $(cat "$WORK/err")"
check "cache after the corrupt layer" "" "$(ls "$bad/rootfs" | grep -v '^scratch-')"
check "containers after the corrupt layer" "" "$(HUSK_DATA_DIR=$bad $husk ps -aq)"
check "husk-vmm processes after the corrupt layer" 0 "$(vmm_count)"
# A builder that does not answer in time (here: a 1 s boot limit) is
# killed; one line says so, and nothing is cached or left running.
slow=$WORK/slow-data
HUSK_BOOT_TIMEOUT=1 HUSK_DATA_DIR=$slow $husk run --rm busybox true > "$WORK/out" 2> "$WORK/err"
rc=$?
cat "$WORK/err"
check "run with a builder that times out: status" 125 "$rc"
check "run with a builder that times out: stderr lines" 1 "$(wc -l < "$WORK/err")"
grep -q "cannot build the rootfs disk of image .*: the builder microVM: .*did not answer within 1 s" "$WORK/err" \
  || fail "builder timeout not reported: $(cat "$WORK/err")"
check "cache after the builder timeout" "" "$(ls "$slow/rootfs" | grep -v '^scratch-')"
check "husk-vmm processes after the builder timeout" 0 "$(vmm_count)"
check "builder VM directories after the timeout" "" "$(find "$HUSK_RUN_DIR" -name 'build-*')"
pass "first run built the rootfs in a builder microVM; a corrupt layer is refused there, a builder that times out is killed; nothing cached"

# 2. The second run of the image does not unpack it again.
out=$($husk run --rm --timings busybox echo again 2> "$WORK/err")
check "second run output" again "$out"
grep -q 'rootfs .*(cached)' "$WORK/err" || fail "second run rebuilt the rootfs: $(cat "$WORK/err")"
grep 'start-up' "$WORK/err"
pass "second run reuses the cached rootfs disk"

# 3. -e, -w, -u, --hostname, --env-file
printf 'FROM_FILE=yes\n# comment\n' > "$WORK/env"
out=$($husk run --rm -e FOO=bar --env-file "$WORK/env" -w /work/dir -u 1000:1000 --hostname box1 busybox \
  sh -c 'echo $FOO $FROM_FILE; pwd; id -u; id -g; hostname; cat /etc/hostname')
check "-e -w -u --hostname" "bar yes
/work/dir
1000
1000
box1
box1" "$out"
pass "-e, --env-file, -w (created), -u, --hostname"

# 4. -d, ps, logs, exec, stop, rm
id=$($husk run -d --name web busybox sh -c 'echo started; trap "echo got-term; exit 0" TERM; while :; do sleep 1; done')
rc=$?
check "run -d status" 0 "$rc"
[ ${#id} = 64 ] || fail "run -d printed [$id], want a 64-hex id"
$husk ps > "$WORK/ps"
cat "$WORK/ps"
grep -q "^$(echo "$id" | cut -c1-12) .*Up .*web$" "$WORK/ps" || fail "ps does not show web running"
i=0; until $husk logs web | grep -q started || [ $i -ge 30 ]; do sleep 1; i=$((i + 1)); done
check "logs" started "$($husk logs web)"
out=$($husk exec web sh -c 'echo in-exec; hostname; exit 4')
rc=$?
check "exec status" 4 "$rc"
check "exec output" "in-exec
$(echo "$id" | cut -c1-12)" "$out"
out=$(echo piped | $husk exec -i web cat)
check "exec -i" piped "$out"
$husk exec web sh -c 'echo kept-in-layer > /layer-file' || fail "exec writing a file"
$husk stop -t 20 web > /dev/null || fail "stop failed"
$husk ps -a | grep -q 'Exited (0) .*web$' || { $husk ps -a; fail "stopped container is not Exited (0)"; }
$husk logs web | grep -q got-term || fail "the container did not get SIGTERM"
check "inspect status" exited "$($husk inspect web | grep '"Status"' | head -1 | sed 's/.*: "\(.*\)".*/\1/')"
# start boots a new microVM; what the container wrote is still there.
$husk start web > /dev/null || fail "start of a stopped container"
$husk ps | grep -q 'Up .*web$' || { $husk ps -a; fail "started container is not running"; }
check "file written before stop, after start" kept-in-layer "$($husk exec web cat /layer-file)"
$husk stop -t 20 web > /dev/null || fail "second stop failed"
check "logs of both runs" "started
got-term
started
got-term" "$($husk logs web)"
$husk rm web > /dev/null || fail "rm failed"
check "ps -aq after rm" "" "$($husk ps -aq)"
check "husk-vmm processes after rm" 0 "$(vmm_count)"
pass "-d, ps, logs, exec (status, stdin), stop (SIGTERM reached the trap), inspect, start keeps the writable layer, rm"

# kill -s, wait, logs --tail and -f.
$husk run -d --name sleeper busybox sh -c 'trap "echo got-usr1; exit 5" USR1; echo up; while :; do sleep 1; done' > /dev/null \
  || fail "run -d sleeper"
i=0; until $husk logs sleeper | grep -q up || [ $i -ge 30 ]; do sleep 1; i=$((i + 1)); done
$husk kill -s USR1 sleeper > /dev/null || fail "kill -s USR1"
check "wait" 5 "$($husk wait sleeper)"
check "logs --tail 1" got-usr1 "$($husk logs --tail 1 sleeper)"
check "logs -f of an exited container" "up
got-usr1" "$(timeout 20 $husk logs -f sleeper)"
$husk rm sleeper > /dev/null || fail "rm sleeper"
pass "kill -s USR1 reaches the trap, wait prints 5, logs --tail and -f"

# create, then start -a; restart; attach.
$husk create --name made busybox sh -c 'echo made-run; exit 2' > /dev/null || fail "create"
$husk ps -a | grep -q 'Created .*made$' || { $husk ps -a; fail "created container not listed as Created"; }
out=$($husk start -a made)
check "start -a status" 2 "$?"
check "start -a output" made-run "$out"
$husk rm made > /dev/null
$husk run -d --name rs busybox sh -c 'echo boot; sleep 600' > /dev/null || fail "run -d rs"
i=0; until $husk logs rs | grep -q boot || [ $i -ge 30 ]; do sleep 1; i=$((i + 1)); done
$husk restart -t 1 rs > /dev/null || fail "restart"
i=0; until [ "$($husk logs rs | grep -c boot)" = 2 ] || [ $i -ge 30 ]; do sleep 1; i=$((i + 1)); done
check "boots after restart" 2 "$($husk logs rs | grep -c boot)"
$husk rm -f rs > /dev/null
$husk run -d --name att busybox sh -c 'sleep 4; echo from-attach; exit 4' > /dev/null || fail "run -d att"
out=$($husk attach att)
check "attach status" 4 "$?"
check "attach output" from-attach "$out"
$husk rm att > /dev/null
pass "create + start -a, restart, attach"

# --memory and --cpus size the microVM (and the container's cgroup).
# (Guests here keep to 1 vCPU: on the 2-CPU nested host, guests holding
# both CPUs can stall it; the vCPU count for --cpus 1.5 is a unit test.)
out=$($husk run --rm -m 100m --cpus 0.5 busybox sh -c 'nproc; cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max; sed -n "s/MemTotal: *\([0-9]*\) kB/\1/p" /proc/meminfo')
check "--cpus 0.5 vCPUs" 1 "$(echo "$out" | sed -n 1p)"
check "-m 100m memory.max" 104857600 "$(echo "$out" | sed -n 2p)"
check "--cpus 0.5 cpu.max" "50000 100000" "$(echo "$out" | sed -n 3p)"
mem=$(echo "$out" | sed -n 4p)
[ "$mem" -gt 150000 ] && [ "$mem" -lt 240000 ] || fail "-m 100m gave a guest of $mem kB"
pass "--cpus 0.5: 1 vCPU and cpu.max 50000 100000; -m 100m: memory.max 104857600, a guest of $mem kB"

# 5. -p: busybox httpd on port 80 in the container, fetched from the host.
$husk run -d --name www -p 8080:80 busybox sh -c 'mkdir -p /www && echo hi-from-httpd > /www/index.html && exec httpd -f -p 80 -h /www' > /dev/null \
  || fail "run -d -p failed"
i=0; got=
while [ $i -lt 60 ]; do
  got=$(timeout 10 wget -q -O - http://127.0.0.1:8080/ 2>/dev/null) && [ -n "$got" ] && break
  sleep 1; i=$((i + 1))
done
check "GET http://127.0.0.1:8080/" hi-from-httpd "$got"
$husk ps | grep -q '0.0.0.0:8080->80/tcp' || { $husk ps; fail "ps does not show the published port"; }
check "port" "80/tcp -> 0.0.0.0:8080" "$($husk port www)"
# The same host port again: a one-line error, status 125, nothing left.
before=$($husk ps -aq | wc -l)
$husk run --rm -p 8080:80 busybox true > "$WORK/out" 2> "$WORK/err"
rc=$?
check "port in use status" 125 "$rc"
grep -q 'already allocated' "$WORK/err" || fail "port in use: $(cat "$WORK/err")"
check "port in use message lines" 1 "$(wc -l < "$WORK/err")"
check "containers after the port error" "$before" "$($husk ps -aq | wc -l)"
pass "-p 8080:80 reaches httpd in the container; a taken port gets one line and status 125"

# 5b. Default deny: another container reaches neither www nor any of the
# host's addresses (its gateway, the host's own NIC), while the host itself
# reaches www and published ports keep working (above).
www_ip=$($husk inspect www | sed -n 's/.*"IPAddress": "\([0-9.]*\)".*/\1/p' | head -1)
[ -n "$www_ip" ] || fail "no IPAddress in inspect www"
check "the host reaches www at $www_ip" hi-from-httpd "$(timeout 10 wget -q -O - "http://$www_ip/" 2>/dev/null)"
mkdir -p "$WORK/hostwww" && echo host-service > "$WORK/hostwww/index.html"
busybox httpd -p 0.0.0.0:8099 -h "$WORK/hostwww" || fail "cannot start the host's own httpd"
check "the host's own service from the host" host-service "$(timeout 10 wget -q -O - http://127.0.0.1:8099/ 2>/dev/null)"
host_nic=$(ip -4 -o addr show dev eth0 2>/dev/null | sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p' | head -1)
out=$($husk run --rm -e WWW="$www_ip" -e NIC="$host_nic" busybox sh -c '
  gw=$(ip route | sed -n "s/^default via \([0-9.]*\).*/\1/p")
  for url in http://$WWW/ http://$gw:8099/ ${NIC:+http://$NIC:8099/}; do
    if timeout 5 wget -q -O - "$url" > /dev/null 2>&1; then echo "reached $url"; else echo "blocked $url"; fi
  done')
echo "$out"
echo "$out" | grep -q "^blocked http://$www_ip/" || fail "a container reached another container: $out"
echo "$out" | grep -q "^blocked http://.*:8099/" || fail "a container reached the host's gateway address: $out"
echo "$out" | grep -q "^reached" && fail "a container reached what default deny forbids: $out"
pkill -f "httpd -p 0.0.0.0:8099" || true
$husk rm -f www > /dev/null || fail "rm -f www"
check "husk-vmm processes after rm -f" 0 "$(vmm_count)"
pass "default deny: no container to container, no host address (gateway${host_nic:+, $host_nic}); the host still reaches the container"

# 6. Outbound access (NAT): a server on the outer machine, through the nested host's network.
[ -n "${HUSK_E2E_OUTSIDE:-}" ] ||
  fail "outbound check: HUSK_E2E_OUTSIDE is not set (tests/scenarios/run.host did not start its HTTP server)"
out=$($husk run --rm busybox timeout 20 wget -q -O - "$HUSK_E2E_OUTSIDE")
check "outbound GET $HUSK_E2E_OUTSIDE" outside-ok "$out"
pass "outbound network access from the container"
out=$($husk run --rm --network none busybox sh -c 'test -e /sys/class/net/lo && echo lo; test -e /sys/class/net/eth0 && echo eth0; ip route 2>/dev/null | grep -c default; ip -o addr show dev lo | grep -o "inet 127.0.0.1/8"; (echo pong | nc -l -p 7777 &) ; sleep 0.5; nc 127.0.0.1 7777 </dev/null')
check "--network none interfaces" "lo
0
inet 127.0.0.1/8
pong" "$out"
pass "--network none has loopback only (up: a server on 127.0.0.1 answers), no eth0 and no route"

# 6b. --read-only, --tmpfs and --pids-limit.
out=$($husk run --rm --read-only --tmpfs /run:exec,size=2m --pids-limit 20 busybox sh -c \
  'touch /x 2>/dev/null || echo root-read-only; cp /bin/busybox /run/busybox && /run/busybox echo exec-ok; grep " /run " /proc/mounts | cut -d" " -f4; cat /sys/fs/cgroup/pids.max')
check "--read-only --tmpfs --pids-limit" "root-read-only
exec-ok
rw,nosuid,nodev,relatime,size=2048k
20" "$out"
pass "--read-only root, a --tmpfs with exec and a size, --pids-limit 20 as pids.max"

# 6c. Capabilities: Docker's default set; --cap-add, --cap-drop ALL and
# no-new-privileges change it as they do with Docker.
caps() { $husk run --rm "$@" busybox sh -c 'grep -E "^(CapEff|NoNewPrivs)" /proc/self/status | tr "\t" " "; mount -t tmpfs none /tmp 2>/dev/null && echo mounted || echo mount-refused'; }
check "default capabilities" "CapEff: 00000000a80425fb
NoNewPrivs: 0
mount-refused" "$(caps)"
check "--cap-add SYS_ADMIN" "CapEff: 00000000a82425fb
NoNewPrivs: 0
mounted" "$(caps --cap-add SYS_ADMIN)"
check "--cap-drop ALL --security-opt no-new-privileges" "CapEff: 0000000000000000
NoNewPrivs: 1
mount-refused" "$(caps --cap-drop ALL --security-opt no-new-privileges)"
pass "capabilities: Docker's default set (a80425fb), --cap-add SYS_ADMIN mounts, --cap-drop ALL and no-new-privileges"

# 7. Volumes: data written by one container is read by the next.
$husk volume create data > /dev/null || fail "volume create"
$husk run --rm -v data:/data busybox sh -c 'echo persisted > /data/f' || fail "writing the volume"
out=$($husk run --rm -v data:/data:ro busybox sh -c 'cat /data/f; touch /data/g 2>/dev/null || echo read-only')
check "volume read by the next container" "persisted
read-only" "$out"
$husk volume ls | grep -q 'local *data' || fail "volume ls does not list data"
$husk run -d --name holder -v data:/data busybox sleep 600 > /dev/null || fail "run -d with a volume"
$husk volume rm data > "$WORK/out" 2> "$WORK/err"
[ $? != 0 ] || fail "removing a volume in use worked"
grep -q 'in use' "$WORK/err" || fail "volume in use: $(cat "$WORK/err")"
$husk run --rm -v data:/data busybox true 2> "$WORK/err"
check "second container on a volume in use" 125 "$?"
grep -q 'in use' "$WORK/err" || fail "volume in use by run: $(cat "$WORK/err")"
$husk rm -f holder > /dev/null
$husk volume rm data > /dev/null || fail "volume rm after the container went"
pass "named volume persists across containers; in use refused for rm and a second container"

# 8. -t through a real pty: size, a tty, Ctrl-C.
printf '<</ # \nstty size; tty\nexit 6\n' | husk-pty 33 101 -- $husk run --rm -it busybox sh > "$WORK/pty.out"
rc=$?
tr -d '\r' < "$WORK/pty.out" > "$WORK/pty.txt"
cat "$WORK/pty.txt"
check "-it status" 6 "$rc"
grep -q '^33 101$' "$WORK/pty.txt" || fail "stty size in the container is not 33 101"
grep -q '^/dev/pts/' "$WORK/pty.txt" || fail "the container has no tty"
printf '<<waiting\n^C\n' | husk-pty 24 80 -- $husk run --rm -it busybox sh -c 'trap "echo got-int; exit 7" INT; echo waiting; while :; do sleep 1; done' > "$WORK/pty2.out"
rc=$?
check "Ctrl-C status" 7 "$rc"
grep -q got-int "$WORK/pty2.out" || fail "Ctrl-C did not reach the container: $(cat "$WORK/pty2.out")"
pass "-it: window size, /dev/pts, Ctrl-C delivered as SIGINT"

# 9. Docker's statuses and bad input: one line each, nothing left behind.
bad() { # bad WANT_STATUS WANT_TEXT ARGS...
  want=$1 text=$2
  shift 2
  $husk "$@" > "$WORK/out" 2> "$WORK/err" < /dev/null
  rc=$?
  check "husk $* status" "$want" "$rc"
  grep -q -- "$text" "$WORK/err" || fail "husk $*: no [$text] in: $(cat "$WORK/err")"
  [ "$(wc -l < "$WORK/err")" -le 2 ] || fail "husk $*: more than one line: $(cat "$WORK/err")"
}
bad 127 'executable file not found' run --rm busybox nosuchcommand
bad 126 'permission denied' run --rm busybox /etc/passwd
bad 125 'unexpected argument' run --bogus-flag busybox true
bad 125 'invalid reference format' run --rm 'Bad:Image:Name' true
bad 125 'no-such-image' run --rm 127.0.0.1:1/no-such-image true
export HUSK_KERNEL=/nonexistent/vmlinux
bad 125 'guest kernel not found' run --rm busybox true
unset HUSK_KERNEL
# No usable KVM (here /dev/kvm is /dev/null in a private mount namespace).
unshare -m sh -c "mount --bind /dev/null /dev/kvm && exec $husk run --rm busybox true" > "$WORK/out" 2> "$WORK/err" < /dev/null
check "no KVM status" 125 "$?"
grep -q 'the microVM did not start: husk-vmm: ' "$WORK/err" || fail "no KVM: $(cat "$WORK/err")"
check "no KVM message lines" 1 "$(wc -l < "$WORK/err")"
$husk run -d --name taken busybox sleep 600 > /dev/null || fail "run -d taken"
bad 125 'already in use' run --rm --name taken busybox true
bad 125 'invalid hostPort' run --rm -p 99999:80 busybox true
bad 125 'named volumes only' run --rm -v /etc:/x busybox true
bad 1 'No such container' stop nosuchcontainer
bad 1 'container is running' rm taken
check "leftover containers" 1 "$($husk ps -aq | wc -l)"
pass "127, 126, 125 for husk's errors; one line each; no stray containers"

# 10. SIGKILL the supervisor, then husk-vmm: exited, removable, nothing left.
sup=$($husk inspect taken | sed -n 's/.*"Pid": \([0-9]*\).*/\1/p' | head -1)
[ -n "$sup" ] && [ "$sup" != 0 ] || fail "no supervisor pid in inspect"
kill -KILL "$sup"
sleep 2
$husk ps -a | grep -q 'Exited (137) .*taken$' || { $husk ps -a; fail "container of a killed supervisor is not Exited (137)"; }
check "husk-vmm after supervisor SIGKILL" 0 "$(vmm_count)"
$husk rm taken > /dev/null || fail "rm of a container whose supervisor was killed"
$husk run -d --name victim busybox sleep 600 > /dev/null || fail "run -d victim"
vmm=$($husk inspect victim | sed -n 's/.*"VmmPid": \([0-9]*\).*/\1/p' | head -1)
kill -KILL "$vmm"
i=0; until $husk ps -a | grep -q 'Exited (137) .*victim$' || [ $i -ge 20 ]; do sleep 1; i=$((i + 1)); done
$husk ps -a | grep -q 'Exited (137) .*victim$' || { $husk ps -a; fail "container of a killed husk-vmm is not Exited (137)"; }
$husk inspect victim | grep -q 'ended unexpectedly' || fail "inspect does not say why it ended"
$husk rm victim > /dev/null || fail "rm victim"

# 11. The jail: every husk-vmm runs as an unprivileged uid with no
# capabilities, no_new_privs and seccomp filters on all its threads (and the
# containers above booted, used disks, the TAP and vsock that way); a system
# call outside its filter kills it, and the container says why.
$husk run -d --name jailed busybox sleep 600 > /dev/null || fail "run -d jailed"
vmm=$($husk inspect jailed | sed -n 's/.*"VmmPid": \([0-9]*\).*/\1/p' | head -1)
[ -n "$vmm" ] && [ -f "/proc/$vmm/status" ] || fail "no husk-vmm for jailed (pid [$vmm])"
field() { sed -n "s/^$2:[[:space:]]*\([^[:space:]]*\).*/\1/p" "$1"; }
cat "/proc/$vmm/status" | grep -E '^(Uid|Gid|Cap|NoNewPrivs|Seccomp)'
check "husk-vmm Seccomp" 2 "$(field "/proc/$vmm/status" Seccomp)"
check "husk-vmm NoNewPrivs" 1 "$(field "/proc/$vmm/status" NoNewPrivs)"
check "husk-vmm CapEff" 0000000000000000 "$(field "/proc/$vmm/status" CapEff)"
check "husk-vmm CapPrm" 0000000000000000 "$(field "/proc/$vmm/status" CapPrm)"
uid=$(field "/proc/$vmm/status" Uid)
[ -n "$uid" ] && [ "$uid" != 0 ] || fail "husk-vmm runs as uid [$uid]"
for t in /proc/$vmm/task/*/status; do
  check "Seccomp of husk-vmm thread $(field "$t" Name)" 2 "$(field "$t" Seccomp)"
done
out=$($husk exec jailed sh -c 'echo jailed > /f; cat /f')
check "exec in a jailed microVM" jailed "$out"
$husk rm -f jailed > /dev/null || fail "rm -f jailed"
HUSK_VMM_TEST_FORBIDDEN_SYSCALL=1 $husk run -d --name sigsys busybox sleep 600 > /dev/null || fail "run -d sigsys"
vmm=$($husk inspect sigsys | sed -n 's/.*"VmmPid": \([0-9]*\).*/\1/p' | head -1)
kill -USR2 "$vmm"
i=0; until $husk ps -a | grep -q 'Exited (137) .*sigsys$' || [ $i -ge 20 ]; do sleep 1; i=$((i + 1)); done
$husk ps -a | grep -q 'Exited (137) .*sigsys$' || { $husk ps -a; fail "container of a seccomp-killed husk-vmm is not Exited (137)"; }
$husk inspect sigsys | grep -q 'husk-vmm was killed by its seccomp filter (SIGSYS)' || { $husk inspect sigsys; fail "inspect does not say seccomp killed husk-vmm"; }
$husk rm sigsys > /dev/null || fail "rm sigsys"
pass "jailed husk-vmm: uid $uid, no capabilities, no_new_privs, seccomp on every thread; a forbidden call: Exited (137), killed by its seccomp filter"
check "containers at the end" "" "$($husk ps -aq)"
check "husk-vmm at the end" 0 "$(vmm_count)"
[ -z "$(ls /sys/class/net | grep '^husk')" ] || fail "stray tap devices: $(ls /sys/class/net)"
pass "SIGKILLed supervisor or husk-vmm: Exited (137), rm works, no stray VM or tap"
