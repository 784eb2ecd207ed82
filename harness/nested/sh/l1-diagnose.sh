
pid=$(cat @L2_DIR@/qemu.pid 2>/dev/null)
echo "L2 QEMU pid $pid; halt_poll_ns $(cat /sys/module/kvm/parameters/halt_poll_ns)"
for f in /sys/module/kvm_amd/parameters/*; do echo "kvm_amd.$(basename $f)=$(cat $f)"; done | tr '
' ' '
echo
for t in /proc/$pid/task/*; do
    echo "thread $(basename $t) $(cut -d' ' -f2,3 $t/stat) wchan=$(cat $t/wchan 2>/dev/null)"
    cat $t/stack 2>/dev/null | head -n 8 | sed 's/^/    /'
done
for f in /sys/kernel/debug/kvm/*-*/vcpu0/* /sys/kernel/debug/kvm/*-*/halt_* \
         /sys/kernel/debug/kvm/halt_* /sys/kernel/debug/kvm/exits /sys/kernel/debug/kvm/irq_injections \
         /sys/kernel/debug/kvm/nmi_injections /sys/kernel/debug/kvm/irq_exits \
         /sys/kernel/debug/kvm/hypercalls /sys/kernel/debug/kvm/req_event; do
    [ -f "$f" ] && echo "$f $(cat $f 2>/dev/null | head -c 200)"
done
if [ "$(cat /sys/kernel/tracing/tracing_on 2>/dev/null)" = 1 ]; then
    echo 0 > /sys/kernel/tracing/tracing_on
    echo "kvm trace: the last 25 events, then the last 150 before the vCPU stopped entering L2:"
    tail -n 25 /sys/kernel/tracing/trace
    echo "..."
    grep -v -e kvm_vcpu_wakeup -e kvm_apic_accept_irq /sys/kernel/tracing/trace | tail -n 150
fi
echo "dmesg:"; dmesg | tail -n 15
