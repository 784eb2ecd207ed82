/*
 * Micro-guest: port and memory I/O, CPU helpers, shared declarations.
 */
#ifndef MG_HW_H
#define MG_HW_H

#include <stdint.h>
#include <stddef.h>

#define barrier()       asm volatile("" ::: "memory")

static inline void mb(void)
{
    asm volatile("lock; addl $0, (%%esp)" ::: "memory", "cc");
}

static inline void outb(uint16_t port, uint8_t val)
{
    asm volatile("outb %0, %1" : : "a"(val), "Nd"(port));
}

static inline void outw(uint16_t port, uint16_t val)
{
    asm volatile("outw %0, %1" : : "a"(val), "Nd"(port));
}

static inline void outl(uint16_t port, uint32_t val)
{
    asm volatile("outl %0, %1" : : "a"(val), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t val;
    asm volatile("inb %1, %0" : "=a"(val) : "Nd"(port));
    return val;
}

static inline uint16_t inw(uint16_t port)
{
    uint16_t val;
    asm volatile("inw %1, %0" : "=a"(val) : "Nd"(port));
    return val;
}

static inline uint32_t inl(uint16_t port)
{
    uint32_t val;
    asm volatile("inl %1, %0" : "=a"(val) : "Nd"(port));
    return val;
}

static inline void writel(uintptr_t addr, uint32_t val)
{
    *(volatile uint32_t *)addr = val;
}

static inline uint32_t readl(uintptr_t addr)
{
    return *(volatile uint32_t *)addr;
}

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static inline void cpu_relax(void)
{
    asm volatile("pause" ::: "memory");
}

static inline void irq_disable(void)
{
    asm volatile("cli" ::: "memory");
}

/*
 * sti; hlt: the interrupt shadow of sti guarantees no wake-up is lost.  This
 * is the only place interrupts are enabled (see isr_common in boot.S).
 */
/* idle=spin: wait for interrupts with them enabled but without HLT.  Under
 * nested KVM on an emulated SVM the vCPU sometimes stays halted with IF clear
 * after "sti; hlt" (README, kvm-nested); tests of the interrupt path that are
 * not about halting use this to keep out of that hang. */
extern int mg_idle_spin;

/* Let pending interrupts in and wait for one: HLT, or with idle=spin a loop
 * with interrupts enabled until any interrupt (the device's, the 10 Hz
 * timer's) has been taken, bounded by SPIN_WAIT_MS.  Callers loop on their
 * own condition.
 *
 * The spin has to stay open until something arrives: a window of a few
 * instructions let MSI-X in under nested KVM but not INTx, which L1's KVM
 * injects only after an interrupt-window exit (a CI run counted 0 INTx
 * interrupts in 1000 requests that way).  Each turn of the loop ends a
 * translated block, where TCG, and the SVM it emulates, looks for them. */
void safe_halt(void);

/* 64-by-32 division without libgcc (two divl). */
static inline uint64_t div_u64_u32(uint64_t n, uint32_t d, uint32_t *rem)
{
    uint32_t hi = n >> 32, lo = n, qhi, qlo, r;

    qhi = hi / d;
    r = hi % d;
    asm("divl %4" : "=a"(qlo), "=d"(r) : "a"(lo), "d"(r), "rm"(d));
    if (rem) {
        *rem = r;
    }
    return ((uint64_t)qhi << 32) | qlo;
}

uint64_t div_u64(uint64_t n, uint64_t d);

/* lib.c */
void *memset(void *s, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int streq(const char *a, const char *b);

void serial_init(void);
void out_char(char c);
void out_str(const char *s);
void out_u64(uint64_t v);
void out_i64(int64_t v);
void out_hex(uint32_t v);
void out_key_u64(const char *key, uint64_t v);
void out_key_str(const char *key, const char *v);
void out_flush(void);
void mg_halt(void) __attribute__((noreturn));
void mg_poweroff(int ok) __attribute__((noreturn));

/* timing */
extern uint64_t tsc_hz;
void tsc_calibrate(void);
uint64_t cycles_to_ns(uint64_t cycles);
uint64_t ms_to_cycles(uint32_t ms);

/* interrupts */
#define VEC_TIMER       0x30
#define VEC_MSIX_QUEUE  0x41
#define VEC_MSIX_QUEUE2 0x42            /* MSI-X entry 1 (mode=msix-churn) */
#define VEC_MSIX_DISK   0x50            /* disks=N: disk i > 0 raises 0x50 + i */
#define VEC_PIC_BASE    0x20
#define VEC_SPURIOUS    0xff
#define LAPIC_BASE      0xfee00000u

extern volatile uint32_t irq_count;
extern volatile uint32_t irq_count_alt;     /* of VEC_MSIX_QUEUE2 */
extern volatile uint32_t timer_ticks;
extern volatile uint32_t unexpected_irqs;

/* disks=N: at most this many virtio-blk devices are driven at once */
#define MG_MAX_DISKS    8

/* interrupts per disk: its MSI-X vector, or its ISR found set on an INTx line */
extern volatile uint32_t disk_irqs[MG_MAX_DISKS];

/* INTx sources: disk 0's line and ISR port (intx_line, intx_ack_port) and those
 * of disks 1.. added with intx_add(); a line may be shared by several disks */
extern int intx_line;
extern uint16_t intx_ack_port;
void intx_add(int disk, int line, uint16_t isr_port);

void idt_init(void);
void pic_init(int unmask_line);
void pic_unmask(int line);
void lapic_init(void);
void lapic_timer_ms(uint32_t ms);
void mg_interrupt(uint32_t vector);

/* PCI config space */
uint32_t pci_read32(int bdf, int off);
uint16_t pci_read16(int bdf, int off);
uint8_t pci_read8(int bdf, int off);
void pci_write32(int bdf, int off, uint32_t val);
void pci_write16(int bdf, int off, uint16_t val);
int pci_find(uint16_t vendor, uint16_t device);
int pci_find_nth(uint16_t vendor, uint16_t device, int nth);
int pci_find_cap(int bdf, uint8_t id);

#endif
