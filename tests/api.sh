#!/usr/bin/env bash
# `husk serve` driven by the real clients nobody here wrote, on this host
# and with no VM: Debian's docker CLI (20.10), the newer docker on PATH
# when there is one, docker-py. Containers are created, inspected, listed
# and removed but never started (that needs a guest: tests/scenarios/api.sh).
# Usage: HUSK=path/to/husk tests/api.sh
set -euo pipefail
HUSK=${HUSK:?set HUSK to the husk binary}
work=$(mktemp -d)
sock=$work/docker.sock
export HUSK_DATA_DIR=$work/data HUSK_RUN_DIR=$work/run HUSK_MACHINE=0
# create checks that the microVM files exist; it never runs them here.
mkdir -p "$work/lib" && touch "$work/lib/husk-vmm" "$work/lib/vmlinux" "$work/lib/initramfs.cpio.gz"
export HUSK_LIB_DIR=$work/lib
"$HUSK" serve --socket "$sock" 2> "$work/serve.log" &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done

passed=0 failed=0
ok() { echo "ok: $1"; passed=$((passed + 1)); }
bad() { echo "FAIL: $1"; failed=$((failed + 1)); }
# check NAME COMMAND...: the command succeeds.
check() { local n=$1; shift; if out=$("$@" 2>&1); then ok "$n"; else bad "$n: $out"; fi; }
# has NAME WANT COMMAND...: the command's output (stdout+stderr) contains WANT.
has() {
  local n=$1 want=$2; shift 2
  out=$("$@" 2>&1) || true
  if [[ $out == *"$want"* ]]; then ok "$n"; else bad "$n: wanted '$want' in: $out"; fi
}

clients=(/usr/bin/docker)
newer=$(command -v docker || true)
if [ -n "$newer" ] && [ "$newer" != /usr/bin/docker ]; then clients+=("$newer"); fi
for docker in "${clients[@]}"; do
  D=("$docker" -H "unix://$sock")
  v=$("$docker" --version | cut -d' ' -f3 | tr -d ,)
  has "$v: version shows the server" "API version:      1.41 (minimum version 1.24)" "${D[@]}" version
  has "$v: info" "Server Version:" "${D[@]}" info
  has "$v: images lists the built-in busybox" "busybox" "${D[@]}" images
  check "$v: volume create" "${D[@]}" volume create "vol$RANDOM-a"
  has "$v: volume ls" "vol" "${D[@]}" volume ls
  id=$("${D[@]}" create --name "web-$RANDOM" -l app=web -p 8081:80 -v data:/srv -e A=1 busybox echo hi)
  [[ $id =~ ^[0-9a-f]{64}$ ]] && ok "$v: create prints the id" || bad "$v: create: $id"
  has "$v: inspect shows labels" '"app": "web"' "${D[@]}" inspect "$id"
  has "$v: inspect shows the port binding" '"HostPort": "8081"' "${D[@]}" inspect "$id"
  has "$v: ps -a lists it Created" "Created" "${D[@]}" ps -a
  has "$v: ps filters by label" "${id:0:12}" "${D[@]}" ps -aq --filter label=app=web
  [ -z "$("${D[@]}" ps -aq --filter label=app=db)" ] && ok "$v: a label filter excludes" || bad "$v: label filter"
  has "$v: husk ps shows the API's container" "${id:0:12}" "$HUSK" ps -a
  has "$v: a host bind mount is refused" "husk cannot mount host directories" "${D[@]}" create -v /etc:/x busybox true
  has "$v: privileged is refused" "husk cannot run privileged containers" "${D[@]}" create --privileged busybox true
  has "$v: a taken name is a conflict" "is already in use" "${D[@]}" create --name "$("${D[@]}" inspect -f '{{.Name}}' "$id" | tr -d /)" busybox true
  has "$v: volume rm of a used volume" "volume is in use" "${D[@]}" volume rm data
  has "$v: exec in a container that is not running" "is not running" "${D[@]}" exec "$id" true
  # Events: the watcher sees a container made and removed (it looks every 250 ms).
  t0=$(date +%s)
  ev=$("${D[@]}" create --name "ev-$RANDOM" -l ev=1 busybox true)
  sleep 0.7; "${D[@]}" rm "$ev" > /dev/null; sleep 0.7
  evs=$("${D[@]}" events --since "$t0" --until "$(( $(date +%s) + 1 ))" --filter label=ev=1 --format '{{.Action}} {{.Actor.ID}}' 2>&1 | tr '\n' ' ')
  [ "$evs" = "create $ev destroy $ev " ] && ok "$v: events: create and destroy, filtered by label" || bad "$v: events: '$evs'"
  has "$v: exec in an unknown container" "No such container: nosuch" "${D[@]}" exec nosuch true
  check "$v: rm" "${D[@]}" rm "$id"
  has "$v: rm again: no such container" "No such container: $id" "${D[@]}" rm "$id"
  has "$v: an unknown image" "No such image" "${D[@]}" inspect --type image nosuch:1
  has "$v: pull errors come in the stream" "Connection refused" "${D[@]}" pull localhost:1/nope
  check "$v: tag" "${D[@]}" tag busybox "mine/bb:$RANDOM"
  has "$v: rmi" "Untagged: mine/bb" "${D[@]}" rmi "$("${D[@]}" images --format '{{.Repository}}:{{.Tag}}' | grep mine/bb | head -1)"
  check "$v: volume prune" "${D[@]}" volume prune -f
  [ -z "$("${D[@]}" volume ls -q)" ] && ok "$v: prune left nothing" || bad "$v: volumes left: $("${D[@]}" volume ls -q)"
  # docker run: create, attach, wait, start: the start comes only once the
  # wait's headers arrived; it fails here (no microVM: the first one it
  # needs is the builder of the image's rootfs disk), and --rm removes.
  has "$v: run reaches start" "the builder microVM: cannot start $work/lib/husk-vmm" timeout 60 "${D[@]}" run --rm busybox echo hi
  [ -z "$("${D[@]}" ps -aq)" ] && ok "$v: run --rm left nothing" || bad "$v: containers left: $("${D[@]}" ps -a)"
done

has "too new an API version" "client version 1.99 is too new. Maximum supported API version is 1.41" \
  curl -s --unix-socket "$sock" http://d/v1.99/version
has "headers on every response" "ostype: linux" curl -si --unix-socket "$sock" http://d/_ping
has "malformed JSON is a 400" "400" curl -s -o /dev/null -w '%{http_code}' --unix-socket "$sock" \
  -H 'Content-Type: application/json' -d '{nope' http://d/v1.41/containers/create
rid=$(/usr/bin/docker -H "unix://$sock" create -t busybox sh)
has "resize of a container that is not running" "is not running" \
  curl -s -X POST --unix-socket "$sock" "http://d/v1.41/containers/$rid/resize?h=30&w=100"
has "resize needs numbers" "invalid h" \
  curl -s -X POST --unix-socket "$sock" "http://d/v1.41/containers/$rid/resize?h=x&w=100"
has "events with malformed filters is a 400" "invalid filters" \
  curl -s --unix-socket "$sock" 'http://d/v1.41/events?filters=%7Bnope'
has "exec inspect of an unknown instance" "No such exec instance: nope" \
  curl -s --unix-socket "$sock" http://d/v1.41/exec/nope/json
has "exec start of an unknown instance is a 404" "404" curl -s -o /dev/null -w '%{http_code}' \
  -X POST -H 'Content-Type: application/json' -d '{}' --unix-socket "$sock" http://d/v1.41/exec/nope/start
/usr/bin/docker -H "unix://$sock" rm "$rid" > /dev/null

if python3 - "$sock" <<'PY'
import sys, docker
c = docker.DockerClient(base_url="unix://" + sys.argv[1])
assert c.version()["ApiVersion"] == "1.41"
ct = c.containers.create("busybox", "echo hi", name="py1", labels={"k": "v"})
assert ct.status == "created" and ct.labels == {"k": "v"}, ct.attrs
assert [x.name for x in c.containers.list(all=True, filters={"label": "k=v"})] == ["py1"]
try:
    c.containers.get("nope"); raise SystemExit("no NotFound")
except docker.errors.NotFound:
    pass
try:
    c.images.get("nope:1"); raise SystemExit("no ImageNotFound")
except docker.errors.ImageNotFound:
    pass
assert c.volumes.create("pyvol").name == "pyvol"
c.volumes.get("pyvol").remove()
ct.remove()
assert c.containers.list(all=True) == []
PY
then ok "docker-py"; else bad "docker-py"; fi

kill $server; wait $server 2>/dev/null || true
[ ! -e "$sock" ] && ok "the socket goes with the server" || bad "socket left behind"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
