#!/bin/sh
# /init of the harness's L1 (busybox sh): a KVM host for the 2012 QEMU.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
hostname l1
seed-entropy /etc/random-seed || echo "harness-l1: entropy seeding failed"
for m in $(cat /etc/l1-modules-order); do
    # module.param=value on the kernel command line, as modprobe would pass them
    opts=$(tr ' ' '\n' </proc/cmdline | sed -n "s/^$m\.//p")
    insmod /lib/modules/l1/$m.ko $opts || echo "harness-l1: insmod $m $opts failed"
done
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done
ip link set lo up
ip addr add @GUEST_IP@ dev eth0
ip link set eth0 up
ip route add default via @GUEST_GW@
dropbear -r /etc/dropbear/dropbear_rsa_host_key -s -p 22 -E 2>>/tmp/dropbear.log
mkdir -p @L2_DIR@
if [ -c /dev/kvm ]; then
    echo "@L1_KVM@ ok $(dmesg | grep -i 'nested paging' | tail -n 1)"
else
    echo "@L1_KVM@ missing: $(dmesg | grep -iE 'kvm|svm' | tail -n 3 | tr '\n' ' ')"
fi
echo 1 > /proc/sys/kernel/printk
# a beat a second; a gap of @L1_FREEZE_S@ s or more on L1's own clock means L1 did not run
: > @L1_FREEZES@
(while :; do sleep 1; cut -d' ' -f1 /proc/uptime; done |
    awk 'p && $1 - p >= @L1_FREEZE_S@ { printf "%.1f %.1f\n", $1, $1 - p; fflush() } { p = $1 }' \
    >> @L1_FREEZES@) </dev/null >/dev/null 2>&1 &
echo "@L1_READY@ $(cut -d' ' -f1 /proc/uptime)"
while true; do sleep 3600; done
