/*
 * Micro-guest: legacy virtio-pci (I/O BAR0) block device and split vring.
 */
#ifndef MG_VIRTIO_H
#define MG_VIRTIO_H

#include "hw.h"

#define VIRTIO_PCI_HOST_FEATURES    0
#define VIRTIO_PCI_GUEST_FEATURES   4
#define VIRTIO_PCI_QUEUE_PFN        8
#define VIRTIO_PCI_QUEUE_NUM        12
#define VIRTIO_PCI_QUEUE_SEL        14
#define VIRTIO_PCI_QUEUE_NOTIFY     16
#define VIRTIO_PCI_STATUS           18
#define VIRTIO_PCI_ISR              19
#define VIRTIO_MSI_CONFIG_VECTOR    20
#define VIRTIO_MSI_QUEUE_VECTOR     22
#define VIRTIO_NO_VECTOR            0xffff

#define VIRTIO_S_ACK                1
#define VIRTIO_S_DRIVER             2
#define VIRTIO_S_DRIVER_OK          4
#define VIRTIO_S_NEEDS_RESET        0x40
#define VIRTIO_S_FAILED             0x80

#define VIRTIO_RING_F_INDIRECT_DESC 28
#define VIRTIO_RING_F_EVENT_IDX     29

#define VRING_DESC_F_NEXT           1
#define VRING_DESC_F_WRITE          2
#define VRING_DESC_F_INDIRECT       4
#define VRING_AVAIL_F_NO_INTERRUPT  1
#define VRING_USED_F_NO_NOTIFY      1

#define VIRTIO_BLK_T_IN             0
#define VIRTIO_BLK_T_OUT            1
#define VIRTIO_BLK_S_OK             0

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct vring_avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[];
};

struct vring_used_elem {
    uint32_t id;
    uint32_t len;
};

struct vring_used {
    uint16_t flags;
    uint16_t idx;
    struct vring_used_elem ring[];
};

struct virtio_blk_outhdr {
    uint32_t type;
    uint32_t ioprio;
    uint64_t sector;
};

enum wait_mode {
    WAIT_POLL,
    WAIT_IRQ,       /* MSI-X to the LAPIC */
    WAIT_INTX,      /* legacy INTx through the 8259 */
    WAIT_POLL_IRQ_ON, /* polls, interrupts left on (INTx, ISR never read) */
};

enum kick_mode {
    KICK_HONOUR,    /* once per batch, unless NO_NOTIFY / avail_event say no */
    KICK_EVERY,     /* after every request, whatever the device asked */
};

struct vdev {
    int index;                      /* among the virtio-blk functions, scan order */
    int bdf;
    uint16_t io;
    uint32_t host_features;
    uint32_t guest_features;
    uint16_t qsize;
    uint16_t qmask;                 /* qsize - 1 when a power of two, else 0 */
    struct vring_desc *desc;
    struct vring_avail *avail;
    volatile struct vring_used *used;
    uintptr_t ring_mem;
    uint16_t avail_idx;             /* driver's shadow of avail->idx */
    uint16_t kicked_idx;            /* avail index at the last publish */
    uint16_t last_used;
    int want_event_idx;             /* set before vdev_init: offer EVENT_IDX */
    int event_idx;                  /* VIRTIO_RING_F_EVENT_IDX negotiated */
    enum kick_mode kick;
    enum wait_mode wait;
    int msix;
    uintptr_t msix_table;           /* MSI-X table (memory BAR) */
    uint8_t msix_vector;            /* IDT vector of the queue's message */
    int intx_line;
    uint64_t capacity;              /* 512-byte sectors */
    uint32_t notifies;
    uint64_t halted_cycles;         /* time spent in hlt waiting for interrupts */
    uint32_t missed_irqs;           /* timer wakeups that found a completion */
};

#define VRING_MEM_BYTES (64 * 1024)

const char *vdev_probe(struct vdev *d);
const char *vdev_probe_nth(struct vdev *d, int nth);
const char *vdev_init(struct vdev *d, uintptr_t ring_mem, enum wait_mode wait);
void vdev_reset(struct vdev *d);
uint8_t vdev_status(struct vdev *d);

static inline uint16_t vring_slot(struct vdev *d, uint16_t idx)
{
    return d->qmask ? (idx & d->qmask) : (idx % d->qsize);
}

/* Put head on the avail ring (not yet visible to the device). */
static inline void vdev_add(struct vdev *d, uint16_t head)
{
    d->avail->ring[vring_slot(d, d->avail_idx)] = head;
    d->avail_idx++;
}

/* EVENT_IDX: the driver's used_event and the device's avail_event words */
static inline volatile uint16_t *vdev_used_event(struct vdev *d)
{
    return (volatile uint16_t *)&d->avail->ring[d->qsize];
}

static inline volatile uint16_t *vdev_avail_event(struct vdev *d)
{
    return (volatile uint16_t *)&d->used->ring[d->qsize];
}

/* virtio 0.9.5 2.4.3.1: crossing event on the way from old to new? */
static inline int vring_need_event(uint16_t event, uint16_t new_idx, uint16_t old)
{
    return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

/*
 * Publish the avail index and notify unless the device asked not to
 * (VRING_USED_F_NO_NOTIFY, or with EVENT_IDX its avail_event); with
 * KICK_EVERY notify whatever it asked.
 */
static inline void vdev_kick(struct vdev *d)
{
    uint16_t old = d->kicked_idx;
    int kick;

    barrier();
    *(volatile uint16_t *)&d->avail->idx = d->avail_idx;
    d->kicked_idx = d->avail_idx;
    mb();
    if (d->kick == KICK_EVERY) {
        kick = 1;
    } else if (d->event_idx) {
        kick = vring_need_event(*vdev_avail_event(d), d->avail_idx, old);
    } else {
        kick = !(d->used->flags & VRING_USED_F_NO_NOTIFY);
    }
    if (kick) {
        outw(d->io + VIRTIO_PCI_QUEUE_NOTIFY, 0);
        d->notifies++;
    }
}

/*
 * With EVENT_IDX, tell the device which used index to interrupt at: the
 * next one when the guest wants interrupts, none in reach when it polls
 * with interrupts suppressed (the used index never runs 0x8000 ahead of
 * what the guest has reaped).
 */
static inline void vdev_set_used_event(struct vdev *d)
{
    if (!d->event_idx) {
        return;
    }
    *vdev_used_event(d) = d->wait == WAIT_POLL ? (uint16_t)(d->last_used + 0x8000)
                                               : d->last_used;
    mb();
}

static inline uint16_t vdev_used_idx(struct vdev *d)
{
    return *(volatile uint16_t *)&d->used->idx;
}

/*
 * Wait until the used index differs from d->last_used or the deadline (TSC)
 * passes; returns 0 on timeout.  Poll mode spins; interrupt modes halt.
 */
int vdev_wait(struct vdev *d, enum wait_mode wait, uint64_t deadline);

/*
 * The same over n devices: until any of them has a used index that differs
 * from its last_used.  Polling checks them in turn; interrupt modes halt
 * until an interrupt (any device's) or the timer.  Halted time and missed
 * interrupts are counted in d[0].
 */
int vdev_wait_any(struct vdev **d, int n, enum wait_mode wait, uint64_t deadline);

#endif
