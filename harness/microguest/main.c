/*
 * Micro-guest: a bare-metal virtio-blk benchmark.
 *
 * Reads its settings from the multiboot command line, drives the legacy
 * virtio-blk device directly with qd requests in flight, and prints one
 * MICROGUEST-RESULT line of JSON on COM1 (or, with mode=hostile, one
 * MICROGUEST-HOSTILE line per malformed request).
 */
#include "mg.h"

struct mg_config cfg;
int mg_idle_spin;
struct vdev dev;
uintptr_t ram_end;

extern char _bss_end[];
static uintptr_t heap;

struct multiboot_info {
    uint32_t flags;
    uint32_t mem_lower;
    uint32_t mem_upper;
    uint32_t boot_device;
    uint32_t cmdline;
};

uintptr_t mg_alloc(uint32_t bytes)
{
    uintptr_t p = (heap + 4095) & ~(uintptr_t)4095;

    bytes = (bytes + 4095) & ~4095u;
    if (p + bytes + (1u << 20) > ram_end) {
        return 0;
    }
    heap = p + bytes;
    memset((void *)p, 0, bytes);
    return p;
}

/* ---- command line ---- */

static uint32_t parse_u32(const char *s)
{
    uint32_t v = 0;

    while (*s >= '0' && *s <= '9') {
        v = v * 10 + (*s++ - '0');
    }
    if (*s == 'k' || *s == 'K') {
        v <<= 10;
    } else if (*s == 'm' || *s == 'M') {
        v <<= 20;
    }
    return v;
}

static void copy_str(char *dst, const char *src, size_t size)
{
    size_t i;

    for (i = 0; i + 1 < size && src[i]; i++) {
        dst[i] = src[i];
    }
    dst[i] = 0;
}

static void set_option(const char *key, const char *val)
{
    if (streq(key, "rw")) {
        copy_str(cfg.rw, val, sizeof(cfg.rw));
    } else if (streq(key, "bs")) {
        cfg.bs = parse_u32(val);
    } else if (streq(key, "qd")) {
        cfg.qd = parse_u32(val);
    } else if (streq(key, "n")) {
        cfg.n = parse_u32(val);
    } else if (streq(key, "warmup")) {
        cfg.warmup = parse_u32(val);
    } else if (streq(key, "seq")) {
        cfg.seq = parse_u32(val);
    } else if (streq(key, "rwmix")) {
        cfg.rwmix = parse_u32(val);
    } else if (streq(key, "wait")) {
        if (streq(val, "irq") || streq(val, "msix")) {
            cfg.wait = WAIT_IRQ;
            cfg.wait_name = "irq";
        } else if (streq(val, "intx")) {
            cfg.wait = WAIT_INTX;
            cfg.wait_name = "intx";
        } else if (streq(val, "poll-irq-on")) {
            cfg.wait = WAIT_POLL_IRQ_ON;
            cfg.wait_name = "poll-irq-on";
        } else {
            cfg.wait = WAIT_POLL;
            cfg.wait_name = "poll";
        }
    } else if (streq(key, "kick")) {
        cfg.kick = streq(val, "every") ? KICK_EVERY : KICK_HONOUR;
    } else if (streq(key, "verify")) {
        cfg.verify = parse_u32(val);
    } else if (streq(key, "seed")) {
        cfg.seed = parse_u32(val);
    } else if (streq(key, "mode")) {
        cfg.hostile = streq(val, "hostile");
        cfg.churn = streq(val, "msix-churn");
        cfg.misaligned = streq(val, "misaligned");
        cfg.ram_change = streq(val, "ram-change");
        cfg.stale_code = streq(val, "stale-code");
        cfg.msix_vga = streq(val, "msix-vga");
        cfg.msix_then_intx = streq(val, "msix-then-intx");
        cfg.slots_full = streq(val, "slots-full");
    } else if (streq(key, "case")) {
        copy_str(cfg.hostile_case, val, sizeof(cfg.hostile_case));
    } else if (streq(key, "timeout_ms")) {
        cfg.timeout_ms = parse_u32(val);
    } else if (streq(key, "halt")) {
        cfg.halt = parse_u32(val);
    } else if (streq(key, "idle")) {
        mg_idle_spin = streq(val, "spin");
    } else if (streq(key, "churn")) {
        cfg.churn_every = parse_u32(val);
    } else if (streq(key, "pause_ms")) {
        cfg.pause_ms = parse_u32(val);
    } else if (streq(key, "unmap_first")) {
        cfg.unmap_first = parse_u32(val);
    } else if (streq(key, "indirect")) {
        cfg.indirect = parse_u32(val);
    } else if (streq(key, "disks")) {
        cfg.disks = parse_u32(val);
    }
}

static void parse_cmdline(const char *s)
{
    char key[32], val[48];

    copy_str(cfg.rw, "randread", sizeof(cfg.rw));
    cfg.bs = 4096;
    cfg.qd = 1;
    cfg.n = 10000;
    cfg.rwmix = 50;
    cfg.wait = WAIT_POLL;
    cfg.wait_name = "poll";
    cfg.kick = KICK_HONOUR;
    cfg.seed = 1;
    cfg.timeout_ms = 10000;
    cfg.disks = 1;

    while (s && *s) {
        size_t k = 0, v = 0;

        while (*s == ' ') {
            s++;
        }
        while (*s && *s != ' ' && *s != '=') {
            if (k + 1 < sizeof(key)) {
                key[k++] = *s;
            }
            s++;
        }
        key[k] = 0;
        if (*s != '=') {
            continue;           /* the kernel path, or a bare word */
        }
        s++;
        while (*s && *s != ' ') {
            if (v + 1 < sizeof(val)) {
                val[v++] = *s;
            }
            s++;
        }
        val[v] = 0;
        set_option(key, val);
    }
}

/* ---- workload ---- */

static inline uint32_t rng_next(uint64_t *state)
{
    uint64_t x = *state;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return x >> 32;
}

static void rng_seed(uint64_t *state, uint32_t seed)
{
    *state = 0x9e3779b97f4a7c15ull ^ ((uint64_t)seed << 17) ^ seed;
    if (!*state) {
        *state = 1;
    }
}

/*
 * The data verify=1 writes: a function of the sector, the word, the seed
 * and the disk's index (0 for the first disk, so that its data are those
 * of a single-disk run), so that no two disks hold the same data.
 */
static inline uint32_t pattern_word(uint32_t disk, uint64_t sector, uint32_t word)
{
    return ((uint32_t)sector * 0x9e3779b1u) ^ (word * 0x85ebca77u) ^ cfg.seed
           ^ (uint32_t)(sector >> 32) ^ (disk * 0x27d4eb2fu);
}

static void fill_pattern(uint32_t disk, uint32_t *buf, uint64_t sector, uint32_t bytes)
{
    uint32_t s, w;

    for (s = 0; s < bytes / 512; s++) {
        for (w = 0; w < 128; w++) {
            buf[s * 128 + w] = pattern_word(disk, sector + s, w);
        }
    }
}

/* number of 512-byte sectors in buf that differ from the pattern */
static uint32_t check_pattern(uint32_t disk, const uint32_t *buf, uint64_t sector,
                              uint32_t bytes)
{
    uint32_t s, w, bad = 0;

    for (s = 0; s < bytes / 512; s++) {
        for (w = 0; w < 128; w++) {
            if (buf[s * 128 + w] != pattern_word(disk, sector + s, w)) {
                bad++;
                break;
            }
        }
    }
    return bad;
}

/*
 * Latency histogram in TSC cycles, log-linear: 16 sub-buckets per power of
 * two (about 6 % resolution); converted to ns only when printed.
 */
#define HIST_SUB_BITS   4
#define HIST_SUB        (1 << HIST_SUB_BITS)
#define HIST_BUCKETS    ((32 - HIST_SUB_BITS + 1) * HIST_SUB + 1)

static uint32_t hist[HIST_BUCKETS];

static inline uint32_t hist_index(uint64_t v)
{
    uint32_t x, e;

    if (v >> 32) {
        return HIST_BUCKETS - 1;
    }
    x = v;
    if (x < HIST_SUB) {
        return x;
    }
    e = 31 - __builtin_clz(x);
    return (e - HIST_SUB_BITS + 1) * HIST_SUB + ((x >> (e - HIST_SUB_BITS)) & (HIST_SUB - 1));
}

static uint64_t hist_low(uint32_t i)
{
    uint32_t e;

    if (i < HIST_SUB) {
        return i;
    }
    if (i >= HIST_BUCKETS - 1) {
        return (uint64_t)1 << 32;
    }
    e = i / HIST_SUB + HIST_SUB_BITS - 1;
    return (uint64_t)(HIST_SUB + i % HIST_SUB) << (e - HIST_SUB_BITS);
}

/* one disk's counts in one phase */
struct disk_stats {
    uint32_t done;
    uint32_t errors;
    uint32_t mismatches;
    uint64_t t_last;            /* its last completion */
};

struct phase_stats {
    uint64_t t_start, t_end;
    uint64_t lat_sum, lat_min, lat_max;
    uint64_t halted;
    uint32_t done;
    uint32_t errors;
    uint32_t mismatches;
    int timed_out;
    struct disk_stats per[MG_MAX_DISKS];
};

enum phase_kind {
    PHASE_BENCH,        /* the workload as configured */
    PHASE_WRITE_ALL,    /* verify: write the pattern along the block sequence */
    PHASE_READ_CHECK,   /* verify: read the same sequence back and compare */
};

struct slot {
    uint64_t t_submit;
    uint64_t sector;
    int is_write;
};

#define MAX_QD 256

/*
 * One driven virtio-blk device: its queue's requests (qd slots, each a
 * header, a data buffer and a status byte), and its own offset sequence,
 * so that the write and read-back phases of verify=1 visit the same blocks
 * on each disk however the completions of the disks interleave.
 */
struct disk {
    struct vdev *vd;
    uint32_t index;
    struct slot *slots;
    struct vring_desc *tables;      /* indirect=1: 3 descriptors per slot */
    struct virtio_blk_outhdr *hdrs;
    volatile uint8_t *statuses;
    uintptr_t bufs;
    uint32_t nblocks;
    uint32_t next_block;
    uint64_t rng;
    uint32_t submitted;             /* in the current phase */
};

/* disks=N: disk 0 is dev (the device the other modes use), the others here */
static struct vdev more_devs[MG_MAX_DISKS - 1];
static struct vdev *vdevs[MG_MAX_DISKS];
static struct disk disks[MG_MAX_DISKS];
static uint32_t ndisks = 1;

static uint32_t qd;
static uint32_t spb;            /* sectors per block */
static int random_offsets;

/* each disk its own sequence: the seed mixed with its index (0: unchanged) */
static void disk_restart(struct disk *d)
{
    rng_seed(&d->rng, cfg.seed ^ (d->index * 0x632be5abu));
    d->next_block = 0;
}

static uint64_t pick_sector(struct disk *d)
{
    uint32_t block;

    if (random_offsets) {
        block = ((uint64_t)rng_next(&d->rng) * d->nblocks) >> 32;
    } else {
        block = d->next_block++;
        if (d->next_block >= d->nblocks) {
            d->next_block = 0;
        }
    }
    return (uint64_t)block * spb;
}

static void submit(struct disk *d, uint32_t i, enum phase_kind kind)
{
    struct vdev *vd = d->vd;
    struct slot *s = &d->slots[i];
    uint16_t head = d->tables ? i : 3 * i;
    struct vring_desc *chain = d->tables ? &d->tables[3 * i] : &vd->desc[head];
    int is_write;

    s->sector = pick_sector(d);
    if (kind == PHASE_WRITE_ALL) {
        is_write = 1;
    } else if (kind == PHASE_READ_CHECK) {
        is_write = 0;
    } else if (streq(cfg.rw, "randrw")) {
        is_write = (rng_next(&d->rng) % 100) >= (uint32_t)cfg.rwmix;
    } else {
        is_write = streq(cfg.rw, "randwrite") || streq(cfg.rw, "write");
    }
    s->is_write = is_write;
    if (kind == PHASE_WRITE_ALL) {
        fill_pattern(d->index, (uint32_t *)(d->bufs + i * cfg.bs), s->sector, cfg.bs);
    }
    d->hdrs[i].type = is_write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;
    d->hdrs[i].ioprio = 0;
    d->hdrs[i].sector = s->sector;
    chain[1].flags = VRING_DESC_F_NEXT | (is_write ? 0 : VRING_DESC_F_WRITE);
    d->statuses[i] = 0xff;
    vdev_add(vd, head);
    s->t_submit = rdtsc();
    d->submitted++;
    if (vd->kick == KICK_EVERY) {
        vdev_kick(vd);
    }
}

/* Reap what disk d completed, submitting more while its n are not all in. */
static void reap(struct disk *d, uint32_t n, enum phase_kind kind, struct phase_stats *st,
                 int record)
{
    struct vdev *vd = d->vd;
    struct disk_stats *ds = &st->per[d->index];
    uint64_t now = rdtsc();
    uint16_t used_idx = vdev_used_idx(vd);
    int resubmitted = 0;

    if (vd->last_used == used_idx) {
        return;
    }
    while (vd->last_used != used_idx) {
        uint32_t id = vd->used->ring[vring_slot(vd, vd->last_used)].id;
        uint32_t k = d->tables ? id : id / 3;
        uint64_t lat;

        vd->last_used++;
        if (k >= qd) {
            st->errors++;
            ds->errors++;
            continue;
        }
        lat = now - d->slots[k].t_submit;
        if (record) {
            hist[hist_index(lat)]++;
            st->lat_sum += lat;
            if (lat < st->lat_min) {
                st->lat_min = lat;
            }
            if (lat > st->lat_max) {
                st->lat_max = lat;
            }
        }
        if (d->statuses[k] != VIRTIO_BLK_S_OK) {
            st->errors++;
            ds->errors++;
        } else if (kind == PHASE_READ_CHECK) {
            uint32_t bad = check_pattern(d->index, (uint32_t *)(d->bufs + k * cfg.bs),
                                         d->slots[k].sector, cfg.bs);

            st->mismatches += bad;
            ds->mismatches += bad;
        }
        st->done++;
        ds->done++;
        if (d->submitted < n) {
            submit(d, k, kind);
            resubmitted = 1;
        }
    }
    ds->t_last = now;
    vdev_set_used_event(vd);
    if (resubmitted && vd->kick != KICK_EVERY) {
        vdev_kick(vd);
    }
}

/* n requests on each disk, qd in flight on each, all from this one loop */
static void run_phase(uint32_t n, enum phase_kind kind, struct phase_stats *st, int record)
{
    uint32_t i, j;
    uint64_t timeout = ms_to_cycles(cfg.timeout_ms);

    memset(st, 0, sizeof(*st));
    st->lat_min = ~0ull;
    st->t_start = rdtsc();
    dev.halted_cycles = 0;
    for (j = 0; j < ndisks; j++) {
        struct disk *d = &disks[j];

        d->submitted = 0;
        for (i = 0; i < qd && d->submitted < n; i++) {
            submit(d, i, kind);
        }
        if (d->vd->kick != KICK_EVERY) {
            vdev_kick(d->vd);
        }
    }

    while (st->done < n * ndisks) {
        if (!vdev_wait_any(vdevs, ndisks, cfg.wait, rdtsc() + timeout)) {
            st->timed_out = 1;
            break;
        }
        for (j = 0; j < ndisks; j++) {
            reap(&disks[j], n, kind, st, record);
        }
        if (cfg.churn) {
            churn_step();
        }
    }
    st->t_end = rdtsc();
    st->halted = dev.halted_cycles;
}

/* Notifications sent, over all disks. */
static uint32_t dev_notifies(void)
{
    uint32_t j, sum = 0;

    for (j = 0; j < ndisks; j++) {
        sum += vdevs[j]->notifies;
    }
    return sum;
}

/* value of the bucket holding the rank-th smallest sample (midpoint, clamped) */
static uint64_t hist_percentile(uint32_t total, uint32_t per10000, uint64_t lo, uint64_t hi)
{
    uint64_t rank = div_u64_u32((uint64_t)total * per10000 + 9999, 10000, NULL);
    uint64_t cum = 0, v;
    uint32_t i;

    if (rank == 0) {
        rank = 1;
    }
    for (i = 0; i < HIST_BUCKETS; i++) {
        cum += hist[i];
        if (cum >= rank) {
            break;
        }
    }
    if (i >= HIST_BUCKETS - 1) {
        return hi;
    }
    v = (hist_low(i) + hist_low(i + 1)) / 2;
    return v < lo ? lo : (v > hi ? hi : v);
}

static uint64_t per_second(uint64_t count, uint64_t ns)
{
    return ns ? div_u64(count * 1000000000ull, ns) : 0;
}

/* "per_disk":[{done, iops, errors, mismatches, verified, irqs}, ...] */
static void print_per_disk(const struct phase_stats *st, const struct phase_stats *check)
{
    uint32_t j;

    out_str(",\"per_disk\":[");
    for (j = 0; j < ndisks; j++) {
        const struct disk_stats *ds = &st->per[j];
        uint64_t t_end = ds->t_last > st->t_start ? ds->t_last : st->t_end;

        out_str(j ? ",{\"done\":" : "{\"done\":");
        out_u64(ds->done);
        out_key_u64("iops", per_second(ds->done, cycles_to_ns(t_end - st->t_start)));
        out_key_u64("errors", ds->errors + (check ? check->per[j].errors : 0));
        out_key_u64("mismatches", check ? check->per[j].mismatches : 0);
        out_key_u64("verified", check ? check->per[j].done : 0);
        out_key_u64("irqs", disk_irqs[j]);
        out_key_u64("pci_bdf", vdevs[j]->bdf);
        out_char('}');
    }
    out_char(']');
}

static void print_result(const struct phase_stats *st, const struct phase_stats *check,
                         const char *error)
{
    uint64_t elapsed_ns = cycles_to_ns(st->t_end - st->t_start);
    uint64_t lat_min = st->done ? st->lat_min : 0;
    uint32_t i;
    int first = 1;
    int ok = !error && !st->timed_out && st->done == cfg.n * ndisks && !st->errors
             && !(check && (check->errors || check->mismatches || check->timed_out))
             && !(cfg.churn && !churn_ok());

    out_str("\nMICROGUEST-RESULT {\"ok\":");
    out_u64(ok);
    out_key_str("mode", cfg.churn ? "msix-churn" : "bench");
    out_key_str("rw", cfg.rw);
    out_key_u64("bs", cfg.bs);
    out_key_u64("qd", qd);
    out_key_u64("qd_requested", cfg.qd);
    out_key_u64("n", cfg.n);
    out_key_u64("disks", ndisks);
    out_key_u64("done", st->done);
    out_key_u64("seq", !random_offsets);
    out_key_str("wait", cfg.wait_name);
    out_key_str("kick", dev.kick == KICK_EVERY ? "every" : "honour");
    out_key_u64("event_idx", dev.event_idx);
    out_key_u64("msix", dev.msix);
    out_key_u64("errors", st->errors + (check ? check->errors : 0));
    out_key_u64("verify", check != NULL);
    out_key_u64("mismatches", check ? check->mismatches : 0);
    out_key_u64("verified", check ? check->done : 0);
    out_key_u64("timed_out", st->timed_out || (check && check->timed_out));
    out_key_u64("seed", cfg.seed);
    out_key_u64("idle_spin", mg_idle_spin);
    out_key_u64("queue_size", dev.qsize);
    out_key_u64("capacity_sectors", dev.capacity);
    out_key_u64("host_features", dev.host_features);
    out_key_u64("notifies", dev_notifies());
    out_key_u64("irqs", irq_count);
    out_key_u64("missed_irqs", dev.missed_irqs);
    out_key_u64("unexpected_irqs", unexpected_irqs);
    out_key_u64("tsc_hz", tsc_hz);
    out_key_u64("elapsed_ns", elapsed_ns);
    out_key_u64("halted_ns", cycles_to_ns(st->halted));
    out_key_u64("iops", per_second(st->done, elapsed_ns));
    out_str(",\"lat_ns\":{\"mean\":");
    out_u64(st->done ? cycles_to_ns(div_u64_u32(st->lat_sum, st->done, NULL)) : 0);
    out_key_u64("min", cycles_to_ns(lat_min));
    out_key_u64("max", cycles_to_ns(st->lat_max));
    out_key_u64("p50", cycles_to_ns(hist_percentile(st->done, 5000, lat_min, st->lat_max)));
    out_key_u64("p99", cycles_to_ns(hist_percentile(st->done, 9900, lat_min, st->lat_max)));
    out_key_u64("p999", cycles_to_ns(hist_percentile(st->done, 9990, lat_min, st->lat_max)));
    out_str("},\"hist\":[");
    for (i = 0; i < HIST_BUCKETS; i++) {
        if (!hist[i]) {
            continue;
        }
        out_str(first ? "[" : ",[");
        first = 0;
        out_u64(cycles_to_ns(hist_low(i)));
        out_char(',');
        out_u64(cycles_to_ns(hist_low(i + 1)));
        out_char(',');
        out_u64(hist[i]);
        out_char(']');
    }
    out_char(']');
    print_per_disk(st, check);
    if (cfg.churn) {
        churn_print();
    }
    if (error) {
        out_key_str("error", error);
    } else if (st->timed_out) {
        out_key_str("error", "completion-timeout");
    }
    out_str("}\n");
    mg_finish(ok);
}

static void fail(const char *error)
{
    out_str("\nMICROGUEST-RESULT {\"ok\":0");
    out_key_str("mode", cfg.hostile ? "hostile" : "bench");
    out_key_str("error", error);
    out_str("}\n");
    mg_finish(0);
}

/* disks=N refused: what was asked, what the PCI scan found, what fits */
static void fail_disks(const char *error, uint32_t found)
{
    out_str("\nMICROGUEST-RESULT {\"ok\":0");
    out_key_str("mode", "bench");
    out_key_str("error", error);
    out_key_u64("disks_requested", cfg.disks);
    out_key_u64("disks_found", found);
    out_key_u64("disks_max", MG_MAX_DISKS);
    out_str("}\n");
    mg_finish(0);
}

/* How many virtio-blk functions the PCI scan finds. */
static uint32_t count_disks(void)
{
    uint32_t n = 0;

    while (n < 256 && pci_find_nth(0x1af4, 0x1001, n) >= 0) {
        n++;
    }
    return n;
}

/*
 * disks=N: probe the first N virtio-blk functions in scan order (dev is the
 * first); only the benchmark drives more than one.
 */
static void probe_disks(void)
{
    uint32_t found = count_disks(), j;
    const char *err;

    vdevs[0] = &dev;
    if (cfg.disks == 1) {
        return;
    }
    if (cfg.disks == 0) {
        fail_disks("disks-must-be-at-least-1", found);
    }
    if (cfg.disks > MG_MAX_DISKS) {
        fail_disks("disks-more-than-supported", found);
    }
    if (cfg.disks > found) {
        fail_disks("disks-more-than-found", found);
    }
    if (cfg.hostile || cfg.churn || cfg.misaligned || cfg.ram_change || cfg.stale_code
        || cfg.msix_vga || cfg.msix_then_intx || cfg.slots_full) {
        fail_disks("disks-need-mode-bench", found);
    }
    for (j = 1; j < cfg.disks; j++) {
        vdevs[j] = &more_devs[j - 1];
        err = vdev_probe_nth(vdevs[j], j);
        if (err) {
            fail_disks(err, found);
        }
    }
    ndisks = cfg.disks;
}

void mg_finish(int ok)
{
    if (cfg.halt) {
        out_str("MICROGUEST-HALT\n");
        mg_halt();
    }
    mg_poweroff(ok);
}

/*
 * The host samples QEMU's threads when it sees the END mark on the console,
 * polling every few milliseconds.  A short run (QD16 on tmpfs: 0.1 s) that
 * powered off right after END would be gone, with its threads, before that
 * sample: wait 20 ms, idle for the device, so the sample sees them alive.
 */
static void linger_after_end(void)
{
    uint64_t until = rdtsc() + div_u64_u32(tsc_hz, 50, NULL);

    while (rdtsc() < until) {
        asm volatile("pause");
    }
}

/* Buffers, headers and descriptor chains of disk d's qd requests. */
static const char *disk_setup(struct disk *d)
{
    struct vdev *vd = d->vd;
    uint32_t i;

    if (div_u64_u32(vd->capacity, spb, NULL) >> 32) {
        d->nblocks = 0xffffffffu;
    } else {
        d->nblocks = div_u64_u32(vd->capacity, spb, NULL);
    }
    if (d->nblocks == 0) {
        return "disk-smaller-than-bs";
    }
    d->slots = (struct slot *)mg_alloc(qd * sizeof(*d->slots));
    d->hdrs = (struct virtio_blk_outhdr *)mg_alloc(qd * sizeof(*d->hdrs));
    d->statuses = (volatile uint8_t *)mg_alloc(qd);
    d->bufs = mg_alloc(qd * cfg.bs);
    if (cfg.indirect) {
        d->tables = (struct vring_desc *)mg_alloc(qd * 3 * sizeof(*d->tables));
    }
    if (!d->slots || !d->hdrs || !d->statuses || !d->bufs || (cfg.indirect && !d->tables)) {
        return "out-of-guest-memory";
    }
    for (i = 0; i < qd; i++) {
        struct vring_desc *c = d->tables ? &d->tables[3 * i] : &vd->desc[3 * i];
        uint16_t base = d->tables ? 0 : 3 * i;

        if (d->tables) {
            vd->desc[i].addr = (uintptr_t)c;
            vd->desc[i].len = 3 * sizeof(*c);
            vd->desc[i].flags = VRING_DESC_F_INDIRECT;
            vd->desc[i].next = 0;
        }
        c[0].addr = (uintptr_t)&d->hdrs[i];
        c[0].len = sizeof(d->hdrs[i]);
        c[0].flags = VRING_DESC_F_NEXT;
        c[0].next = base + 1;
        c[1].addr = d->bufs + i * cfg.bs;
        c[1].len = cfg.bs;
        c[1].flags = VRING_DESC_F_NEXT | VRING_DESC_F_WRITE;
        c[1].next = base + 2;
        c[2].addr = (uintptr_t)&d->statuses[i];
        c[2].len = 1;
        c[2].flags = VRING_DESC_F_WRITE;
        c[2].next = 0;
    }
    for (i = 0; i < qd; i++) {
        fill_pattern(d->index, (uint32_t *)(d->bufs + i * cfg.bs), i, cfg.bs);
    }
    return NULL;
}

static void restart_all(void)
{
    uint32_t j;

    for (j = 0; j < ndisks; j++) {
        disk_restart(&disks[j]);
    }
}

static void bench(void)
{
    struct phase_stats st, check;
    uint32_t j;
    int writes = streq(cfg.rw, "randwrite") || streq(cfg.rw, "write");
    int verify = cfg.verify && writes;
    const char *err;

    qd = cfg.qd;
    for (j = 0; j < ndisks; j++) {
        struct vdev *vd = vdevs[j];

        if (cfg.indirect && !(vd->guest_features & (1u << VIRTIO_RING_F_INDIRECT_DESC))) {
            fail("no-indirect-descriptors");
        }
        if (qd > (cfg.indirect ? vd->qsize : vd->qsize / 3)) {
            qd = cfg.indirect ? vd->qsize : vd->qsize / 3;
        }
    }
    if (qd > MAX_QD) {
        qd = MAX_QD;
    }
    if (qd < 1 || cfg.bs < 512 || cfg.bs % 512) {
        fail("bad-qd-or-bs");
    }
    spb = cfg.bs / 512;
    random_offsets = !cfg.seq && (streq(cfg.rw, "randread") || streq(cfg.rw, "randwrite")
                                  || streq(cfg.rw, "randrw"));
    for (j = 0; j < ndisks; j++) {
        disks[j].vd = vdevs[j];
        disks[j].index = j;
        err = disk_setup(&disks[j]);
        if (err) {
            fail(err);
        }
    }

    out_str("MICROGUEST-BEGIN\n");
    restart_all();
    if (cfg.warmup) {
        run_phase(cfg.warmup, PHASE_BENCH, &st, 0);
        if (st.timed_out) {
            print_result(&st, NULL, "warmup-timeout");
        }
    }
    if (verify) {
        restart_all();
        run_phase(cfg.n, PHASE_WRITE_ALL, &st, 1);
        out_str("MICROGUEST-END\n");
        restart_all();
        run_phase(cfg.n, PHASE_READ_CHECK, &check, 0);
        print_result(&st, &check, NULL);
    }
    run_phase(cfg.n, PHASE_BENCH, &st, 1);
    out_str("MICROGUEST-END\n");
    linger_after_end();
    print_result(&st, NULL, NULL);
}

void mg_main(uint32_t magic, struct multiboot_info *mbi)
{
    const char *err;
    uintptr_t ring;
    uint32_t j;

    serial_init();
    if (magic != 0x2badb002) {
        out_str("\nMICROGUEST-RESULT {\"ok\":0,\"error\":\"not-multiboot\"}\n");
        mg_poweroff(0);
    }
    parse_cmdline((mbi->flags & 4) ? (const char *)mbi->cmdline : NULL);
    ram_end = (mbi->flags & 1) ? (mbi->mem_upper + 1024) * 1024 : (32u << 20);
    heap = (uintptr_t)_bss_end;

    idt_init();
    pic_init(-1);
    tsc_calibrate();
    lapic_init();
    out_str("MICROGUEST-BOOT tsc_hz=");
    out_u64(tsc_hz);
    out_str(" ram_mb=");
    out_u64(ram_end >> 20);
    out_char('\n');

    err = vdev_probe(&dev);
    if (err) {
        fail(err);
    }
    /* The benchmark negotiates EVENT_IDX when it honours the device's
     * notification hints (as Linux does); the hostile and safety modes keep
     * the plain flags they were written for */
    dev.want_event_idx = cfg.kick == KICK_HONOUR && !cfg.hostile && !cfg.churn
                         && !cfg.misaligned && !cfg.ram_change
                         && !cfg.stale_code && !cfg.msix_vga
                         && !cfg.msix_then_intx && !cfg.slots_full;
    dev.kick = cfg.kick;
    if (cfg.msix_vga || cfg.msix_then_intx || cfg.slots_full) {
        cfg.wait = WAIT_IRQ;        /* MSI-X first, then re-targeted or off */
    } else if (cfg.stale_code) {
        cfg.wait = WAIT_POLL;
    }
    probe_disks();
    for (j = 0; j < ndisks; j++) {
        struct vdev *vd = vdevs[j];

        vd->want_event_idx = dev.want_event_idx;
        vd->kick = dev.kick;
        ring = mg_alloc(VRING_MEM_BYTES);
        if (!ring) {
            fail("out-of-guest-memory");
        }
        err = vdev_init(vd, ring, cfg.hostile ? WAIT_POLL : cfg.wait);
        if (err) {
            fail(err);
        }
    }
    if (cfg.wait == WAIT_INTX && !cfg.hostile) {
        pic_init(dev.intx_line);
        for (j = 1; j < ndisks; j++) {
            pic_unmask(vdevs[j]->intx_line);
        }
    }
    if (cfg.churn) {
        err = churn_setup();
        if (err) {
            fail(err);
        }
    }
    if (cfg.hostile) {
        cfg.wait = WAIT_POLL;
        hostile_run();
    } else if (cfg.misaligned) {
        misaligned_run();
    } else if (cfg.ram_change) {
        ram_change_run();
    } else if (cfg.stale_code) {
        stale_code_run();
    } else if (cfg.msix_vga) {
        msix_vga_run();
    } else if (cfg.msix_then_intx) {
        msix_then_intx_run();
    } else if (cfg.slots_full) {
        slots_full_run();
    } else {
        bench();
    }
    mg_finish(1);
}
