#!/usr/bin/env bash
# Packs husk's guest initramfs: a newc cpio (gzip) whose /init is the static
# husk-agent. Usage: mkinitramfs.sh AGENT_BINARY OUTPUT [EXTRA_DIR]
# EXTRA_DIR, when given, is copied over the root (test payloads).
set -euo pipefail
agent=${1:?usage: mkinitramfs.sh AGENT OUTPUT [EXTRA_DIR]}
out=${2:?usage: mkinitramfs.sh AGENT OUTPUT [EXTRA_DIR]}
extra=${3:-}
[ -x "$agent" ] || { echo "mkinitramfs: agent $agent is not an executable file" >&2; exit 1; }
if readelf -l "$agent" 2>/dev/null | grep -q 'Requesting program interpreter'; then
  echo "mkinitramfs: $agent is dynamically linked; the guest has no libraries" >&2; exit 1
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{dev,proc,sys,run,tmp,etc,mnt}
install -m 0755 "$agent" "$root/init"
# Without /dev/console in the archive the kernel cannot give init a console.
if [ "$(id -u)" = 0 ]; then
  mknod -m 600 "$root/dev/console" c 5 1
  mknod -m 666 "$root/dev/null" c 1 3
fi
[ -z "$extra" ] || cp -a "$extra"/. "$root"/
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner 0:0) | gzip -1 > "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
