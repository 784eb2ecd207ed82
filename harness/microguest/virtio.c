/*
 * Micro-guest: legacy virtio-pci block device setup.
 */
#include "virtio.h"

#define PCI_CAP_ID_MSIX 0x11

const char *vdev_probe(struct vdev *d)
{
    return vdev_probe_nth(d, 0);
}

/* The nth virtio-blk function (PCI scan order), enabled; its vector is
 * VEC_MSIX_QUEUE for the first, VEC_MSIX_DISK + nth for the others. */
const char *vdev_probe_nth(struct vdev *d, int nth)
{
    uint32_t bar0;
    uint16_t cmd;

    memset(d, 0, sizeof(*d));
    d->index = nth;
    d->msix_vector = nth == 0 ? VEC_MSIX_QUEUE : VEC_MSIX_DISK + nth;
    d->bdf = pci_find_nth(0x1af4, 0x1001, nth);
    if (d->bdf < 0) {
        return "no-virtio-blk";
    }
    bar0 = pci_read32(d->bdf, 0x10);
    if (!(bar0 & 1)) {
        return "bar0-not-io";
    }
    d->io = bar0 & 0xfffc;
    if (!d->io) {
        return "bar0-unassigned";
    }
    cmd = pci_read16(d->bdf, 0x04);
    cmd |= 0x7;                 /* I/O, memory, bus master */
    cmd &= ~0x400;              /* INTx enabled */
    pci_write16(d->bdf, 0x04, cmd);
    d->intx_line = pci_read8(d->bdf, 0x3c);
    return NULL;
}

static const char *msix_setup(struct vdev *d)
{
    int pos = pci_find_cap(d->bdf, PCI_CAP_ID_MSIX);
    uint32_t table, bar;
    uint16_t ctrl;
    uintptr_t entry;
    int bir;

    if (!pos) {
        return "no-msix-capability";
    }
    ctrl = pci_read16(d->bdf, pos + 2);
    table = pci_read32(d->bdf, pos + 4);
    bir = table & 7;
    bar = pci_read32(d->bdf, 0x10 + 4 * bir);
    if (bar & 1) {
        return "msix-bar-not-memory";
    }
    bar &= ~0xfu;
    if (!bar) {
        return "msix-bar-unassigned";
    }
    entry = bar + (table & ~7u);        /* entry 0: the queue */
    d->msix_table = entry;
    writel(entry + 0, LAPIC_BASE);      /* destination: APIC ID 0 */
    writel(entry + 4, 0);
    writel(entry + 8, d->msix_vector);  /* fixed, edge */
    writel(entry + 12, 0);              /* unmasked */
    ctrl = (ctrl | 0x8000) & ~0x4000;   /* enable, no function mask */
    pci_write16(d->bdf, pos + 2, ctrl);
    d->msix = 1;
    return NULL;
}

void vdev_reset(struct vdev *d)
{
    outb(d->io + VIRTIO_PCI_STATUS, 0);
    inb(d->io + VIRTIO_PCI_ISR);
}

uint8_t vdev_status(struct vdev *d)
{
    return inb(d->io + VIRTIO_PCI_STATUS);
}

static uintptr_t align_up(uintptr_t v, uintptr_t a)
{
    return (v + a - 1) & ~(a - 1);
}

const char *vdev_init(struct vdev *d, uintptr_t ring_mem, enum wait_mode wait)
{
    uint16_t io = d->io;
    uint16_t cfg;
    uintptr_t used;
    const char *err;

    vdev_reset(d);
    outb(io + VIRTIO_PCI_STATUS, VIRTIO_S_ACK);
    outb(io + VIRTIO_PCI_STATUS, VIRTIO_S_ACK | VIRTIO_S_DRIVER);
    d->host_features = inl(io + VIRTIO_PCI_HOST_FEATURES);
    d->guest_features = d->host_features & (1u << VIRTIO_RING_F_INDIRECT_DESC);
    if (d->want_event_idx) {
        d->guest_features |= d->host_features & (1u << VIRTIO_RING_F_EVENT_IDX);
    }
    d->event_idx = !!(d->guest_features & (1u << VIRTIO_RING_F_EVENT_IDX));
    d->wait = wait;
    outl(io + VIRTIO_PCI_GUEST_FEATURES, d->guest_features);

    if (wait == WAIT_IRQ && !d->msix) {
        err = msix_setup(d);
        if (err) {
            return err;
        }
    }
    if (d->msix) {
        outw(io + VIRTIO_MSI_CONFIG_VECTOR, VIRTIO_NO_VECTOR);
    }

    outw(io + VIRTIO_PCI_QUEUE_SEL, 0);
    d->qsize = inw(io + VIRTIO_PCI_QUEUE_NUM);
    if (d->qsize == 0) {
        return "queue-0-absent";
    }
    d->qmask = (d->qsize & (d->qsize - 1)) ? 0 : d->qsize - 1;
    used = align_up(ring_mem + 16 * d->qsize + 6 + 2 * d->qsize, 4096);
    if (used + 6 + 8 * d->qsize - ring_mem > VRING_MEM_BYTES) {
        return "queue-too-large";
    }
    memset((void *)ring_mem, 0, VRING_MEM_BYTES);
    d->ring_mem = ring_mem;
    d->desc = (struct vring_desc *)ring_mem;
    d->avail = (struct vring_avail *)(ring_mem + 16 * d->qsize);
    d->used = (volatile struct vring_used *)used;
    d->avail_idx = 0;
    d->kicked_idx = 0;
    d->last_used = 0;
    if (wait == WAIT_POLL) {
        d->avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
    }
    vdev_set_used_event(d);
    outl(io + VIRTIO_PCI_QUEUE_PFN, ring_mem >> 12);
    if (d->msix) {
        outw(io + VIRTIO_MSI_QUEUE_VECTOR, wait == WAIT_IRQ ? 0 : VIRTIO_NO_VECTOR);
        if (wait == WAIT_IRQ && inw(io + VIRTIO_MSI_QUEUE_VECTOR) != 0) {
            return "msix-vector-rejected";
        }
    }
    if (wait == WAIT_INTX) {
        if (d->intx_line == 0 || d->intx_line >= 16) {
            return "no-intx-line";
        }
        if (d->index == 0) {
            intx_line = d->intx_line;
            intx_ack_port = io + VIRTIO_PCI_ISR;
        } else {
            intx_add(d->index, d->intx_line, io + VIRTIO_PCI_ISR);
        }
    }

    /* device config: capacity (le64) at 20, or 24 once MSI-X is enabled */
    cfg = io + (d->msix ? 24 : 20);
    d->capacity = inl(cfg) | ((uint64_t)inl(cfg + 4) << 32);

    outb(io + VIRTIO_PCI_STATUS, VIRTIO_S_ACK | VIRTIO_S_DRIVER | VIRTIO_S_DRIVER_OK);
    return NULL;
}

static int any_used(struct vdev **d, int n)
{
    int i;

    for (i = 0; i < n; i++) {
        if (vdev_used_idx(d[i]) != d[i]->last_used) {
            return 1;
        }
    }
    return 0;
}

int vdev_wait_any(struct vdev **d, int n, enum wait_mode wait, uint64_t deadline)
{
    uint64_t t0;
    int i;

    if (wait == WAIT_POLL || wait == WAIT_POLL_IRQ_ON) {
        for (;;) {
            if (any_used(d, n)) {
                return 1;
            }
            if (rdtsc() > deadline) {
                return 0;
            }
            cpu_relax();
        }
    }
    for (;;) {
        uint32_t irqs, ticks;

        irq_disable();
        for (i = 0; i < n; i++) {
            vdev_set_used_event(d[i]);
        }
        if (any_used(d, n)) {
            return 1;
        }
        t0 = rdtsc();
        if (t0 > deadline) {
            return 0;
        }
        irqs = irq_count;
        ticks = timer_ticks;
        safe_halt();
        irq_disable();
        d[0]->halted_cycles += rdtsc() - t0;
        /* Woken by the timer alone, with a completion waiting: the device
         * did not interrupt for it (only the 10 Hz timer bounds the wait) */
        if (irq_count == irqs && timer_ticks != ticks && any_used(d, n)) {
            d[0]->missed_irqs++;
        }
    }
}

int vdev_wait(struct vdev *d, enum wait_mode wait, uint64_t deadline)
{
    return vdev_wait_any(&d, 1, wait, deadline);
}
