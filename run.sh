#!/usr/bin/env bash
# The main job: installs and builds what is missing (Debian packages, the
# guest kernel, husk, husk-vmm, the static husk-agent and the initramfs),
# then runs the built-in default image in its own microVM:
#
#   husk run --rm busybox echo hello from a husk microVM
#
# Arguments, when given, replace `busybox echo ...` (./run.sh -it busybox sh).
# On a host without vmx/svm the container runs inside the husk machine, a
# helper VM that the first command starts and later commands reuse
# (`husk machine stop` ends it).
set -euo pipefail
cd "$(dirname "$0")"
. tests/lib/build.sh
build_all
say "husk is $HUSK_BIN (its guest kernel, initramfs and husk-vmm are beside it)"
if [ $# = 0 ]; then
  set -- busybox echo "hello from a husk microVM"
fi
exec "$HUSK_BIN" run --rm "$@"
