/*
 * CPRGUEST aarch64: a bare-metal firmware image for the cpr-transfer harness.
 *
 * Loaded with `qemu-system-aarch64 -machine virt -bios guest.bin`: QEMU copies
 * the file into the first flash bank (guest-physical 0x0) and every CPU resets
 * to address 0 in EL1 (no EL2/EL3 unless virtualization=on / secure=on), with
 * the MMU and caches off. No UEFI, no DTB parsing, no disk, so this code is
 * the only thing in the guest that writes guest RAM, and it writes only the
 * work area (layout.json: WORK_BASE, WORK_SIZE). Rules that keep it that way:
 *   - no stack (no sp use, no bl/ret needed), no exception vectors; exceptions
 *     and interrupts are never unmasked and the code raises none;
 *   - every store is a store into the work area or to the PL011 UART;
 *   - secondary CPUs (MPIDR Aff0..Aff3 != 0) park in a wfe loop and touch
 *     nothing. On virt they start powered off anyway (PSCI), this is belt
 *     and braces for configurations where they do not.
 * With the MMU off, data accesses are Device-nGnRnE: every access here is
 * naturally aligned, and the 64-bit counter is one `str x` (single-copy
 * atomic), so a host reader never sees a torn counter.
 *
 * Build: `python images/build.py aarch64-virt`. The constants (WORK_BASE,
 * OFF_*, MAGIC, VERSION, SERIAL_BASE, HEARTBEAT_SHIFT, RAM_BASE, ROM_BASE,
 * ROM_SIZE and the BOOT_MARKER / HEARTBEAT strings) are generated from
 * layout.json into layout.inc by build.py; nothing here repeats them.
 *
 * Assembled with `aarch64-linux-gnu-as`, linked with `aarch64-linux-gnu-ld
 * -T link.ld`, flattened with `aarch64-linux-gnu-objcopy -O binary`.
 */

	.include "layout.inc"

	.if ROM_BASE != 0 || ROM_SIZE != 0x10000
	.error "link.ld assumes a 64 KiB ROM at 0x0"
	.endif
	.if HEARTBEAT_SHIFT < 1 || HEARTBEAT_SHIFT > 31
	.error "HEARTBEAT_SHIFT must be 1..31"
	.endif
	.if WORK_BASE < RAM_BASE
	.error "the work area must be in RAM"
	.endif

	/* PL011 registers, offsets from SERIAL_BASE */
	.set UART_DR,   0x00
	.set UART_FR,   0x18
	.set UART_IBRD, 0x24
	.set UART_FBRD, 0x28
	.set UART_LCRH, 0x2c
	.set UART_CR,   0x30
	.set UART_IMSC, 0x38
	.set UART_ICR,  0x44
	.set FR_TXFF_BIT, 5		/* transmit FIFO full */
	.set TX_SPIN, 0x4000		/* bound on FR polls per byte */

	.set HB_MASK, (1 << HEARTBEAT_SHIFT) - 1

/*
 * PUTS start, end: write the bytes [start, end) to the UART at x1.
 * Inline (no call, no stack). Clobbers x3, x4, w5, w6.
 * Each byte waits for FR.TXFF to clear at most TX_SPIN polls, then is sent anyway.
 */
	.macro PUTS start, end
	adr	x3, \start
	mov	x4, #(\end - \start)
.Lputs_byte\@:
	mov	w5, #TX_SPIN
.Lputs_poll\@:
	ldr	w6, [x1, #UART_FR]
	tbz	w6, #FR_TXFF_BIT, .Lputs_send\@
	subs	w5, w5, #1
	b.ne	.Lputs_poll\@
.Lputs_send\@:
	ldrb	w6, [x3], #1
	str	w6, [x1, #UART_DR]
	subs	x4, x4, #1
	b.ne	.Lputs_byte\@
	.endm

	.section .text, "ax"
	.globl	_start
_start:
	/* 0. only the boot CPU runs; others park without touching memory */
	mrs	x0, mpidr_el1
	ldr	x1, =0xff00ffffff	/* Aff3, Aff2, Aff1, Aff0 */
	and	x0, x0, x1
	cbnz	x0, park
	msr	daifset, #0xf		/* D, A, I, F masked (they are at reset) */

	/* 1. serial: PL011 off, interrupts masked and cleared, 115200 8N1 at
	 * 24 MHz (QEMU ignores the rate), FIFOs on, then UART + TX + RX on */
	ldr	x1, =SERIAL_BASE
	str	wzr, [x1, #UART_CR]
	str	wzr, [x1, #UART_IMSC]
	mov	w0, #0x7ff
	str	w0, [x1, #UART_ICR]
	mov	w0, #13
	str	w0, [x1, #UART_IBRD]
	mov	w0, #1
	str	w0, [x1, #UART_FBRD]
	mov	w0, #0x70		/* WLEN=8 bits, FEN */
	str	w0, [x1, #UART_LCRH]
	mov	w0, #0x301		/* RXE, TXE, UARTEN */
	str	w0, [x1, #UART_CR]
	PUTS	boot_msg, boot_msg_end

	/* 2. work-area header. boots: +1 if the magic survived (a reset), else 1 */
	ldr	x2, =WORK_BASE
	ldr	w7, =MAGIC
	mov	w0, #1
	ldr	w3, [x2, #OFF_MAGIC]
	cmp	w3, w7
	b.ne	1f
	ldr	w0, [x2, #OFF_BOOTS]
	add	w0, w0, #1
1:	str	w0, [x2, #OFF_BOOTS]
	str	xzr, [x2, #OFF_COUNTER]
	str	wzr, [x2, #OFF_HEARTBEATS]
	mov	w0, #VERSION
	str	w0, [x2, #OFF_VERSION]
	dmb	sy
	str	w7, [x2, #OFF_MAGIC]	/* last: a valid magic means a complete header */

	/* 3. main loop: the 64-bit counter lives in RAM (read, +1, one 64-bit
	 * store), so a lost or zeroed work area shows as a counter restart;
	 * a heartbeat every 2^HEARTBEAT_SHIFT passes */
main_loop:
	ldr	x0, [x2, #OFF_COUNTER]
	add	x0, x0, #1
	str	x0, [x2, #OFF_COUNTER]
	tst	x0, #HB_MASK
	b.ne	main_loop
	PUTS	hb_msg, hb_msg_end
	ldr	w0, [x2, #OFF_HEARTBEATS]
	add	w0, w0, #1
	str	w0, [x2, #OFF_HEARTBEATS]
	b	main_loop

park:
	wfe
	b	park

/* ------------------------------------------------------------------------ */
/* read-only data and the literal pool, in the ROM */

	.ltorg
boot_msg:
	BOOT_MARKER_BYTES
boot_msg_end:
hb_msg:
	HEARTBEAT_BYTES
hb_msg_end:
