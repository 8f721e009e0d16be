# Scenario api: `husk serve` driven by Debian's docker CLI (20.10), each
# container in its own microVM: docker run --rm with output and exit status
# (create, attach, wait, start), stdin through a hijacked attach, run -d -p
# with busybox httpd fetched from the host, ps, logs, exec, stop, start, rm -f;
# containers outlive the server and show in husk ps.
. "$HUSK_E2E_DIR/lib/assert.sh"
export HUSK_DATA_DIR=$WORK/husk-data
export HUSK_RUN_DIR=$WORK/husk-run
export PATH="$PATH:/husk/bin"
export HOME=$WORK DOCKER_CONFIG=$WORK/docker-config
husk=${HUSK_BIN:-husk}
sock=$WORK/docker.sock
docker=/usr/bin/docker
[ -x "$docker" ] || fail "no docker client at $docker (tests/scenarios/api.files)"
D() { "$docker" -H "unix://$sock" "$@"; }

show_diag() {
  show_tail "$WORK/serve.log"
  for f in "$HUSK_DATA_DIR"/containers/*/supervisor.log "$HUSK_DATA_DIR"/containers/*/console.log; do
    [ -f "$f" ] && show_tail "$f"
  done
}
start_server() {
  $husk serve --socket "$sock" >> "$WORK/serve.log" 2>&1 &
  server=$!
  i=0
  while [ ! -S "$sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  [ -S "$sock" ] || { show_diag; fail "husk serve did not listen on $sock"; }
}
start_server

# 1. The server answers as Docker's does.
D version > "$WORK/version" 2>&1 || { cat "$WORK/version"; fail "docker version"; }
grep -q 'API version: *1.41 (minimum version 1.24)' "$WORK/version" || fail "docker version: $(cat "$WORK/version")"
pass "docker version shows husk's server (API 1.41)"

# 2. docker run --rm: create, attach, wait (its headers before start), start;
# the output comes back, the container is removed.
out=$(D run --rm busybox echo hi 2> "$WORK/err")
rc=$?
check "docker run --rm status" 0 "$rc"
check "docker run --rm output" hi "$out"
check "docker ps -aq after --rm" "" "$(D ps -aq)"
pass "docker run --rm busybox echo hi prints hi; nothing stays"

# 3. Exit status and stderr.
out=$(D run --rm busybox sh -c 'echo out; echo err >&2; exit 3' 2> "$WORK/err")
rc=$?
check "docker run exit status" 3 "$rc"
check "docker run stdout" out "$out"
grep -q '^err$' "$WORK/err" || { show_diag; fail "stderr did not come back: $(cat "$WORK/err")"; }
pass "docker run: exit status 3 and stderr come back"

# 3b. Hardening flags are applied, and those husk cannot apply are refused.
out=$(D run --rm --read-only --tmpfs /tmp:size=1m --pids-limit 16 busybox sh -c \
  'touch /x 2>/dev/null || echo root-read-only; echo ok > /tmp/f && cat /tmp/f; cat /sys/fs/cgroup/pids.max' 2> "$WORK/err")
check "docker run --read-only --tmpfs --pids-limit" "root-read-only
ok
16" "$out"
out=$(D run --rm --cap-drop ALL --cap-add NET_BIND_SERVICE --security-opt no-new-privileges busybox \
  sh -c 'grep -E "^(CapEff|NoNewPrivs)" /proc/self/status | tr "\t" " "')
check "docker run --cap-drop ALL --cap-add NET_BIND_SERVICE" "CapEff: 0000000000000400
NoNewPrivs: 1" "$out"
D run --rm --security-opt seccomp=unconfined busybox true > /dev/null 2> "$WORK/err" && fail "docker run --security-opt seccomp=unconfined was not refused"
grep -q "husk cannot apply --security-opt" "$WORK/err" || fail "--security-opt refusal: $(cat "$WORK/err")"
pass "docker run --read-only --tmpfs --pids-limit --cap-drop --cap-add --security-opt no-new-privileges: applied; a seccomp profile: refused in one line"

# 4. stdin through the hijacked attach; its half-close keeps output flowing.
out=$(printf 'piped\n' | D run --rm -i busybox sh -c 'cat; echo after-eof')
check "docker run -i" "piped
after-eof" "$out"
pass "docker run -i: stdin reaches the container, output goes on after its EOF"

# 5. run -d -p: busybox httpd reached from this host.
D run -d --name web -p 8081:80 busybox sh -c \
  'echo started; mkdir -p /www; echo hello-api > /www/index.html; exec httpd -f -p 80 -h /www' \
  > "$WORK/id" 2> "$WORK/err" || { show_diag; fail "docker run -d: $(cat "$WORK/err")"; }
got=""
i=0
while [ $i -lt 60 ]; do
  got=$(timeout 10 wget -q -O - http://127.0.0.1:8081/ 2>/dev/null) && [ -n "$got" ] && break
  sleep 1; i=$((i + 1))
done
check "wget through -p 8081:80" hello-api "$got"
D ps > "$WORK/ps"
grep -q '0.0.0.0:8081->80/tcp' "$WORK/ps" || fail "docker ps lacks the port: $(cat "$WORK/ps")"
check "docker logs" started "$(D logs web 2>&1)"
pass "docker run -d -p 8081:80 httpd: wget from the host, ps shows the port, logs"

# 6. The server is one front end: its containers outlive it, husk sees them.
kill "$server"; wait "$server" 2>/dev/null
$husk ps > "$WORK/hps"
grep -q ' web$' "$WORK/hps" || fail "husk ps after the server ended: $(cat "$WORK/hps")"
check "still serving after the API server ended" hello-api "$(timeout 10 wget -q -O - http://127.0.0.1:8081/)"
start_server
check "docker inspect after a server restart" running "$(D inspect -f '{{.State.Status}}' web)"
pass "killing husk serve loses no container; husk ps shows it"

# 6b. docker exec: exec create, start (hijacked) and inspect (the status).
out=$(D exec web sh -c 'echo in-exec; echo to-err >&2; exit 4' 2> "$WORK/exec.err")
rc=$?
check "docker exec status" 4 "$rc"
check "docker exec stdout" in-exec "$out"
check "docker exec stderr" to-err "$(cat "$WORK/exec.err")"
check "docker exec -i" piped "$(echo piped | D exec -i web cat)"
D exec -d web sh -c 'echo detached > /www/d.txt' || { show_diag; fail "docker exec -d"; }
got=
i=0
until got=$(timeout 10 wget -q -O - http://127.0.0.1:8081/d.txt 2>/dev/null) && [ -n "$got" ] || [ $i -ge 20 ]; do sleep 1; i=$((i + 1)); done
check "docker exec -d wrote its file" detached "$got"
D exec nosuch true > "$WORK/err" 2>&1 && fail "docker exec in an unknown container worked"
grep -q 'No such container: nosuch' "$WORK/err" || fail "docker exec nosuch: $(cat "$WORK/err")"
pass "docker exec: stdout, stderr, status 4, -i stdin, -d; an unknown container is refused"

# 7. stop, start, rm -f; the server's events follow them.
t0=$(date +%s)
D stop -t 2 web > /dev/null || { show_diag; fail "docker stop"; }
check "status after stop" exited "$(D inspect -f '{{.State.Status}}' web)"
D start web > /dev/null || { show_diag; fail "docker start"; }
check "status after start" running "$(D inspect -f '{{.State.Status}}' web)"
sleep 1
evs=$(D events --since "$t0" --until "$(( $(date +%s) + 1 ))" --filter container=web --format '{{.Action}}' | tr '\n' ' ')
check "events of stop and start" "kill die stop start " "$evs"
D rm web > "$WORK/err" 2>&1 && fail "docker rm of a running container worked"
grep -q 'cannot remove a running container' "$WORK/err" || fail "docker rm running: $(cat "$WORK/err")"
D rm -f web > /dev/null || { show_diag; fail "docker rm -f"; }
check "containers after rm -f" "" "$(D ps -aq)"
check "husk ps -aq after rm -f" "" "$($husk ps -aq)"
pass "docker stop, start (events kill, die, stop, start), rm (refused while running), rm -f"

# 8. Errors as Docker's.
D run --rm -v /etc:/x busybox true > "$WORK/err" 2>&1
check "host bind mount status" 125 "$?"
grep -q 'husk cannot mount host directories' "$WORK/err" || fail "bind mount: $(cat "$WORK/err")"
D logs nosuch > "$WORK/err" 2>&1
grep -q 'No such container: nosuch' "$WORK/err" || fail "unknown container: $(cat "$WORK/err")"
pass "a host bind mount is refused (125), an unknown container is 'No such container'"

kill "$server"; wait "$server" 2>/dev/null
echo "scenario api: all checks passed"
