# Sourced by tests/e2e.sh and the top-level scripts: installs what is missing
# and builds every artifact a guest boot needs. Sets HUSK_VMM, HUSK_AGENT,
# GUEST_KERNEL and GUEST_INITRD (absolute paths).
# shellcheck shell=bash
HUSK_ROOT=${HUSK_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
HUSK_CACHE_DIR=${HUSK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/husk}
export HUSK_CACHE_DIR
say() { echo "husk: $*" >&2; }

install_packages() {
  local missing=() p
  while read -r p; do
    case "$p" in ''|'#'*) continue ;; esac
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done < "$HUSK_ROOT/tests/apt-packages.txt"
  ((${#missing[@]})) || return 0
  say "installing Debian packages: ${missing[*]}"
  [ "$(id -u)" = 0 ] || { say "need root to install ${missing[*]}"; return 1; }
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
    apt-get update -qq >&2
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

build_all() {
  install_packages
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HUSK_ROOT/target}
  say "building guest kernel (cached under $HUSK_CACHE_DIR/kernel)"
  GUEST_KERNEL=$("$HUSK_ROOT/guest-kernel/build.sh")
  say "building husk, husk-vmm and the static husk-agent"
  (cd "$HUSK_ROOT" && cargo build --release --quiet -p husk-vmm -p husk) >&2
  (cd "$HUSK_ROOT" && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --quiet -p husk-agent -p husk-test-tools --target x86_64-unknown-linux-gnu) >&2
  HUSK_VMM=$CARGO_TARGET_DIR/release/husk-vmm
  HUSK_BIN=$CARGO_TARGET_DIR/release/husk
  HUSK_PTY=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/husk-pty
  HUSK_AGENT=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/husk-agent
  HUSK_VSOCK=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/husk-vsock
  HUSK_AGENT_CLIENT=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/husk-agent-client
  HUSK_HOSTILE=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/husk-hostile
  mkdir -p "$HUSK_CACHE_DIR/initramfs"
  GUEST_INITRD=$HUSK_CACHE_DIR/initramfs/husk-initramfs.cpio.gz
  "$HUSK_ROOT/guest-kernel/mkinitramfs.sh" "$HUSK_AGENT" "$GUEST_INITRD" >/dev/null
  # The test initramfs adds busybox, the guest-side test tools and scripts
  # (tests/guest/*.sh, started with rdinit=/tests/NAME.sh).
  local extra
  extra=$(mktemp -d)
  mkdir -p "$extra/bin" "$extra/tests"
  cp /bin/busybox "$HUSK_VSOCK" "$extra/bin/"
  cp "$HUSK_ROOT"/tests/guest/*.sh "$extra/tests/"
  GUEST_TEST_INITRD=$HUSK_CACHE_DIR/initramfs/husk-test-initramfs.cpio.gz
  "$HUSK_ROOT/guest-kernel/mkinitramfs.sh" "$HUSK_AGENT" "$GUEST_TEST_INITRD" "$extra" >/dev/null
  rm -rf "$extra"
  # husk finds the guest kernel and initramfs next to its binary (api/src/assets.rs).
  install_if_changed "$GUEST_KERNEL" "$CARGO_TARGET_DIR/release/vmlinux"
  install_if_changed "$GUEST_INITRD" "$CARGO_TARGET_DIR/release/initramfs.cpio.gz"
  export HUSK_BIN HUSK_PTY HUSK_VMM HUSK_AGENT HUSK_VSOCK HUSK_AGENT_CLIENT HUSK_HOSTILE GUEST_KERNEL GUEST_INITRD GUEST_TEST_INITRD
}

# install_if_changed SRC DST: copies when the content differs (keeps mtimes
# of unchanged files, so caches keyed by them stay valid).
install_if_changed() {
  cmp -s "$1" "$2" 2>/dev/null || cp "$1" "$2"
}

# True when this machine's CPU has hardware virtualization for /dev/kvm.
have_hw_kvm() {
  [ -z "${HUSK_FORCE_NESTED:-}" ] && [ -c /dev/kvm ] && grep -q -E -m1 '\b(vmx|svm)\b' /proc/cpuinfo
}
