/*
 * Micro-guest hostile mode: submit one malformed request (case=NAME), report
 * what the device did, then check whether the device still works.
 */
#include "mg.h"

#define CANARY          0xc5
#define TOO_MANY        1100        /* > VIRTQUEUE_MAX_SIZE (1024) */
#define HOSTILE_SECTOR  64

struct hostile_mem {
    struct virtio_blk_outhdr *hdr;
    volatile uint8_t *status;
    uint8_t *buf;                   /* 4 KiB between two canary pages */
    uint8_t *guard_lo, *guard_hi;
    struct vring_desc *table;       /* indirect tables */
    struct vring_desc *table2;
};

static struct hostile_mem hm;

static void set_desc(struct vring_desc *d, uint64_t addr, uint32_t len,
                     uint16_t flags, uint16_t next)
{
    d->addr = addr;
    d->len = len;
    d->flags = flags;
    d->next = next;
}

/* hdr, data and status descriptors of a well-formed read at index base */
static void good_read_chain(struct vring_desc *d, uint16_t base, uint64_t sector)
{
    hm.hdr->type = VIRTIO_BLK_T_IN;
    hm.hdr->ioprio = 0;
    hm.hdr->sector = sector;
    *hm.status = 0xff;
    set_desc(&d[base], (uintptr_t)hm.hdr, 16, VRING_DESC_F_NEXT, base + 1);
    set_desc(&d[base + 1], (uintptr_t)hm.buf, 4096,
             VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, base + 2);
    set_desc(&d[base + 2], (uintptr_t)hm.status, 1, VRING_DESC_F_WRITE, 0);
}

static int wait_used(void)
{
    return vdev_wait(&dev, WAIT_POLL, rdtsc() + ms_to_cycles(cfg.timeout_ms));
}

/* one valid read using the last three descriptors; "ok", "error" or "timeout" */
static const char *probe_read(void)
{
    uint16_t base = dev.qsize - 3;

    good_read_chain(dev.desc, base, 0);
    vdev_add(&dev, base);
    vdev_kick(&dev);
    if (!wait_used()) {
        return "timeout";
    }
    dev.last_used = vdev_used_idx(&dev);
    return *hm.status == VIRTIO_BLK_S_OK ? "ok" : "error";
}

/*
 * Build the malformed request for case name at descriptor 0 and publish it.
 * Returns 0 for an unknown case.
 */
static int build_case(const char *name)
{
    struct vring_desc *d = dev.desc;
    uint16_t q = dev.qsize;
    int indirect = dev.guest_features & (1u << VIRTIO_RING_F_INDIRECT_DESC);
    uint32_t i;

    good_read_chain(d, 0, HOSTILE_SECTOR);
    if (streq(name, "addr-outside-ram")) {
        d[1].addr = ram_end;                        /* first byte past RAM */
    } else if (streq(name, "addr-outside-ram-8k")) {
        d[1].addr = ram_end;                        /* more than one bounce page */
        d[1].len = 0x2000;
    } else if (streq(name, "addr-wrap")) {
        d[1].addr = 0xfffffffffffff000ull;          /* addr + len wraps */
        d[1].len = 0x2000;
    } else if (streq(name, "len-huge")) {
        d[1].len = 0xfffff000u;                     /* far past the end of RAM */
    } else if (streq(name, "desc-loop")) {
        d[1].next = 0;                              /* hdr -> data -> hdr ... */
    } else if (streq(name, "next-out-of-range")) {
        d[1].next = q + 7;
    } else if (streq(name, "head-out-of-range")) {
        dev.avail->ring[vring_slot(&dev, dev.avail_idx)] = q + 3;
        dev.avail_idx++;
        vdev_kick(&dev);
        return 1;
    } else if (streq(name, "avail-idx-jump")) {
        dev.avail_idx += q + 5;                     /* more heads than the ring holds */
        vdev_kick(&dev);
        return 1;
    } else if (streq(name, "zero-length")) {
        d[1].len = 0;
    } else if (streq(name, "header-short")) {
        d[0].len = 8;
    } else if (streq(name, "status-readonly")) {
        d[1].flags = VRING_DESC_F_NEXT;             /* nothing device-writable */
        d[2].flags = 0;
    } else if (streq(name, "unknown-type") || streq(name, "type-barrier-out")) {
        /* type 0x11: unknown to the spec, but bit 0 (OUT) set;
         * type 0x80000001: legacy VIRTIO_BLK_T_BARRIER | OUT */
        hm.hdr->type = streq(name, "unknown-type") ? 0x11 : 0x80000001u;
        memset(hm.buf, 'H', 4096);
        *(uint64_t *)hm.buf = rdtsc();              /* differs on every boot */
        d[1].flags = VRING_DESC_F_NEXT;             /* data: device-readable */
    } else if (streq(name, "indirect-in-indirect")) {
        if (!indirect) {
            return -1;
        }
        good_read_chain(hm.table, 0, HOSTILE_SECTOR);
        hm.table[1].flags |= VRING_DESC_F_INDIRECT;
        hm.table[1].addr = (uintptr_t)hm.table2;
        hm.table[1].len = 3 * 16;
        good_read_chain(hm.table2, 0, HOSTILE_SECTOR);
        set_desc(&d[0], (uintptr_t)hm.table, 3 * 16, VRING_DESC_F_INDIRECT, 0);
    } else if (streq(name, "indirect-bad-size")) {
        if (!indirect) {
            return -1;
        }
        good_read_chain(hm.table, 0, HOSTILE_SECTOR);
        set_desc(&d[0], (uintptr_t)hm.table, 3 * 16 - 8, VRING_DESC_F_INDIRECT, 0);
    } else if (streq(name, "too-many-descs")) {
        if (!indirect) {
            return -1;
        }
        /* an indirect chain longer than the ring and than VIRTQUEUE_MAX_SIZE */
        good_read_chain(hm.table, 0, HOSTILE_SECTOR);
        for (i = 1; i < TOO_MANY - 1; i++) {
            set_desc(&hm.table[i], (uintptr_t)hm.buf, 512,
                     VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, i + 1);
        }
        set_desc(&hm.table[TOO_MANY - 1], (uintptr_t)hm.status, 1, VRING_DESC_F_WRITE, 0);
        set_desc(&d[0], (uintptr_t)hm.table, TOO_MANY * 16, VRING_DESC_F_INDIRECT, 0);
    } else {
        return 0;
    }
    vdev_add(&dev, 0);
    vdev_kick(&dev);
    return 1;
}

static int canary_intact(void)
{
    uint32_t i;

    for (i = 0; i < 4096; i++) {
        if (hm.guard_lo[i] != CANARY || hm.guard_hi[i] != CANARY) {
            return 0;
        }
    }
    return 1;
}

void hostile_run(void)
{
    const char *pre, *observed, *followup = "skipped", *after_reset = "skipped";
    const char *after_pause = "skipped";
    const char *verdict, *err;
    uintptr_t area = mg_alloc(3 * 4096);
    int built, completed;
    uint32_t used_len = 0, used_id = 0;
    uint8_t status, dev_status;
    uint16_t used_before, used_delta;

    hm.table = (struct vring_desc *)mg_alloc(TOO_MANY * 16);
    hm.table2 = (struct vring_desc *)mg_alloc(4096);
    hm.hdr = (struct virtio_blk_outhdr *)mg_alloc(4096);
    hm.status = (volatile uint8_t *)(hm.hdr + 1);
    if (!area || !hm.table || !hm.table2 || !hm.hdr) {
        out_str("\nMICROGUEST-HOSTILE {\"case\":\"");
        out_str(cfg.hostile_case);
        out_str("\",\"observed\":\"guest-error\",\"error\":\"out-of-guest-memory\"}\n");
        mg_finish(0);
    }
    hm.guard_lo = (uint8_t *)area;
    hm.buf = (uint8_t *)area + 4096;
    hm.guard_hi = (uint8_t *)area + 8192;
    memset(hm.guard_lo, CANARY, 4096);
    memset(hm.guard_hi, CANARY, 4096);

    out_str("MICROGUEST-BEGIN\n");
    pre = probe_read();
    out_str("MICROGUEST-CASE ");
    out_str(cfg.hostile_case);
    out_char('\n');

    built = build_case(cfg.hostile_case);
    if (built <= 0) {
        out_str("\nMICROGUEST-HOSTILE {\"case\":\"");
        out_str(cfg.hostile_case);
        out_str(built ? "\",\"observed\":\"not-applicable\",\"error\":\"no-indirect-feature\"}\n"
                      : "\",\"observed\":\"guest-error\",\"error\":\"unknown-case\"}\n");
        mg_finish(0);
    }
    used_before = dev.last_used;
    completed = wait_used();
    if (completed) {
        /* let a misbehaving device run on a little, then count its completions */
        uint64_t until = rdtsc() + ms_to_cycles(50);

        while (rdtsc() < until) {
            cpu_relax();
        }
    }
    used_delta = (uint16_t)(vdev_used_idx(&dev) - used_before);
    status = *hm.status;
    dev_status = vdev_status(&dev);
    if (completed) {
        volatile struct vring_used_elem *e = &dev.used->ring[vring_slot(&dev, dev.last_used)];

        used_id = e->id;
        used_len = e->len;
        dev.last_used = vdev_used_idx(&dev);
        observed = "completed";
        if (status == VIRTIO_BLK_S_OK) {
            verdict = "accepted";
        } else if (status == 0xff) {
            verdict = "completed-without-status";
        } else {
            verdict = "error-status";
        }
        followup = probe_read();
    } else {
        observed = "no-completion";
        verdict = (dev_status & VIRTIO_S_NEEDS_RESET) ? "needs-reset" : "no-completion";
        if (cfg.pause_ms) {
            /* the harness stops and continues the VM meanwhile: a broken
             * device must stay broken until it is reset */
            uint64_t until = rdtsc() + ms_to_cycles(cfg.pause_ms);

            out_str("MICROGUEST-PAUSE\n");
            while (rdtsc() < until) {
                cpu_relax();
            }
            after_pause = probe_read();
        }
    }
    if (!completed || !streq(followup, "ok")) {
        err = vdev_init(&dev, dev.ring_mem, WAIT_POLL);
        after_reset = err ? err : probe_read();
    }

    out_str("\nMICROGUEST-HOSTILE {\"case\":\"");
    out_str(cfg.hostile_case);
    out_char('"');
    out_key_str("pre", pre);
    out_key_str("observed", observed);
    out_key_str("verdict", verdict);
    out_key_u64("status", status);
    out_key_u64("used_id", used_id);
    out_key_u64("used_len", used_len);
    out_key_u64("used_delta", used_delta);
    out_key_u64("dev_status", dev_status);
    out_key_u64("needs_reset", (dev_status & VIRTIO_S_NEEDS_RESET) != 0);
    out_key_str("followup", followup);
    if (cfg.pause_ms) {
        out_key_str("after_pause", after_pause);
    }
    out_key_str("after_reset", after_reset);
    out_key_u64("device_ok", streq(followup, "ok") || streq(after_reset, "ok"));
    out_key_u64("canary_ok", canary_intact());
    out_key_u64("queue_size", dev.qsize);
    out_key_u64("indirect", (dev.guest_features >> VIRTIO_RING_F_INDIRECT_DESC) & 1);
    out_key_u64("ram_end", ram_end);
    out_str("}\n");
    mg_finish(1);
}
