#!/usr/bin/env bash
# Builds husk's guest kernel (an ELF vmlinux with the PVH entry) from Debian's
# linux-source-6.12 package: tinyconfig + microvm.config, everything built in.
# The result is cached under $HUSK_CACHE_DIR/kernel/<sha256 of fragment + source version>/
# and its path is printed as the only line on stdout. Progress goes to stderr,
# one line a step; the configure and build output goes to
# $HUSK_CACHE_DIR/kernel/build.log, whose tail is shown when a step fails.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fragment="$here/microvm.config"
cache_root=${HUSK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/husk}
log() { echo "guest-kernel: $*" >&2; }

pkgs=(linux-source-6.12 flex bison bc libelf-dev libssl-dev make gcc xz-utils)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then echo "guest-kernel: need root to install ${missing[*]}" >&2; exit 1; fi
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >&2
fi

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.12)
key=$( (cat "$fragment"; echo "linux-source-6.12 $src_version") | sha256sum | cut -c1-16)
out="$cache_root/kernel/$key"
if [ -f "$out/vmlinux" ]; then
  echo "$out/vmlinux"
  exit 0
fi

tarball=/usr/src/linux-source-6.12.tar.xz
[ -f "$tarball" ] || { echo "guest-kernel: $tarball missing after installing linux-source-6.12" >&2; exit 1; }
mkdir -p "$cache_root/kernel"
work=$(mktemp -d "$cache_root/kernel/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
build_log="$cache_root/kernel/build.log"
: > "$build_log"
# step DESCRIPTION CMD...: runs CMD with its output in the build log; on
# failure shows the log's tail and stops.
step() {
  local what=$1
  shift
  echo "+ $*" >> "$build_log"
  "$@" >> "$build_log" 2>&1 || {
    log "$what failed; last lines of $build_log:"
    tail -n 40 "$build_log" >&2
    exit 1
  }
}
log "unpacking $tarball (source $src_version)"
tar -xf "$tarball" -C "$work"
cd "$work"/linux-source-6.12
start=$(date +%s)
log "configuring (tinyconfig + $(basename "$fragment")); output in $build_log"
step "make tinyconfig" make -s ARCH=x86_64 tinyconfig
step "merge_config.sh" scripts/kconfig/merge_config.sh -m .config "$fragment"
step "make olddefconfig" make -s ARCH=x86_64 olddefconfig
# Every option the fragment sets must survive olddefconfig (a dependency we
# missed silently drops an option otherwise).
bad=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=n) opt=${line%=n}; grep -q "^$opt=" .config && { log "$opt should be off"; bad=1; } ;;
    CONFIG_*) grep -qx "$line" .config || { log "option not applied: $line (got: $(grep "^${line%%=*}=" .config || echo unset))"; bad=1; } ;;
  esac
done < <(grep -v '^#' "$fragment" | sed '/^$/d')
[ "$bad" = 0 ] || { echo "guest-kernel: config fragment not fully applied" >&2; exit 1; }
log "building vmlinux with $(nproc) jobs"
step "building vmlinux" make -s ARCH=x86_64 -j"$(nproc)" vmlinux
took=$(( $(date +%s) - start ))
mkdir -p "$out.tmp"
cp vmlinux "$out.tmp/vmlinux"
cp .config "$out.tmp/config"
echo "build_seconds=$took" > "$out.tmp/build-info"
echo "source_version=$src_version" >> "$out.tmp/build-info"
rm -rf "$out"
mv "$out.tmp" "$out"
log "built in ${took}s: $(du -h "$out/vmlinux" | cut -f1)"
echo "$out/vmlinux"
