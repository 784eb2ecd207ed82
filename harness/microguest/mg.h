/*
 * Micro-guest: command line settings and shared state.
 */
#ifndef MG_MG_H
#define MG_MG_H

#include "virtio.h"

struct mg_config {
    char rw[12];            /* randread randwrite read write randrw */
    uint32_t bs;            /* bytes, multiple of 512 */
    uint32_t qd;
    uint32_t n;             /* timed requests */
    uint32_t warmup;        /* untimed requests before */
    int seq;                /* sequential offsets */
    int rwmix;              /* randrw: percent reads */
    enum wait_mode wait;
    const char *wait_name;
    enum kick_mode kick;
    int verify;
    uint32_t seed;
    int hostile;
    int churn;              /* mode=msix-churn (safety.c) */
    int misaligned;         /* mode=misaligned (safety.c) */
    int ram_change;         /* mode=ram-change (safety.c) */
    int stale_code;         /* mode=stale-code (safety.c) */
    int msix_vga;           /* mode=msix-vga (safety.c) */
    int msix_then_intx;     /* mode=msix-then-intx (safety.c) */
    int slots_full;         /* mode=slots-full (safety.c) */
    int unmap_first;        /* ram-change: disable the BAR, do not move it */
    uint32_t churn_every;   /* msix-churn: batches between steps */
    int indirect;           /* bench: one indirect descriptor per request */
    uint32_t disks;         /* bench: drive the first N virtio-blk devices */
    uint32_t pause_ms;      /* hostile: pause after a broken ring (safety) */
    char hostile_case[32];
    uint32_t timeout_ms;    /* per-wait timeout */
    int halt;               /* halt instead of power off at the end */
};

extern struct mg_config cfg;
extern struct vdev dev;
extern uintptr_t ram_end;

/* bump allocator for page-aligned, zeroed DMA memory; 0 when RAM runs out */
uintptr_t mg_alloc(uint32_t bytes);

void hostile_run(void);

/* safety.c */
const char *churn_setup(void);
void churn_step(void);
void churn_print(void);
int churn_ok(void);
void misaligned_run(void) __attribute__((noreturn));
void ram_change_run(void) __attribute__((noreturn));
void stale_code_run(void) __attribute__((noreturn));
void msix_vga_run(void) __attribute__((noreturn));
void msix_then_intx_run(void) __attribute__((noreturn));
void slots_full_run(void) __attribute__((noreturn));
void mg_finish(int ok) __attribute__((noreturn));

#endif
