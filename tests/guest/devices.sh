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
# The 8 MiB vda's last sector reads whole, the one past its end reads empty
# (the host's scenario checks this line).
last=$(dd if=/dev/vda bs=512 skip=16383 count=1 2>/dev/null | wc -c)
past=$(dd if=/dev/vda bs=512 skip=16384 count=1 2>/dev/null | wc -c)
echo "guest: vda-end last-sector=$last past-end=$past"
if [ -e /sys/class/net/eth0 ]; then
  echo "guest: eth0 mac=$(cat /sys/class/net/eth0/address)"
  ip link set lo up
  ip addr add 169.254.77.2/24 dev eth0
  ip link set eth0 up
  nc -l -p 7000 -e cat &
  nc_pid=$!
  ( sleep 90; kill $nc_pid 2>/dev/null ) &
  i=0
  until ping -c 1 -W 1 169.254.77.1 > /dev/null 2>&1 || [ $i -ge 60 ]; do i=$((i + 1)); done
  if ping -c 3 -W 2 169.254.77.1 > /dev/null 2>&1; then echo "guest: ping host ok"; else echo "guest: ping host FAILED"; fi
fi
husk-vsock guest-echo 5000 8 &
echo_pid=$!
husk-vsock guest-send 2 6000 8 1048576
wait $echo_pid
echo "guest: echo server status $?"
[ -n "${nc_pid:-}" ] && wait $nc_pid
exec /init
