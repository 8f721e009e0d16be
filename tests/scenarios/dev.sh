. "$HUSK_E2E_DIR/lib/assert.sh"
export HUSK_DATA_DIR=$WORK/husk-data HUSK_RUN_DIR=$WORK/husk-run PATH="$PATH:/husk/bin"
husk run --rm -m 100m --cpus 1.5 busybox sh -c 'nproc; ls /sys/fs/cgroup; cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max /sys/fs/cgroup/pids.max; cat /proc/self/cgroup'
echo "rc=$?"
