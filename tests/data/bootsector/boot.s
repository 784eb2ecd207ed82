# Boot sector for tests/test_dataplane.py: disk I/O through the BIOS's virtio-blk
# driver (SeaBIOS), i.e. through virtio-blk and, in the dataplane variant, its
# data-plane thread.  Real mode, loaded at 0:7c00 from LBA 0.  Assembled at test
# time:  as --32 -o boot.o boot.s && ld -m elf_i386 -e _start -Ttext 0x7c00
#        --oformat binary -o boot.bin boot.o
#
# Steps (each prints its letter to the debug port 0xe9 when it passes):
#   A  INT 13h AH=02 (CHS) reads LBA 1 into 0:7e00; check the pattern
#   B  INT 13h AH=41 finds the EDD extensions
#   C  INT 13h AH=42 reads 16 sectors at LBA 1000 in one call; check the pattern
#   D  fill 8 sectors with the guest pattern, INT 13h AH=43 writes them at LBA 2000
#   E  INT 13h AH=42 reads LBA 2000..2007 back into another buffer; check
# then "DPBOOT-OK" (or "DPBOOT-FAIL <step> <AH in hex>") and halt.
#
# Pattern of a sector with seed s (seed = LBA & 0xff, +0x80 for guest writes):
#   byte k = (s + 13*k + (k >= 256 ? 0x55 : 0)) & 0xff
        .code16
        .text
        .globl _start
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7c00, %sp
        ljmp    $0, $start2
start2:
        sti
        cld
        mov     %dl, drive
        mov     $msg_start, %si
        call    puts

        # A: CHS read of LBA 1 (cylinder 0, head 0, sector 2)
        movb    $'A', step
        mov     $0x7e00, %bx
        mov     $0x0201, %ax
        mov     $0x0002, %cx
        xor     %dh, %dh
        mov     drive, %dl
        int     $0x13
        jc      fail
        test    %ah, %ah
        jnz     fail
        xor     %ax, %ax
        mov     %ax, %es
        mov     $0x7e00, %di
        mov     $1, %cx
        mov     $1, %bl
        call    verify
        jc      fail
        call    passed

        # B: EDD extensions present
        movb    $'B', step
        mov     $0x41, %ah
        mov     $0x55aa, %bx
        mov     drive, %dl
        int     $0x13
        jc      fail
        cmp     $0xaa55, %bx
        jne     fail
        call    passed

        # C: 16 sectors from LBA 1000 in one request
        movb    $'C', step
        mov     $dap_read, %si
        call    edd42
        jc      fail
        mov     $0x1000, %ax
        mov     %ax, %es
        xor     %di, %di
        mov     $16, %cx
        mov     $0xe8, %bl              # 1000 & 0xff
        call    verify
        jc      fail
        call    passed

        # D: write 8 sectors at LBA 2000
        movb    $'D', step
        mov     $0x2000, %ax
        mov     %ax, %es
        xor     %di, %di
        mov     $8, %cx
        mov     $0x50, %bl              # (2000 & 0xff) + 0x80
        call    fill
        mov     $dap_write, %si
        mov     $0x4300, %ax
        mov     drive, %dl
        int     $0x13
        jc      fail
        test    %ah, %ah
        jnz     fail
        call    passed

        # E: read them back into another buffer
        movb    $'E', step
        mov     $dap_back, %si
        call    edd42
        jc      fail
        mov     $0x3000, %ax
        mov     %ax, %es
        xor     %di, %di
        mov     $8, %cx
        mov     $0x50, %bl
        call    verify
        jc      fail
        call    passed

        mov     $msg_ok, %si
        call    puts
        jmp     halt

fail:
        mov     %ah, %bh
        mov     $msg_fail, %si
        call    puts
        mov     step, %al
        call    putc
        mov     $' ', %al
        call    putc
        mov     %bh, %al
        shr     $4, %al
        call    hexdigit
        mov     %bh, %al
        call    hexdigit
        mov     $'\n', %al
        call    putc
halt:
        cli
        hlt
        jmp     halt

# INT 13h AH=42h with the DAP at %si; CF set on error (AH = status)
edd42:
        mov     $0x42, %ah
        mov     drive, %dl
        int     $0x13
        jc      1f
        test    %ah, %ah
        jz      1f
        stc
1:      ret

passed:
        mov     step, %al
        jmp     putc

# verify %cx sectors at %es:%di against the pattern, first seed %bl; CF on mismatch
verify:
        mov     %bl, %al
        mov     $2, %ah
1:      mov     $256, %dx
2:      cmp     %es:(%di), %al
        jne     3f
        inc     %di
        add     $13, %al
        dec     %dx
        jnz     2b
        add     $0x55, %al
        dec     %ah
        jnz     1b
        inc     %bl
        loop    verify
        clc
        ret
3:      mov     $0xee, %ah              # "status" reported for a pattern mismatch
        stc
        ret

# fill %cx sectors at %es:%di with the pattern, first seed %bl
fill:
        mov     %bl, %al
        mov     $2, %ah
1:      mov     $256, %dx
2:      mov     %al, %es:(%di)
        inc     %di
        add     $13, %al
        dec     %dx
        jnz     2b
        add     $0x55, %al
        dec     %ah
        jnz     1b
        inc     %bl
        loop    fill
        ret

hexdigit:
        and     $0x0f, %al
        add     $'0', %al
        cmp     $'9', %al
        jbe     putc
        add     $('a' - '0' - 10), %al
putc:
        push    %dx
        mov     $0xe9, %dx
        outb    %al, %dx
        pop     %dx
        ret

puts:
        lodsb
        test    %al, %al
        jz      1f
        call    putc
        jmp     puts
1:      ret

        .p2align 2
dap_read:                               # 16 sectors at LBA 1000 -> 1000:0000
        .byte   16, 0
        .word   16, 0, 0x1000
        .quad   1000
dap_write:                              # 8 sectors at LBA 2000 <- 2000:0000
        .byte   16, 0
        .word   8, 0, 0x2000
        .quad   2000
dap_back:                               # 8 sectors at LBA 2000 -> 3000:0000
        .byte   16, 0
        .word   8, 0, 0x3000
        .quad   2000
drive:  .byte   0x80
step:   .byte   '?'
msg_start:
        .asciz  "DPBOOT-START "
msg_ok: .asciz  " DPBOOT-OK\n"
msg_fail:
        .asciz  " DPBOOT-FAIL "

        .org    510
        .word   0xaa55
