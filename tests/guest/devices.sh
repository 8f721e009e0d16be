#!/bin/busybox sh
# Guest side of scenario devices (runs as PID 1, rdinit=/tests/devices.sh):
# disk serials and read-only flag, read vdb, write a pattern to vda, vsock
# echo in both directions with several connections, then hand over to
# husk-agent (exec /init), which powers the VM off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
grep -q husk.verbose /proc/cmdline && export HUSK_VSOCK_VERBOSE=1
echo "guest: serial vda=$(cat /sys/block/vda/serial) vdb=$(cat /sys/block/vdb/serial) vdb-ro=$(cat /sys/block/vdb/ro)"
echo "guest: vdb-sha256=$(sha256sum /dev/vdb | cut -d' ' -f1)"
yes husk-disk-pattern | head -c 8388608 > /dev/vda && sync && echo "guest: vda written"
if echo x | dd of=/dev/vdb bs=512 count=1 conv=fsync 2>/dev/null; then
  echo "guest: vdb-write=allowed"
else
  echo "guest: vdb-write=refused"
fi
if dd if=/dev/vda of=/dev/null bs=512 skip=16384 count=1 2>/dev/null | grep -q .; then :; fi
HUSK_VSOCK_VERBOSE=${HUSK_VSOCK_VERBOSE:-} husk-vsock guest-echo 5000 8 &
echo_pid=$!
husk-vsock guest-send 2 6000 8 1048576
wait $echo_pid
echo "guest: echo server status $?"
exec /init
