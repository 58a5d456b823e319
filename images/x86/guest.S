/*
 * CPRGUEST x86: a bare-metal firmware image for the cpr-transfer harness.
 *
 * Loaded with `qemu-system-x86_64 -bios guest.bin`: a flat 64 KiB ROM mapped
 * at 0xFFFF0000..0xFFFFFFFF. No SeaBIOS, no disk, no option ROMs, so this code
 * is the only thing that ever writes guest RAM, and it writes only the work
 * area (layout.json: WORK_BASE, WORK_SIZE). Rules that keep it that way:
 *   - no stack (no call/push/pop/int/iret), no IDT, interrupts stay disabled;
 *   - the GDT lives in the ROM and its descriptors have the "accessed" bit
 *     pre-set, so loading a segment never makes the CPU write the GDT;
 *   - every store is an absolute store into the work area.
 *
 * Build: `python images/build.py x86-bios`. The constants (WORK_BASE, OFF_*,
 * MAGIC, VERSION, SERIAL_PORT, HEARTBEAT_SHIFT, ROM_BASE, ROM_SIZE and the
 * BOOT_MARKER / HEARTBEAT strings) are generated from layout.json into
 * layout.inc by build.py; nothing here repeats them.
 *
 * Assembled with `as --32`, linked with `ld -m elf_i386 -T link.ld`,
 * flattened with `objcopy -O binary`.
 */

	.include "layout.inc"

	.if ROM_BASE != 0xFFFF0000 || ROM_SIZE != 0x10000
	.error "link.ld assumes a 64 KiB ROM at 0xFFFF0000"
	.endif
	.if HEARTBEAT_SHIFT < 1 || HEARTBEAT_SHIFT > 31
	.error "HEARTBEAT_SHIFT must be 1..31"
	.endif

	.set SEL_CODE32, 0x08
	.set SEL_DATA32, 0x10

	/* 16550 UART registers, relative to SERIAL_PORT */
	.set UART_THR, SERIAL_PORT + 0	/* DLAB=0: transmit holding */
	.set UART_DLL, SERIAL_PORT + 0	/* DLAB=1: divisor low */
	.set UART_IER, SERIAL_PORT + 1	/* DLAB=0: interrupt enable */
	.set UART_DLM, SERIAL_PORT + 1	/* DLAB=1: divisor high */
	.set UART_FCR, SERIAL_PORT + 2
	.set UART_LCR, SERIAL_PORT + 3
	.set UART_MCR, SERIAL_PORT + 4
	.set UART_LSR, SERIAL_PORT + 5
	.set LSR_THRE, 0x20
	.set LSR_SPIN, 0x4000		/* bound on THR-empty polls per byte */

	/* absolute addresses of the work-area fields */
	.set WA_MAGIC,      WORK_BASE + OFF_MAGIC
	.set WA_VERSION,    WORK_BASE + OFF_VERSION
	.set WA_COUNTER_LO, WORK_BASE + OFF_COUNTER
	.set WA_COUNTER_HI, WORK_BASE + OFF_COUNTER + 4
	.set WA_BOOTS,      WORK_BASE + OFF_BOOTS
	.set WA_HEARTBEATS, WORK_BASE + OFF_HEARTBEATS
	.set HB_MASK, (1 << HEARTBEAT_SHIFT) - 1

/*
 * PUTS start, end: write the bytes [start, end) to the UART.
 * Inline (no call, no stack). Clobbers eax, ebx, ecx, edx, esi.
 * Each byte waits for LSR.THRE at most LSR_SPIN polls, then is sent anyway.
 */
	.macro PUTS start, end
	movl	$\start, %esi
	movl	$(\end - \start), %ecx
.Lputs_byte\@:
	movl	$LSR_SPIN, %ebx
	movw	$UART_LSR, %dx
.Lputs_poll\@:
	inb	%dx, %al
	testb	$LSR_THRE, %al
	jnz	.Lputs_send\@
	decl	%ebx
	jnz	.Lputs_poll\@
.Lputs_send\@:
	movb	(%esi), %al
	movw	$UART_THR, %dx
	outb	%al, %dx
	incl	%esi
	decl	%ecx
	jnz	.Lputs_byte\@
	.endm

	.macro SETREG port, value
	movw	$\port, %dx
	movb	$\value, %al
	outb	%al, %dx
	.endm

/* ------------------------------------------------------------------------ */
/* 16-bit real mode: CS base 0xFFFF0000, so offsets are relative to ROM_BASE */

	.section .text, "ax"
	.code16
	.globl	rom_start
rom_start:
init16:
	cli
	cld
	/* GDT descriptor is in the ROM: CS-relative (CS base = rom_start =
	 * ROM_BASE, link.ld asserts it), 32-bit base (lgdtl) */
	lgdtl	%cs:(gdt_desc - rom_start)
	movl	%cr0, %eax
	orl	$1, %eax		/* CR0.PE */
	movl	%eax, %cr0
	/* 32-bit operand size far jump to the flat code segment's linear address */
	ljmpl	$SEL_CODE32, $init32

/* ------------------------------------------------------------------------ */
/* 32-bit protected mode, flat segments, interrupts disabled forever */

	.code32
init32:
	movw	$SEL_DATA32, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs

	/* 1. serial: plain 16550 init, 115200 8N1, FIFO on, no UART interrupts */
	SETREG	UART_IER, 0x00
	SETREG	UART_LCR, 0x80		/* DLAB=1 */
	SETREG	UART_DLL, 0x01		/* divisor 1 = 115200 baud */
	SETREG	UART_DLM, 0x00
	SETREG	UART_LCR, 0x03		/* DLAB=0, 8N1 */
	SETREG	UART_FCR, 0xC7		/* enable + clear FIFOs */
	SETREG	UART_MCR, 0x03		/* DTR, RTS; OUT2 off: no IRQ line */
	PUTS	boot_msg, boot_msg_end

	/* 2. work-area header. boots: +1 if the magic survived (a reset), else 1 */
	movl	$1, %eax
	cmpl	$MAGIC, WA_MAGIC
	jne	1f
	movl	WA_BOOTS, %eax
	incl	%eax
1:	movl	%eax, WA_BOOTS
	movl	$0, WA_COUNTER_LO
	movl	$0, WA_COUNTER_HI
	movl	$0, WA_HEARTBEATS
	movl	$VERSION, WA_VERSION
	movl	$MAGIC, WA_MAGIC	/* last: a valid magic means a complete header */

	/* 3. main loop: 64-bit counter in RAM; a heartbeat every 2^HEARTBEAT_SHIFT */
main_loop:
	addl	$1, WA_COUNTER_LO
	adcl	$0, WA_COUNTER_HI
	testl	$HB_MASK, WA_COUNTER_LO
	jnz	main_loop
	PUTS	hb_msg, hb_msg_end
	incl	WA_HEARTBEATS
	jmp	main_loop

/* ------------------------------------------------------------------------ */
/* read-only data, in the ROM (same section as rom_start, so that
 * gdt_desc - rom_start is an assembly-time constant) */

	.balign	8
gdt:
	.quad	0x0000000000000000	/* null */
	/* 0x08: code, base 0, limit 4 GiB, 32-bit, P=1 DPL=0, exec/read, accessed */
	.quad	0x00CF9B000000FFFF
	/* 0x10: data, base 0, limit 4 GiB, 32-bit, P=1 DPL=0, read/write, accessed */
	.quad	0x00CF93000000FFFF
gdt_end:
	.balign	4
gdt_desc:
	.word	gdt_end - gdt - 1
	.long	gdt			/* linear address 0xFFFFxxxx */

boot_msg:
	BOOT_MARKER_BYTES
boot_msg_end:
hb_msg:
	HEARTBEAT_BYTES
hb_msg_end:

/* ------------------------------------------------------------------------ */
/* reset vector: linear 0xFFFFFFF0 = CS base 0xFFFF0000 + IP 0xFFF0 */

	.section .reset, "ax"
	.code16
	.globl	reset_vector
reset_vector:
	cli
	jmp	init16
	.org	16, 0xF4		/* pad to exactly 16 bytes with hlt */
