#!/bin/busybox sh
# Guest side of bench-devices: sequential read of /dev/vda, then a vsock
# sink for the host's throughput run; hands over to husk-agent at the end.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
cs() { read -r up _ < /proc/uptime; echo "${up%.*}${up#*.}"; }
t0=$(cs)
dd if=/dev/vda of=/dev/null bs=1M 2>/dev/null
t1=$(cs)
echo "guest: blk-read-cs=$((t1 - t0)) bytes=$(cat /sys/block/vda/size)"
husk-vsock guest-sink 7000
exec /init
