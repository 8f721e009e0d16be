# Sourced by tests/machine.sh while `husk serve` relays to the husk machine:
# docker-py and the docker CLI used as a user would beyond run/ps/cp
# (terminals, logs -f, port, stop, tag/rmi) and bad input. Uses machine.sh's
# ok, fail, d and $sock, $data.

# docker-py (Debian's python3-docker): run with remove=True, detached run,
# wait and logs, exec_run, and its NotFound for an unknown container.
set +e
out=$(DOCKER_HOST=unix://$sock timeout 300 python3 - 2>&1 <<'PY'
import docker
c = docker.from_env()
print(c.containers.run("busybox", "echo hi-from-docker-py", remove=True).decode().strip())
ct = c.containers.run("busybox", ["sh", "-c", "echo one; echo two >&2; exit 4"], detach=True)
print(ct.wait()["StatusCode"])
print(ct.logs().decode().replace("\n", " ").strip())
ct.remove()
ct = c.containers.run("busybox", "sleep 300", detach=True)
r = ct.exec_run("sh -c 'echo in-exec; exit 5'")
print(r.exit_code, r.output.decode().strip())
ct.remove(force=True)
try:
    c.containers.get("no-such-container")
except docker.errors.NotFound as e:
    print("not found:", e.explanation)
PY
)
set -e
[ "$out" = "hi-from-docker-py
4
one two
5 in-exec
not found: No such container: no-such-container" ] && ok || fail "docker-py through the machine: $out"

# Terminals, under script(1): run -t gets a pty; exec -it too (its stdin
# kept open: script sends an EOF character when its own stdin ends).
out=$(DOCKER_HOST=unix://$sock timeout 120 script -qec "/usr/bin/docker run --rm -t busybox tty" /dev/null </dev/null | tr -d '\r')
[ "$out" = /dev/pts/0 ] && ok || fail "docker run -t: '$out'"
tport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
d run -d --name ticker -p "127.0.0.1:$tport:80" busybox \
  sh -c 'i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done' >/dev/null 2>&1 || fail "docker run -d ticker"
out=$( (sleep 10) | DOCKER_HOST=unix://$sock timeout 120 script -qec "/usr/bin/docker exec -it ticker sh -c 'tty; echo in-exec-it'" /dev/null | tr -d '\r')
[ "$out" = "/dev/pts/1
in-exec-it" ] || [ "$out" = "/dev/pts/0
in-exec-it" ] && ok || fail "docker exec -it: '$out'"

# logs -f follows, port shows the binding, stop ends a shell that ignores
# SIGTERM with SIGKILL after -t.
# (head ends the follow: docker logs then dies of SIGPIPE, status 141.)
out=$(timeout 60 env DOCKER_HOST=unix://$sock /usr/bin/docker logs -f ticker | head -3 | tr '\n' ' ' || true)
[ "$out" = "tick 1 tick 2 tick 3 " ] && ok || fail "docker logs -f: '$out'"
all=$(d logs ticker 2>/dev/null | wc -l)
recent=$(d logs --since 3s ticker 2>/dev/null | wc -l)
old=$(d logs --until 1h ticker 2>/dev/null | wc -l)
[ "$recent" -ge 1 ] && [ "$recent" -le 5 ] && [ "$all" -gt "$recent" ] && [ "$old" = 0 ] && ok ||
  fail "docker logs --since 3s: $recent of $all lines; --until 1h: $old lines"
out=$(d port ticker 2>&1)
[ "$out" = "80/tcp -> 127.0.0.1:$tport" ] && ok || fail "docker port: '$out'"
# A taken port: the start fails with Docker's words and status; the
# container stays created (as Docker leaves it), with no microVM running.
set +e
err=$(d run -d --name clash -p "127.0.0.1:$tport:80" busybox sleep 60 2>&1)
rc=$?
set -e
st=$(d inspect -f '{{.State.Status}} {{.State.Pid}}' clash 2>&1)
[ "$rc" = 125 ] && echo "$err" | grep -q 'port is already allocated' && [ "$st" = "created 0" ] && ok ||
  fail "docker run -p with a taken port: status $rc: $err; state $st"
d rm clash >/dev/null 2>&1 || true
# pause and unpause: the microVM's vCPUs stop and resume.
d pause ticker >/dev/null 2>&1 || fail "docker pause"
paused=$(d inspect -f '{{.State.Status}} {{.State.Paused}}' ticker 2>&1)
d unpause ticker >/dev/null 2>&1 || fail "docker unpause"
resumed=$(d inspect -f '{{.State.Status}} {{.State.Paused}}' ticker 2>&1)
[ "$paused" = "paused true" ] && [ "$resumed" = "running false" ] && ok ||
  fail "docker pause/unpause: '$paused', then '$resumed'"
t0=$(date +%s)
d stop -t 1 ticker >/dev/null 2>&1 || fail "docker stop"
took=$(($(date +%s) - t0))
out=$(d inspect -f '{{.State.Status}} {{.State.ExitCode}}' ticker 2>&1)
[ "$out" = "exited 137" ] && [ "$took" -le 20 ] && ok || fail "docker stop -t 1: '$out' after $took s"

# Bad input: a taken name, malformed JSON, an unsupported option; each a
# clear message and nothing half-made.
before=$(d ps -aq | wc -l)
set +e
err=$(d run --name ticker busybox true 2>&1)
rc=$?
set -e
[ "$rc" = 125 ] && echo "$err" | grep -q 'The container name "/ticker" is already in use' && ok ||
  fail "docker run with a taken name: status $rc: $err"
code=$(curl -s -o "$data/bad.json" -w '%{http_code}' --unix-socket "$sock" -X POST \
  -H 'Content-Type: application/json' -d '{bad' http://husk/v1.41/containers/create)
[ "$code" = 400 ] && grep -q '"message":"malformed JSON in the request body' "$data/bad.json" && ok ||
  fail "malformed JSON: $code $(cat "$data/bad.json")"
set +e
err=$(d run --rm --privileged busybox true 2>&1)
rc=$?
set -e
[ "$rc" = 125 ] && echo "$err" | grep -q 'husk cannot run privileged containers' && ok ||
  fail "docker run --privileged: status $rc: $err"
[ "$(d ps -aq | wc -l)" = "$before" ] && ok || fail "bad requests left containers: $(d ps -a)"
d rm ticker >/dev/null 2>&1 || fail "docker rm ticker"

# tag and rmi.
d tag busybox husk-test/tagged:1 >/dev/null 2>&1 && d images --format '{{.Repository}}:{{.Tag}}' | grep -qx husk-test/tagged:1 &&
  ok || fail "docker tag"
out=$(d rmi husk-test/tagged:1 2>&1)
[ "$out" = "Untagged: husk-test/tagged:1" ] && ! d images --format '{{.Repository}}:{{.Tag}}' | grep -q husk-test/tagged && ok ||
  fail "docker rmi: $out"

# Restart policies: on-failure:2 runs a failing command three times, then
# leaves it exited; always restarts a command that ends, until docker stop.
d run -d --name flaky --restart on-failure:2 busybox sh -c 'echo ran; exit 3' >/dev/null 2>&1 || fail "docker run --restart on-failure:2"
st=
for _ in $(seq 180); do
  st=$(d inspect -f '{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}' flaky 2>&1)
  [ "$st" = "exited 2 3" ] && break
  sleep 1
done
runs=$(d logs flaky 2>&1 | grep -c '^ran$' || true)
policy=$(d inspect -f '{{.HostConfig.RestartPolicy.Name}}:{{.HostConfig.RestartPolicy.MaximumRetryCount}}' flaky 2>&1)
[ "$st" = "exited 2 3" ] && [ "$runs" = 3 ] && [ "$policy" = on-failure:2 ] && ok ||
  fail "restart on-failure:2: state '$st', $runs runs, policy $policy"
d rm flaky >/dev/null 2>&1 || true
d run -d --name again --restart always busybox sh -c 'echo up; sleep 1' >/dev/null 2>&1 || fail "docker run --restart always"
st=
for _ in $(seq 180); do
  st=$(d inspect -f '{{.State.Status}} {{.RestartCount}}' again 2>&1)
  case "$st" in "running "[1-9]*) break ;; esac
  sleep 1
done
d stop -t 1 again >/dev/null 2>&1 || fail "docker stop of a container with --restart always"
sleep 6
st2=$(d inspect -f '{{.State.Status}}' again 2>&1)
case "$st" in "running "[1-9]*) [ "$st2" = exited ] && ok ;; *) false ;; esac ||
  fail "restart always: '$st' before docker stop, '$st2' 6 s after it"
d rm -f again >/dev/null 2>&1 || true
code=$(curl -s -o "$data/conflict.json" -w '%{http_code}' --unix-socket "$sock" -X POST -H 'Content-Type: application/json' \
  -d '{"Image":"busybox","HostConfig":{"AutoRemove":true,"RestartPolicy":{"Name":"always"}}}' http://husk/v1.41/containers/create)
[ "$code" = 400 ] && grep -q 'conflicting options: --restart and --rm' "$data/conflict.json" && ok ||
  fail "create with AutoRemove and a restart policy: $code $(cat "$data/conflict.json")"
