/*
 * Micro-guest safety modes: things a guest may legally do that the data
 * plane must survive without losing or corrupting a request.
 *
 * mode=msix-churn (with wait=irq): the benchmark loop, and every churn=N
 * batches of completions one of two steps, in turn:
 *   - mask the queue's MSI-X vector while requests are in flight, wait for a
 *     completion, check that the device set the pending bit instead of
 *     sending the message (LAPIC IRR clear), unmask and check that the
 *     pending message arrives;
 *   - re-target the queue to the other MSI-X table entry (VIRTIO_MSI_QUEUE_
 *     VECTOR 0 <-> 1; entry 1 raises IDT vector 0x42).
 *   The result line gets a "churn" object with the counts.
 *
 * mode=misaligned: writes, then reads back, blocks through data buffers
 * whose address or length is not a multiple of 512 (a byte offset into a
 * page, a block split into odd-sized descriptors), one request at a time,
 * and compares the data.  Every fourth request is aligned (the control).
 * With rw=read: the reads only, data not checked (for reads that fail).
 *
 * mode=ram-change: see ram_change_run() below.
 *
 * mode=stale-code, mode=msix-vga, mode=msix-then-intx: see stale_code_run(),
 * msix_vga_run() and msix_then_intx_run().
 */
#include "mg.h"

#define PCI_CAP_ID_MSIX     0x11
#define LAPIC_IRR           0x200
#define MSIX_WAIT_MS        500

struct churn_stats {
    uint32_t steps;
    uint32_t masks;
    uint32_t masked_completions;    /* completions seen while masked */
    uint32_t pending_set;           /* ...and the pending bit was set */
    uint32_t pending_missing;       /* ...and it was not */
    uint32_t pending_delivered;     /* the message came on unmask */
    uint32_t pending_lost;          /* it did not */
    uint32_t irq_while_masked;      /* LAPIC IRR set while masked */
    uint32_t retargets;
    uint32_t retarget_rejected;
    uint16_t entry;                 /* current MSI-X table entry */
};

static struct churn_stats churn;
static uint32_t churn_batches;

static uintptr_t msix_entry_addr(uint16_t entry)
{
    return dev.msix_table + 16u * entry;
}

static uintptr_t msix_pba_addr(void)
{
    int pos = pci_find_cap(dev.bdf, PCI_CAP_ID_MSIX);
    uint32_t pba = pci_read32(dev.bdf, pos + 8);
    uint32_t bar = pci_read32(dev.bdf, 0x10 + 4 * (pba & 7)) & ~0xfu;

    return bar + (pba & ~7u);
}

static int lapic_irr(uint8_t vector)
{
    return (readl(LAPIC_BASE + LAPIC_IRR + 0x10 * (vector / 32)) >> (vector % 32)) & 1;
}

static uint8_t entry_vector(uint16_t entry)
{
    return entry ? VEC_MSIX_QUEUE2 : VEC_MSIX_QUEUE;
}

/* Program table entry 1 like entry 0, for the other IDT vector. */
const char *churn_setup(void)
{
    uintptr_t e1;

    if (cfg.wait != WAIT_IRQ || !dev.msix) {
        return "msix-churn-needs-wait-irq";
    }
    e1 = msix_entry_addr(1);
    writel(e1 + 0, LAPIC_BASE);
    writel(e1 + 4, 0);
    writel(e1 + 8, VEC_MSIX_QUEUE2);
    writel(e1 + 12, 0);
    churn.entry = 0;
    if (cfg.churn_every == 0) {
        cfg.churn_every = 4;
    }
    return NULL;
}

/* Let interrupts that are already latched in the LAPIC be taken. */
static void take_latched(uint8_t vector)
{
    uint64_t deadline = rdtsc() + ms_to_cycles(MSIX_WAIT_MS);

    while (lapic_irr(vector) && rdtsc() < deadline) {
        safe_halt();
    }
}

static void churn_mask_window(void)
{
    uint16_t entry = churn.entry;
    uint8_t vector = entry_vector(entry);
    uintptr_t ctrl = msix_entry_addr(entry) + 12;
    uintptr_t pba = msix_pba_addr();
    uint32_t bit = 1u << entry;
    uint32_t irqs;
    uint64_t deadline;
    uint16_t used;
    int pending;

    take_latched(vector);
    writel(ctrl, 1);
    (void)readl(ctrl);
    churn.masks++;
    /* Messages sent before the mask took effect are legitimate, and so is
     * the lack of a pending bit for completions used before this point */
    take_latched(vector);
    used = vdev_used_idx(&dev);

    deadline = rdtsc() + ms_to_cycles(MSIX_WAIT_MS);
    while (vdev_used_idx(&dev) == used && rdtsc() < deadline) {
        cpu_relax();
    }
    pending = 0;
    if (vdev_used_idx(&dev) != used) {
        churn.masked_completions++;
        deadline = rdtsc() + ms_to_cycles(MSIX_WAIT_MS);
        while (!(readl(pba) & bit) && rdtsc() < deadline) {
            cpu_relax();
        }
        pending = (readl(pba) & bit) != 0;
        if (pending) {
            churn.pending_set++;
        } else {
            churn.pending_missing++;
        }
    }
    if (lapic_irr(vector)) {
        churn.irq_while_masked++;
    }

    irqs = irq_count;
    writel(ctrl, 0);
    (void)readl(ctrl);
    if (pending) {
        deadline = rdtsc() + ms_to_cycles(MSIX_WAIT_MS);
        while (irq_count == irqs && rdtsc() < deadline) {
            safe_halt();
        }
        if (irq_count != irqs) {
            churn.pending_delivered++;
        } else {
            churn.pending_lost++;
        }
    }
}

static void churn_retarget(void)
{
    uint16_t next = churn.entry ^ 1;

    outw(dev.io + VIRTIO_PCI_QUEUE_SEL, 0);
    outw(dev.io + VIRTIO_MSI_QUEUE_VECTOR, next);
    if (inw(dev.io + VIRTIO_MSI_QUEUE_VECTOR) == next) {
        churn.entry = next;
        churn.retargets++;
    } else {
        churn.retarget_rejected++;
    }
}

/* Called by the benchmark loop after each batch of completions. */
void churn_step(void)
{
    if (++churn_batches % cfg.churn_every) {
        return;
    }
    if (churn.steps++ % 2 == 0) {
        churn_mask_window();
    } else {
        churn_retarget();
    }
}

void churn_print(void)
{
    out_str(",\"churn\":{\"every\":");
    out_u64(cfg.churn_every);
    out_key_u64("steps", churn.steps);
    out_key_u64("masks", churn.masks);
    out_key_u64("masked_completions", churn.masked_completions);
    out_key_u64("pending_set", churn.pending_set);
    out_key_u64("pending_missing", churn.pending_missing);
    out_key_u64("pending_delivered", churn.pending_delivered);
    out_key_u64("pending_lost", churn.pending_lost);
    out_key_u64("irq_while_masked", churn.irq_while_masked);
    out_key_u64("retargets", churn.retargets);
    out_key_u64("retarget_rejected", churn.retarget_rejected);
    out_key_u64("irqs_entry1", irq_count_alt);
    out_char('}');
}

int churn_ok(void)
{
    return churn.masks > 0 && churn.retargets > 0 && !churn.retarget_rejected &&
           !churn.pending_missing && !churn.pending_lost && !churn.irq_while_masked;
}

/* ---- misaligned buffers ---- */

#define MIS_BLOCK       4096
#define MIS_LAYOUTS     4
#define MIS_MAX_SEGS    3

struct mis_seg {
    uint32_t offset;                /* into the request's 3-page area */
    uint32_t len;
};

/* Data buffer layouts of one 4 KiB block; the last one is aligned. */
static const struct mis_seg mis_layouts[MIS_LAYOUTS][MIS_MAX_SEGS] = {
    { { 1, 4096 } },                                        /* odd address */
    { { 3, 100 }, { 4096, 3000 }, { 8192 + 7, 996 } },      /* odd both */
    { { 0, 768 }, { 4096, 3328 } },                         /* odd lengths */
    { { 4096, 4096 } },                                     /* aligned */
};

static uint32_t mis_pattern(uint64_t sector, uint32_t byte)
{
    return ((uint32_t)sector * 0x9e3779b1u) ^ (byte * 0x85ebca77u) ^ cfg.seed;
}

/* One request through layout L; returns the status byte or 0xfe on timeout. */
static uint8_t mis_request(int write, uint64_t sector, int layout, uint8_t *area,
                           struct virtio_blk_outhdr *hdr, volatile uint8_t *status,
                           uint32_t *used_len)
{
    const struct mis_seg *segs = mis_layouts[layout];
    uint16_t d = 0;
    int i;

    hdr->type = write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;
    hdr->ioprio = 0;
    hdr->sector = sector;
    *status = 0xff;
    dev.desc[d].addr = (uintptr_t)hdr;
    dev.desc[d].len = sizeof(*hdr);
    dev.desc[d].flags = VRING_DESC_F_NEXT;
    dev.desc[d].next = d + 1;
    d++;
    for (i = 0; i < MIS_MAX_SEGS && segs[i].len; i++, d++) {
        dev.desc[d].addr = (uintptr_t)area + segs[i].offset;
        dev.desc[d].len = segs[i].len;
        dev.desc[d].flags = VRING_DESC_F_NEXT | (write ? 0 : VRING_DESC_F_WRITE);
        dev.desc[d].next = d + 1;
    }
    dev.desc[d].addr = (uintptr_t)status;
    dev.desc[d].len = 1;
    dev.desc[d].flags = VRING_DESC_F_WRITE;
    dev.desc[d].next = 0;

    vdev_add(&dev, 0);
    vdev_kick(&dev);
    if (!vdev_wait(&dev, WAIT_POLL, rdtsc() + ms_to_cycles(cfg.timeout_ms))) {
        return 0xfe;
    }
    *used_len = dev.used->ring[vring_slot(&dev, dev.last_used)].len;
    dev.last_used++;
    return *status;
}

/* Copy the block's bytes between a flat buffer and the layout's segments. */
static void mis_scatter(uint8_t *area, int layout, const uint8_t *flat, int to_area)
{
    const struct mis_seg *segs = mis_layouts[layout];
    uint32_t pos = 0;
    int i;

    for (i = 0; i < MIS_MAX_SEGS && segs[i].len; i++) {
        if (to_area) {
            memcpy(area + segs[i].offset, flat + pos, segs[i].len);
        } else {
            memcpy((uint8_t *)flat + pos, area + segs[i].offset, segs[i].len);
        }
        pos += segs[i].len;
    }
}

void misaligned_run(void)
{
    struct virtio_blk_outhdr *hdr = (void *)mg_alloc(4096);
    volatile uint8_t *status = (volatile uint8_t *)hdr + 64;
    uint8_t *area = (uint8_t *)mg_alloc(3 * 4096);
    uint32_t *flat = (uint32_t *)mg_alloc(MIS_BLOCK);
    uint32_t errors = 0, mismatches = 0, timeouts = 0, bad_used_len = 0;
    uint32_t aligned_errors = 0, done = 0, i, w, n = cfg.n;
    uint32_t used_len;
    int reads_only = streq(cfg.rw, "read");
    uint8_t st;

    if (!hdr || !area || !flat) {
        out_str("\nMICROGUEST-RESULT {\"ok\":0,\"mode\":\"misaligned\","
                "\"error\":\"out-of-guest-memory\"}\n");
        mg_finish(0);
    }
    if (n > 1024) {
        n = 1024;
    }
    out_str("MICROGUEST-BEGIN\n");
    for (i = reads_only ? n : 0; i < 2 * n; i++) {
        int write = i < n;
        uint32_t k = write ? i : i - n;
        uint64_t sector = 8ull * (k + 16);
        int layout = (k + (write ? 0 : 1)) % MIS_LAYOUTS;

        if (write) {
            for (w = 0; w < MIS_BLOCK / 4; w++) {
                flat[w] = mis_pattern(sector, w);
            }
            memset(area, 0xa5, 3 * 4096);
            mis_scatter(area, layout, (uint8_t *)flat, 1);
        } else {
            memset(area, 0x5a, 3 * 4096);
        }
        used_len = 0;
        st = mis_request(write, sector, layout, area, hdr, status, &used_len);
        if (st == 0xfe) {
            timeouts++;
            break;
        }
        done++;
        if (st != VIRTIO_BLK_S_OK) {
            errors++;
            if (layout == MIS_LAYOUTS - 1) {
                aligned_errors++;
            }
            if (used_len != 1) {
                bad_used_len++;     /* only the status byte was written */
            }
            continue;
        }
        if (!write && !reads_only) {
            mis_scatter(area, layout, (uint8_t *)flat, 0);
            for (w = 0; w < MIS_BLOCK / 4; w++) {
                if (flat[w] != mis_pattern(sector, w)) {
                    mismatches++;
                    break;
                }
            }
        }
    }
    out_str("MICROGUEST-END\n");
    out_str("\nMICROGUEST-RESULT {\"ok\":");
    out_u64(!errors && !mismatches && !timeouts && done == (reads_only ? n : 2 * n));
    out_key_str("mode", "misaligned");
    out_key_u64("reads_only", reads_only);
    out_key_u64("n", n);
    out_key_u64("done", done);
    out_key_u64("errors", errors);
    out_key_u64("aligned_errors", aligned_errors);
    out_key_u64("bad_used_len", bad_used_len);
    out_key_u64("mismatches", mismatches);
    out_key_u64("timeouts", timeouts);
    out_key_u64("layouts", MIS_LAYOUTS);
    out_str("}\n");
    mg_finish(!errors && !mismatches && !timeouts);
}

/* ---- guest RAM changing under the device ---- */

#define RC_BLOCK        4096
#define RC_NEW_BAR      0xd0000000u     /* free: above RAM, below the BIOS's BARs */

/* The byte pattern the host wrote at the 4 KiB block starting at sector. */
static uint8_t rc_pattern(uint64_t sector, uint32_t k)
{
    return (uint8_t)((uint32_t)sector * 131u + (uint32_t)(sector >> 8) * 17u +
                     k * 7u + 0x3c);
}

/* ---- one request at a time, for the modes below ---- */

/* Read or write len bytes at sector from/to data (a guest physical address)
 * and wait for the used entry (polling, or halted between the 10 Hz timer's
 * ticks with WAIT_IRQ); "ok", "error" or "timeout". */
static const char *one_request(int write, uint64_t sector, uintptr_t data,
                               uint32_t len, struct virtio_blk_outhdr *hdr,
                               volatile uint8_t *status, enum wait_mode wait)
{
    hdr->type = write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;
    hdr->ioprio = 0;
    hdr->sector = sector;
    *status = 0xff;
    dev.desc[0].addr = (uintptr_t)hdr;
    dev.desc[0].len = sizeof(*hdr);
    dev.desc[0].flags = VRING_DESC_F_NEXT;
    dev.desc[0].next = 1;
    dev.desc[1].addr = data;
    dev.desc[1].len = len;
    dev.desc[1].flags = VRING_DESC_F_NEXT | (write ? 0 : VRING_DESC_F_WRITE);
    dev.desc[1].next = 2;
    dev.desc[2].addr = (uintptr_t)status;
    dev.desc[2].len = 1;
    dev.desc[2].flags = VRING_DESC_F_WRITE;
    dev.desc[2].next = 0;
    vdev_add(&dev, 0);
    vdev_kick(&dev);
    if (!vdev_wait(&dev, wait, rdtsc() + ms_to_cycles(cfg.timeout_ms))) {
        return "timeout";
    }
    dev.last_used++;
    return *status == VIRTIO_BLK_S_OK ? "ok" : "error";
}

/* Read the block at sector into data (a guest physical address); "ok",
 * "error", "timeout" or "mismatch" (data checked only if check). */
static const char *rc_read(uint64_t sector, uintptr_t data, int check,
                           struct virtio_blk_outhdr *hdr, volatile uint8_t *status)
{
    const char *verdict = one_request(0, sector, data, RC_BLOCK, hdr, status, WAIT_POLL);
    uint32_t k;

    if (!streq(verdict, "ok")) {
        return verdict;
    }
    for (k = 0; check && k < RC_BLOCK; k++) {
        if (((volatile uint8_t *)data)[k] != rc_pattern(sector, k)) {
            return "mismatch";
        }
    }
    return "ok";
}

/*
 * mode=ram-change: an ivshmem device's RAM BAR is guest RAM for the data
 * plane.  Read a block into the BAR at its address A; move the BAR to
 * RC_NEW_BAR (B) and read another block into B, which must work; disable
 * the BAR and read a third block "into" B, which is no longer RAM and must
 * not be written (the host checks the shared memory file).  unmap_first=1:
 * disable the BAR right after the first read and read into A again.
 */
void ram_change_run(void)
{
    struct virtio_blk_outhdr *hdr = (void *)mg_alloc(4096);
    volatile uint8_t *status = (volatile uint8_t *)hdr + 64;
    const char *at_a, *at_b, *gone;
    uint32_t bar_a;
    uint16_t cmd;
    int bdf = pci_find(0x1af4, 0x1110);

    if (bdf < 0 || !hdr) {
        out_str("\nMICROGUEST-RESULT {\"ok\":0,\"mode\":\"ram-change\","
                "\"error\":\"no-ivshmem\"}\n");
        mg_finish(0);
    }
    cmd = pci_read16(bdf, 0x04);
    pci_write16(bdf, 0x04, cmd | 0x2);          /* memory decode on */
    bar_a = pci_read32(bdf, 0x18) & ~0xfu;      /* BAR2: the shared RAM */
    out_str("MICROGUEST-BEGIN\n");

    at_a = rc_read(8 * 16, bar_a, 1, hdr, status);
    if (cfg.unmap_first) {
        /* the RAM goes away at A first: nothing may be written there */
        pci_write16(bdf, 0x04, cmd & ~0x2);
        gone = rc_read(8 * 48, bar_a, 0, hdr, status);
        at_b = "skipped";
    } else {
        pci_write32(bdf, 0x18, RC_NEW_BAR);     /* the RAM moves to B */
        at_b = rc_read(8 * 32, RC_NEW_BAR, 1, hdr, status);
        pci_write16(bdf, 0x04, cmd & ~0x2);     /* and goes away */
        gone = rc_read(8 * 48, RC_NEW_BAR, 0, hdr, status);
    }

    out_str("MICROGUEST-END\n");
    out_str("\nMICROGUEST-RESULT {\"ok\":");
    out_u64(streq(at_a, "ok") && (cfg.unmap_first || streq(at_b, "ok")) &&
            !streq(gone, "ok"));
    out_key_str("mode", "ram-change");
    out_key_u64("bar_a", bar_a);
    out_key_u64("bar_b", RC_NEW_BAR);
    out_key_str("at_a", at_a);
    out_key_str("at_b", at_b);
    out_key_str("after_unmap", gone);
    out_str("}\n");
    mg_finish(streq(at_a, "ok") && !streq(gone, "ok"));
}


/*
 * mode=stale-code: a device that writes guest RAM must not leave the CPU
 * running what the page held before (under TCG: translated code).  Two
 * functions, "return 1" and "return 2", are written to two sectors; each
 * round reads one of them into the same page, calls it and checks that the
 * function just read ran.  n rounds (default 4), alternating.
 */
#define SC_SECTOR_1     (8 * 80)
#define SC_SECTOR_2     (8 * 96)

static void sc_function(uint8_t *p, uint32_t value)
{
    memset(p, 0xcc, 4096);          /* int3 around it */
    p[0] = 0xb8;                    /* mov $value, %eax */
    p[1] = value & 0xff;
    p[2] = (value >> 8) & 0xff;
    p[3] = (value >> 16) & 0xff;
    p[4] = (value >> 24) & 0xff;
    p[5] = 0xc3;                    /* ret */
}

void stale_code_run(void)
{
    struct virtio_blk_outhdr *hdr = (void *)mg_alloc(4096);
    volatile uint8_t *status = (volatile uint8_t *)hdr + 64;
    uint8_t *buf = (uint8_t *)mg_alloc(4096);
    uint8_t *code = (uint8_t *)mg_alloc(4096);
    uint32_t rounds = cfg.n ? cfg.n : 4, i, want, got, stale = 0, ran = 0;
    uint32_t first_stale = 0;
    const char *err = "ok";
    uint32_t (*fn)(void) = (uint32_t (*)(void))(uintptr_t)code;

    if (!hdr || !buf || !code) {
        out_str("\nMICROGUEST-RESULT {\"ok\":0,\"mode\":\"stale-code\","
                "\"error\":\"no-memory\"}\n");
        mg_finish(0);
    }
    out_str("MICROGUEST-BEGIN\n");
    sc_function(buf, 1);
    err = one_request(1, SC_SECTOR_1, (uintptr_t)buf, 4096, hdr, status,
                      WAIT_POLL);
    if (streq(err, "ok")) {
        sc_function(buf, 2);
        err = one_request(1, SC_SECTOR_2, (uintptr_t)buf, 4096, hdr, status,
                          WAIT_POLL);
    }
    for (i = 0; i < rounds && streq(err, "ok"); i++) {
        want = (i & 1) ? 2 : 1;
        err = one_request(0, want == 1 ? SC_SECTOR_1 : SC_SECTOR_2,
                          (uintptr_t)code, 4096, hdr, status, WAIT_POLL);
        if (!streq(err, "ok")) {
            break;
        }
        got = fn();
        ran++;
        if (got != want) {
            if (!stale) {
                first_stale = i + 1;
            }
            stale++;
        }
    }
    out_str("MICROGUEST-END\n");
    out_str("\nMICROGUEST-RESULT {\"ok\":");
    out_u64(streq(err, "ok") && ran == rounds && stale == 0);
    out_key_str("mode", "stale-code");
    out_key_str("io", err);
    out_key_u64("rounds", rounds);
    out_key_u64("ran", ran);
    out_key_u64("stale", stale);
    out_key_u64("first_stale_round", first_stale);
    out_str("}\n");
    mg_finish(streq(err, "ok") && ran == rounds && stale == 0);
}

/*
 * mode=msix-vga: the queue's MSI-X message is addressed to the cirrus VGA's
 * MMIO BAR, offset 0x0c: the upper two bytes of its data land on the GR
 * index and data registers (ports 0x3ce/0x3cf), writing GR0B, whose bit 1
 * switches the VRAM bank windows at 0xa0000 off and on: guest RAM appears
 * and vanishes as the device sends its "interrupt".  n requests (default
 * 64), one at a time, the data alternating between GR0B=0 and GR0B=2; the
 * guest polls.  With halt=1 the host then looks at QEMU's threads.
 */
/* The message is one aligned 32-bit write (QEMU drops unaligned ones) to
 * MMIO offset 0x0c, split into bytes for ports 0x3cc-0x3cf: nothing, nothing,
 * the GR index (0x0b), the value */
#define VGA_GR0B_BANKS_ON   0x000b0000u
#define VGA_GR0B_BANKS_OFF  0x020b0000u

void msix_vga_run(void)
{
    struct virtio_blk_outhdr *hdr = (void *)mg_alloc(4096);
    volatile uint8_t *status = (volatile uint8_t *)hdr + 64;
    uint8_t *buf = (uint8_t *)mg_alloc(4096);
    uint32_t n = cfg.n ? cfg.n : 64, i, done = 0, errors = 0, timeouts = 0;
    uint32_t hits = 0;
    uint64_t deadline;
    int vga = pci_find(0x1013, 0x00b8);
    uint32_t mmio;
    uintptr_t entry = dev.msix_table;
    const char *r;

    if (vga < 0 || !hdr || !buf || !dev.msix) {
        out_str("\nMICROGUEST-RESULT {\"ok\":0,\"mode\":\"msix-vga\",\"error\":\"");
        out_str(vga < 0 ? "no-cirrus-vga" : !dev.msix ? "no-msix" : "no-memory");
        out_str("\"}\n");
        mg_finish(0);
    }
    mmio = pci_read32(vga, 0x14) & ~0xfu;       /* BAR1: MMIO registers */
    pci_write16(vga, 0x04, pci_read16(vga, 0x04) | 0x2);
    outb(0x3c4, 0x06);                          /* unlock the extensions */
    outb(0x3c5, 0x12);
    outb(0x3c4, 0x07);                          /* extended mode: banks */
    outb(0x3c5, inb(0x3c5) | 0x01);
    outb(0x3c5, inb(0x3c5) | 0x01);

    /* interrupts on: the device sends its message after each completion */
    dev.avail->flags = 0;
    writel(entry + 12, 1);                      /* mask while re-targeting */
    writel(entry + 0, mmio + 0x0c);
    writel(entry + 4, 0);
    out_str("MICROGUEST-BEGIN\n");
    for (i = 0; i < n; i++) {
        writel(entry + 8, (i & 1) ? VGA_GR0B_BANKS_OFF : VGA_GR0B_BANKS_ON);
        writel(entry + 12, 0);
        r = one_request(0, 8 * (i % 64), (uintptr_t)buf, 4096, hdr, status,
                        WAIT_IRQ);
        writel(entry + 12, 1);
        /* the message reached the register (read back GR0B) */
        deadline = rdtsc() + ms_to_cycles(2);
        while (rdtsc() < deadline) {
            cpu_relax();
        }
        outb(0x3ce, 0x0b);
        if (inb(0x3cf) == ((i & 1) ? VGA_GR0B_BANKS_OFF : VGA_GR0B_BANKS_ON) >> 24) {
            hits++;
        }
        if (streq(r, "ok")) {
            done++;
        } else if (streq(r, "timeout")) {
            timeouts++;
            break;
        } else {
            errors++;
        }
    }
    out_str("MICROGUEST-END\n");
    out_str("\nMICROGUEST-RESULT {\"ok\":");
    out_u64(done == n);
    out_key_str("mode", "msix-vga");
    out_key_u64("requests", n);
    out_key_u64("done", done);
    out_key_u64("errors", errors);
    out_key_u64("timeouts", timeouts);
    out_key_u64("vga_writes_seen", hits);
    out_key_u64("vga_mmio", mmio);
    out_str("}\n");
    mg_finish(done == n);
}

/*
 * mode=msix-then-intx: n reads with MSI-X interrupts (the device sets its
 * ISR bit each time, nobody reads it), then MSI-X disabled without a reset
 * and n reads waiting for INTx.  Every INTx completion must interrupt: a
 * completion found only when the 10 Hz timer woke the guest counts in
 * missed_irqs.
 */
extern int intx_line;
extern uint16_t intx_ack_port;

void msix_then_intx_run(void)
{
    struct virtio_blk_outhdr *hdr = (void *)mg_alloc(4096);
    volatile uint8_t *status = (volatile uint8_t *)hdr + 64;
    uint8_t *buf = (uint8_t *)mg_alloc(4096);
    uint32_t n = cfg.n ? cfg.n : 20, i, msix_done = 0, intx_done = 0, irqs;
    int pos = pci_find_cap(dev.bdf, PCI_CAP_ID_MSIX);
    uint16_t ctrl;
    const char *r = "ok";

    if (!hdr || !buf || !dev.msix || !pos || dev.intx_line == 0 ||
        dev.intx_line >= 16) {
        out_str("\nMICROGUEST-RESULT {\"ok\":0,\"mode\":\"msix-then-intx\","
                "\"error\":\"no-msix-or-intx\"}\n");
        mg_finish(0);
    }
    out_str("MICROGUEST-BEGIN\n");
    for (i = 0; i < n && streq(r, "ok"); i++) {
        r = one_request(0, 8 * i, (uintptr_t)buf, 4096, hdr, status, WAIT_IRQ);
        msix_done += streq(r, "ok");
    }

    /* MSI-X off, as a driver that hands the device over might leave it */
    pci_write16(dev.bdf, pos + 2, pci_read16(dev.bdf, pos + 2) & ~0x8000);
    ctrl = pci_read16(dev.bdf, pos + 2);
    intx_line = dev.intx_line;
    intx_ack_port = dev.io + VIRTIO_PCI_ISR;
    pic_init(dev.intx_line);
    dev.missed_irqs = 0;
    irqs = irq_count;
    for (i = 0; i < n && streq(r, "ok"); i++) {
        r = one_request(0, 8 * (n + i), (uintptr_t)buf, 4096, hdr, status,
                        WAIT_INTX);
        intx_done += streq(r, "ok");
    }
    irqs = irq_count - irqs;

    out_str("MICROGUEST-END\n");
    out_str("\nMICROGUEST-RESULT {\"ok\":");
    out_u64(msix_done == n && intx_done == n && dev.missed_irqs == 0);
    out_key_str("mode", "msix-then-intx");
    out_key_u64("n", n);
    out_key_u64("msix_done", msix_done);
    out_key_u64("intx_done", intx_done);
    out_key_u64("intx_irqs", irqs);
    out_key_u64("missed_irqs", dev.missed_irqs);
    out_key_u64("msix_ctrl", ctrl);
    out_key_str("last", r);
    out_str("}\n");
    mg_finish(msix_done == n && intx_done == n && dev.missed_irqs == 0);
}

/*
 * mode=slots-full n=N: every descriptor of the ring as one indirect read
 * (queue-size requests, so as many as the data plane has request slots),
 * then, once the device has taken them (pause_ms, default 500), N more
 * avail entries that name heads still in flight: entries left on the ring
 * while every slot is busy.  A driver must not do that, but a guest can, and
 * the device must then wait for a completion without spinning a host CPU
 * (tests/test_slow_storage.py, on storage that holds the reads).
 *
 * The guest halts while it waits, with its timer at SF_TICK_MS, and
 * whenever a tick wakes it with nothing completed it notifies the device
 * SF_KICKS times in a row (notifying is always allowed): events that close
 * together open a polling device's window (x-poll-max-ns), so the device
 * is made to poll while its slots are full, a hundred times a second,
 * whatever the host's load did to the window since (the window shrinks
 * when the thread loses its CPU while polling).  MICROGUEST-SLOTS-FULL is printed once the extra
 * entries are published.  Each reused head is read again after its first
 * completion, so queue size + N used entries must arrive.  Reports
 * `queue_size`, `extra`, `done`, `errors` (status bytes not OK at the end),
 * `timeouts`, `kick_bursts`.
 */
#define SF_KICKS 1000
#define SF_TICK_MS 10

static void sf_kick_burst(void)
{
    uint32_t i;

    for (i = 0; i < SF_KICKS; i++) {
        outw(dev.io + VIRTIO_PCI_QUEUE_NOTIFY, 0);
    }
}

void slots_full_run(void)
{
    uint16_t qs = dev.qsize, used;
    uint32_t extra = cfg.n ? cfg.n : 16, total, done = 0, errors = 0, bursts = 0;
    uint32_t pause = cfg.pause_ms ? cfg.pause_ms : 500, i;
    struct vring_desc *tables = (void *)mg_alloc(qs * 3 * sizeof(struct vring_desc));
    struct virtio_blk_outhdr *hdrs = (void *)mg_alloc(qs * sizeof(struct virtio_blk_outhdr));
    volatile uint8_t *statuses = (volatile uint8_t *)mg_alloc(qs);
    uintptr_t bufs = mg_alloc((uint32_t)qs * 4096);
    uint64_t deadline;

    if (!tables || !hdrs || !statuses || !bufs ||
        !(dev.guest_features & (1u << VIRTIO_RING_F_INDIRECT_DESC))) {
        out_str("\nMICROGUEST-RESULT {\"ok\":0,\"mode\":\"slots-full\",\"error\":\"");
        out_str(bufs ? "no-indirect-descriptors" : "no-memory");
        out_str("\"}\n");
        mg_finish(0);
    }
    if (extra > qs) {
        extra = qs;
    }
    total = qs + extra;

    dev.avail->flags = 0;                       /* interrupts on */
    for (i = 0; i < qs; i++) {
        struct vring_desc *t = &tables[3 * i];

        hdrs[i].type = VIRTIO_BLK_T_IN;
        hdrs[i].ioprio = 0;
        hdrs[i].sector = 16 * (uint64_t)i;      /* apart: no two merge */
        statuses[i] = 0xff;
        t[0].addr = (uintptr_t)&hdrs[i];
        t[0].len = sizeof(hdrs[i]);
        t[0].flags = VRING_DESC_F_NEXT;
        t[0].next = 1;
        t[1].addr = bufs + 4096u * i;
        t[1].len = 4096;
        t[1].flags = VRING_DESC_F_NEXT | VRING_DESC_F_WRITE;
        t[1].next = 2;
        t[2].addr = (uintptr_t)&statuses[i];
        t[2].len = 1;
        t[2].flags = VRING_DESC_F_WRITE;
        t[2].next = 0;
        dev.desc[i].addr = (uintptr_t)t;
        dev.desc[i].len = 3 * sizeof(struct vring_desc);
        dev.desc[i].flags = VRING_DESC_F_INDIRECT;
        dev.desc[i].next = 0;
        vdev_add(&dev, i);
    }
    out_str("MICROGUEST-BEGIN\n");
    vdev_kick(&dev);

    /* Let the device take every entry: the ring may not hold more than
     * queue-size entries it has not taken */
    deadline = rdtsc() + ms_to_cycles(pause);
    while (rdtsc() < deadline) {
        safe_halt();
    }
    for (i = 0; i < extra; i++) {
        vdev_add(&dev, i);
    }
    vdev_kick(&dev);
    sf_kick_burst();
    bursts++;
    out_str("MICROGUEST-SLOTS-FULL\n");

    lapic_timer_ms(SF_TICK_MS);
    deadline = rdtsc() + ms_to_cycles(cfg.timeout_ms);
    while (done < total && rdtsc() < deadline) {
        used = vdev_used_idx(&dev);
        if (used != dev.last_used) {
            done += (uint16_t)(used - dev.last_used);
            dev.last_used = used;
            continue;
        }
        safe_halt();                            /* an interrupt or a tick */
        if (vdev_used_idx(&dev) == dev.last_used) {
            sf_kick_burst();
            bursts++;
        }
    }
    lapic_timer_ms(100);
    for (i = 0; i < qs; i++) {
        errors += statuses[i] != VIRTIO_BLK_S_OK;
    }
    out_str("MICROGUEST-END\n");
    out_str("\nMICROGUEST-RESULT {\"ok\":");
    out_u64(done == total && !errors);
    out_key_str("mode", "slots-full");
    out_key_u64("queue_size", qs);
    out_key_u64("extra", extra);
    out_key_u64("done", done);
    out_key_u64("errors", errors);
    out_key_u64("timeouts", done < total);
    out_key_u64("kick_bursts", bursts);
    out_str("}\n");
    mg_finish(done == total && !errors);
}
