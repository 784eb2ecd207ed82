/*
 * Micro-guest entry: multiboot header, flat GDT, interrupt stubs.
 *
 * The header carries the address fields (flag 16) so that loaders which do
 * not parse ELF (the 2012 qemu-kvm one) can load the image flat; the linker
 * script keeps the file layout identical to the memory layout.
 */

#define MB_MAGIC    0x1BADB002
#define MB_FLAGS    0x00010002      /* memory info + address fields */

    .section .multiboot, "a"
    .align 4
mb_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
    .long mb_header                 /* header_addr */
    .long _load_start               /* load_addr */
    .long _load_end                 /* load_end_addr */
    .long _bss_end                  /* bss_end_addr */
    .long _start                    /* entry_addr */

    .text
    .globl _start
_start:
    cli
    cld
    movl $stack_top, %esp
    movl %eax, %esi                 /* multiboot magic */
    movl %ebx, %ebp                 /* multiboot info */
    lgdt gdt_desc
    ljmp $0x08, $1f
1:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    /* zero .bss (the loader should have, but be sure) */
    movl $_bss_start, %edi
    movl $_bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb
    pushl %ebp
    pushl %esi
    call mg_main
2:
    cli
    hlt
    jmp 2b

/* Interrupt stubs: push the vector number, call mg_interrupt(vector). */
    .altmacro
    .macro ISR_STUB n
isr_\n:
    pushl $\n
    jmp isr_common
    .endm
    .macro ISR_ADDR n
    .long isr_\n
    .endm

    .align 16
    .set vec, 0
    .rept 256
    ISR_STUB %vec
    .set vec, vec + 1
    .endr

/*
 * Interrupts are only ever enabled inside "sti; hlt; cli" (safe_halt), so
 * the handler returns to that cli with "ret $8" (dropping CS and EFLAGS and
 * leaving IF clear) instead of iret: the nested KVM on some hosts (PVM)
 * cannot emulate a 32-bit iret.  Exceptions never return.
 */
isr_common:
    pushal
    cld
    movl 32(%esp), %eax
    pushl %eax
    call mg_interrupt
    addl $4, %esp
    popal
    addl $4, %esp
    ret $8

    .section .rodata
    .align 4
    .globl isr_table
isr_table:
    .set vec, 0
    .rept 256
    ISR_ADDR %vec
    .set vec, vec + 1
    .endr

    .align 8
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff        /* 0x08: flat 32-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: flat data */
gdt_desc:
    .word gdt_desc - gdt - 1
    .long gdt

    .bss
    .align 16
stack_bottom:
    .skip 32768
stack_top:

    .section .note.GNU-stack, "", @progbits
