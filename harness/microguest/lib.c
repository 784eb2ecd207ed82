/*
 * Micro-guest support: string functions, COM1 output, TSC calibration,
 * interrupts (IDT, PIC, LAPIC), PCI config space, power-off.
 */
#include "hw.h"

void *memset(void *s, int c, size_t n)
{
    uint8_t *p = s;

    while (n--) {
        *p++ = c;
    }
    return s;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;

    while (n--) {
        *d++ = *s++;
    }
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;

    for (; n; n--, x++, y++) {
        if (*x != *y) {
            return *x - *y;
        }
    }
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;

    while (s[n]) {
        n++;
    }
    return n;
}

int streq(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

/* Shift-and-subtract 64-bit division, for the few places that need it. */
uint64_t div_u64(uint64_t n, uint64_t d)
{
    uint64_t q = 0, r = 0;
    int i;

    if (d == 0) {
        return 0;
    }
    if ((d >> 32) == 0) {
        return div_u64_u32(n, d, NULL);
    }
    for (i = 63; i >= 0; i--) {
        r = (r << 1) | ((n >> i) & 1);
        if (r >= d) {
            r -= d;
            q |= (uint64_t)1 << i;
        }
    }
    return q;
}

/* ---- COM1 ---- */

#define COM1 0x3f8

void serial_init(void)
{
    outb(COM1 + 1, 0x00);       /* no interrupts */
    outb(COM1 + 3, 0x80);       /* DLAB */
    outb(COM1 + 0, 0x01);       /* 115200 */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);       /* 8N1 */
    outb(COM1 + 2, 0xc7);       /* FIFO */
}

void out_char(char c)
{
    int spins = 100000;

    while (!(inb(COM1 + 5) & 0x20) && spins--) {
        cpu_relax();
    }
    outb(COM1, c);
}

void out_str(const char *s)
{
    while (*s) {
        out_char(*s++);
    }
}

void out_u64(uint64_t v)
{
    char buf[24];
    int i = 0;
    uint32_t digit;

    do {
        v = div_u64_u32(v, 10, &digit);
        buf[i++] = '0' + digit;
    } while (v);
    while (i) {
        out_char(buf[--i]);
    }
}

void out_i64(int64_t v)
{
    if (v < 0) {
        out_char('-');
        v = -v;
    }
    out_u64(v);
}

void out_hex(uint32_t v)
{
    static const char digits[] = "0123456789abcdef";
    int i;

    out_str("0x");
    for (i = 28; i >= 0; i -= 4) {
        out_char(digits[(v >> i) & 15]);
    }
}

/* ,"key":123 */
void out_key_u64(const char *key, uint64_t v)
{
    out_str(",\"");
    out_str(key);
    out_str("\":");
    out_u64(v);
}

/* ,"key":"value"  (values are plain identifiers, no escaping needed) */
void out_key_str(const char *key, const char *v)
{
    out_str(",\"");
    out_str(key);
    out_str("\":\"");
    out_str(v);
    out_char('"');
}

void mg_halt(void)
{
    for (;;) {
        asm volatile("cli; hlt");
    }
}

/*
 * Power off: isa-debug-exit at 0xf4 when present (exit status 33 for ok,
 * 35 for failure), else ACPI S5 through the PIIX4 PM block (exit status 0).
 */
void mg_poweroff(int ok)
{
    int pm;

    outb(0xf4, ok ? 0x10 : 0x11);
    pm = pci_find(0x8086, 0x7113);
    if (pm >= 0) {
        uint16_t base = pci_read32(pm, 0x40) & 0xffc0;

        pci_write32(pm, 0x80, pci_read32(pm, 0x80) | 1);
        if (base) {
            outw(base + 4, 0x2000);     /* SLP_TYP 0 (S5) | SLP_EN */
        }
    }
    mg_halt();
}

/* ---- TSC ---- */

uint64_t tsc_hz;
static uint32_t tsc_khz;

#define PIT_HZ 1193182u

void tsc_calibrate(void)
{
    const uint32_t count = 59659;       /* 50 ms */
    uint64_t t0, t1;

    outb(0x61, (inb(0x61) & ~0x02) | 0x01);
    outb(0x43, 0xb0);                   /* channel 2, lo/hi, mode 0 */
    outb(0x42, count & 0xff);
    outb(0x42, count >> 8);
    t0 = rdtsc();
    while (!(inb(0x61) & 0x20)) {
        /* spin */
    }
    t1 = rdtsc();
    tsc_hz = div_u64_u32((t1 - t0) * PIT_HZ, count, NULL);
    tsc_khz = div_u64_u32(tsc_hz, 1000, NULL);
    if (tsc_khz == 0) {
        tsc_khz = 1;
    }
}

uint64_t cycles_to_ns(uint64_t cycles)
{
    if (cycles < ((uint64_t)1 << 44)) {
        return div_u64_u32(cycles * 1000000, tsc_khz, NULL);
    }
    return div_u64_u32(cycles, tsc_khz, NULL) * 1000000;
}

uint64_t ms_to_cycles(uint32_t ms)
{
    return (uint64_t)tsc_khz * ms;
}

/* ---- interrupts ---- */

struct idt_entry {
    uint16_t off_lo;
    uint16_t sel;
    uint16_t flags;
    uint16_t off_hi;
} __attribute__((packed));

static struct idt_entry idt[256] __attribute__((aligned(16)));
extern const uint32_t isr_table[256];

volatile uint32_t irq_count;
volatile uint32_t irq_count_alt;
volatile uint32_t timer_ticks;
volatile uint32_t unexpected_irqs;
volatile uint32_t disk_irqs[MG_MAX_DISKS];
int intx_line = -1;
uint16_t intx_ack_port;

/* INTx of disks 1..MG_MAX_DISKS-1 (disk 0: intx_line, intx_ack_port) */
static struct {
    int line;
    uint16_t port;
} intx_more[MG_MAX_DISKS];

void intx_add(int disk, int line, uint16_t isr_port)
{
    if (disk > 0 && disk < MG_MAX_DISKS) {
        intx_more[disk].line = line;
        intx_more[disk].port = isr_port;
    }
}

/* Read (and so clear) the ISR of every disk on line; 1 if any is ours. */
static int intx_ack(int line)
{
    int ours = 0, i;

    if (line == intx_line) {
        ours = 1;
        if (inb(intx_ack_port) & 1) {   /* read to ack, lowers INTx */
            disk_irqs[0]++;
        }
    }
    for (i = 1; i < MG_MAX_DISKS; i++) {
        if (intx_more[i].port && intx_more[i].line == line) {
            ours = 1;
            if (inb(intx_more[i].port) & 1) {
                disk_irqs[i]++;
            }
        }
    }
    return ours;
}

void idt_init(void)
{
    struct {
        uint16_t limit;
        uint32_t base;
    } __attribute__((packed)) desc;
    int i;

    for (i = 0; i < 256; i++) {
        idt[i].off_lo = isr_table[i] & 0xffff;
        idt[i].sel = 0x08;
        idt[i].flags = 0x8e00;          /* present, ring 0, interrupt gate */
        idt[i].off_hi = isr_table[i] >> 16;
    }
    desc.limit = sizeof(idt) - 1;
    desc.base = (uint32_t)idt;
    asm volatile("lidt %0" : : "m"(desc));
}

/* Remap the 8259s to 0x20..0x2f, mask everything but unmask_line (if >= 0). */
void pic_init(int unmask_line)
{
    uint8_t m1 = 0xff, m2 = 0xff;

    outb(0x20, 0x11);
    outb(0xa0, 0x11);
    outb(0x21, VEC_PIC_BASE);
    outb(0xa1, VEC_PIC_BASE + 8);
    outb(0x21, 0x04);
    outb(0xa1, 0x02);
    outb(0x21, 0x01);
    outb(0xa1, 0x01);
    outb(0x21, m1);
    outb(0xa1, m2);
    pic_unmask(unmask_line);
}

/* Unmask one more 8259 line (level triggered, as PCI INTx is). */
void pic_unmask(int line)
{
    uint16_t elcr;

    if (line < 0 || line >= 16) {
        return;
    }
    elcr = 0x4d0 + (line >> 3);
    outb(elcr, inb(elcr) | (1 << (line & 7)));
    if (line < 8) {
        outb(0x21, inb(0x21) & ~(1 << line));
    } else {
        outb(0x21, inb(0x21) & ~(1 << 2));
        outb(0xa1, inb(0xa1) & ~(1 << (line - 8)));
    }
}

#define LAPIC_EOI       0x0b0
#define LAPIC_SVR       0x0f0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_TMR_INIT  0x380
#define LAPIC_TMR_DIV   0x3e0

static inline void lapic_write(uint32_t reg, uint32_t val)
{
    writel(LAPIC_BASE + reg, val);
}

/* Enable the LAPIC, route the PIC through LINT0 (ExtINT), 10 Hz watchdog tick. */
void lapic_init(void)
{
    lapic_write(LAPIC_SVR, 0x100 | VEC_SPURIOUS);
    lapic_write(LAPIC_LVT_LINT0, 0x700);
    lapic_write(LAPIC_LVT_LINT1, 0x400);
    lapic_write(LAPIC_TMR_DIV, 0x0b);                   /* divide by 1 */
    lapic_write(LAPIC_LVT_TIMER, (1 << 17) | VEC_TIMER); /* periodic */
    lapic_write(LAPIC_TMR_INIT, 100000000);             /* 100 ms at 1 GHz */
}

/* Change the tick's period (QEMU's LAPIC timer counts at 1 GHz). */
void lapic_timer_ms(uint32_t ms)
{
    lapic_write(LAPIC_TMR_INIT, ms * 1000000u);
}

/* The spin's bound: the timer ends it sooner unless interrupts are lost. */
#define SPIN_WAIT_MS 200

void safe_halt(void)
{
    uint32_t irqs = irq_count, ticks = timer_ticks, others = unexpected_irqs;
    uint64_t deadline;

    if (!mg_idle_spin) {
        asm volatile("sti; hlt; cli" ::: "memory", "cc");
        return;
    }
    deadline = rdtsc() + ms_to_cycles(SPIN_WAIT_MS);
    asm volatile("sti" ::: "memory", "cc");
    while (irq_count == irqs && timer_ticks == ticks && unexpected_irqs == others &&
           rdtsc() < deadline) {
        cpu_relax();
    }
    asm volatile("cli" ::: "memory", "cc");
}

void mg_interrupt(uint32_t vector)
{
    if (vector < 32) {
        out_str("\nMICROGUEST-FAULT {\"vector\":");
        out_u64(vector);
        out_str("}\n");
        mg_poweroff(0);
    }
    if (vector == VEC_TIMER) {
        timer_ticks++;
        lapic_write(LAPIC_EOI, 0);
    } else if (vector == VEC_MSIX_QUEUE) {
        irq_count++;
        disk_irqs[0]++;
        lapic_write(LAPIC_EOI, 0);
    } else if (vector > VEC_MSIX_DISK && vector < VEC_MSIX_DISK + MG_MAX_DISKS) {
        irq_count++;
        disk_irqs[vector - VEC_MSIX_DISK]++;
        lapic_write(LAPIC_EOI, 0);
    } else if (vector == VEC_MSIX_QUEUE2) {
        irq_count++;
        irq_count_alt++;
        lapic_write(LAPIC_EOI, 0);
    } else if (vector >= VEC_PIC_BASE && vector < VEC_PIC_BASE + 16) {
        int line = vector - VEC_PIC_BASE;

        if (intx_ack(line)) {
            irq_count++;
        } else if (line != 7 && line != 15) {
            unexpected_irqs++;
        }
        if (line >= 8) {
            outb(0xa0, 0x20);
        }
        outb(0x20, 0x20);
    } else if (vector != VEC_SPURIOUS) {
        unexpected_irqs++;
        lapic_write(LAPIC_EOI, 0);
    }
}

/* ---- PCI ---- */

static void pci_addr(int bdf, int off)
{
    outl(0xcf8, 0x80000000u | ((uint32_t)bdf << 8) | (off & 0xfc));
}

uint32_t pci_read32(int bdf, int off)
{
    pci_addr(bdf, off);
    return inl(0xcfc);
}

uint16_t pci_read16(int bdf, int off)
{
    pci_addr(bdf, off);
    return inw(0xcfc + (off & 2));
}

uint8_t pci_read8(int bdf, int off)
{
    pci_addr(bdf, off);
    return inb(0xcfc + (off & 3));
}

void pci_write32(int bdf, int off, uint32_t val)
{
    pci_addr(bdf, off);
    outl(0xcfc, val);
}

void pci_write16(int bdf, int off, uint16_t val)
{
    pci_addr(bdf, off);
    outw(0xcfc + (off & 2), val);
}

/* Bus 0 only (i440FX/Q35 put the device there); returns bdf or -1. */
int pci_find(uint16_t vendor, uint16_t device)
{
    return pci_find_nth(vendor, device, 0);
}

/* The nth (from 0) function with these IDs in scan order, or -1. */
int pci_find_nth(uint16_t vendor, uint16_t device, int nth)
{
    int dev, fn;

    for (dev = 0; dev < 32; dev++) {
        for (fn = 0; fn < 8; fn++) {
            int bdf = (dev << 3) | fn;
            uint32_t id = pci_read32(bdf, 0);

            if ((id & 0xffff) == 0xffff) {
                if (fn == 0) {
                    break;
                }
                continue;
            }
            if ((id & 0xffff) == vendor && (id >> 16) == device && nth-- == 0) {
                return bdf;
            }
            if (fn == 0 && !(pci_read8(bdf, 0x0e) & 0x80)) {
                break;
            }
        }
    }
    return -1;
}

int pci_find_cap(int bdf, uint8_t id)
{
    int pos, guard = 48;

    if (!(pci_read16(bdf, 0x06) & 0x10)) {
        return 0;
    }
    pos = pci_read8(bdf, 0x34) & 0xfc;
    while (pos && guard--) {
        if (pci_read8(bdf, pos) == id) {
            return pos;
        }
        pos = pci_read8(bdf, pos + 1) & 0xfc;
    }
    return 0;
}
