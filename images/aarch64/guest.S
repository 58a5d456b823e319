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
 * Heartbeat: every HEARTBEAT_MS of the guest's time (the virtual counter
 * CNTVCT_EL0 at CNTFRQ_EL0 ticks per second) it prints `hb <seq>\n`, seq =
 * the work area's `heartbeats` field in 8 lowercase hex digits (0 after a
 * boot), then bumps the field. The counter is read only every
 * 2^CLOCK_CHECK_SHIFT passes of the counter loop.
 *
 * Build: `python images/build.py aarch64-virt`. The constants (WORK_BASE,
 * OFF_*, MAGIC, VERSION, SERIAL_BASE, HEARTBEAT_MS, CLOCK_CHECK_SHIFT,
 * RAM_BASE, ROM_BASE, ROM_SIZE and the BOOT_MARKER / HEARTBEAT_PREFIX
 * strings) are generated from layout.json into layout.inc by build.py;
 * nothing here repeats them.
 *
 * Assembled with `aarch64-linux-gnu-as`, linked with `aarch64-linux-gnu-ld
 * -T link.ld`, flattened with `aarch64-linux-gnu-objcopy -O binary`.
 */

	.include "layout.inc"

	.if ROM_BASE != 0 || ROM_SIZE != 0x10000
	.error "link.ld assumes a 64 KiB ROM at 0x0"
	.endif
	.if CLOCK_CHECK_SHIFT > 20 || HEARTBEAT_DIGITS != 8 || HEARTBEAT_PREFIX_LEN > 7
	.error "CLOCK_CHECK_SHIFT must be 0..20, the sequence 8 hex digits, the line <= 16 bytes"
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
	.set FR_TXFE_BIT, 7		/* transmit FIFO empty */
	.set TX_SPIN, 0x4000		/* bound on FR polls per byte */

	.set CHECK_MASK, (1 << CLOCK_CHECK_SHIFT) - 1
	.set FALLBACK_KHZ, 62500	/* CNTFRQ_EL0 unset (QEMU sets it): say 62.5 MHz */

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

/*
 * WAIT_TXFE: wait until the transmit FIFO is empty (FR.TXFE; then all 16
 * bytes of it are free), at most TX_SPIN polls. Clobbers w5, w6.
 */
	.macro WAIT_TXFE
	mov	w5, #TX_SPIN
.Ltxfe_poll\@:
	ldr	w6, [x1, #UART_FR]
	tbnz	w6, #FR_TXFE_BIT, .Ltxfe_done\@
	subs	w5, w5, #1
	b.ne	.Ltxfe_poll\@
.Ltxfe_done\@:
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
	str	wzr, [x2, #OFF_CLOCK_KHZ]
	mov	w0, #VERSION
	str	w0, [x2, #OFF_VERSION]
	dmb	sy
	str	w7, [x2, #OFF_MAGIC]	/* last: a valid magic means a complete header */

	/* 3. the clock: CNTVCT_EL0 at CNTFRQ_EL0 Hz. x9 = ticks per ms,
	 * x10 = ticks per heartbeat, for good; the first heartbeat is due a
	 * period from now */
	mrs	x9, cntfrq_el0
	mov	x10, #1000
	udiv	x9, x9, x10
	cbnz	x9, 2f
	ldr	x9, =FALLBACK_KHZ
2:	mov	x10, #HEARTBEAT_MS
	mul	x10, x9, x10
	isb
	mrs	x11, cntvct_el0
	add	x11, x11, x10
	str	x11, [x2, #OFF_HB_DUE]
	dmb	sy
	str	w9, [x2, #OFF_CLOCK_KHZ]	/* calibrated: clock_khz != 0 */

	/* 4. main loop: the 64-bit counter lives in RAM (read, +1, one 64-bit
	 * store), so a lost or zeroed work area shows as a counter restart.
	 * Every 2^CLOCK_CHECK_SHIFT passes the clock is read, and a heartbeat
	 * printed once hb_due has passed */
main_loop:
	ldr	x0, [x2, #OFF_COUNTER]
	add	x0, x0, #1
	str	x0, [x2, #OFF_COUNTER]
	tst	x0, #CHECK_MASK
	b.ne	main_loop
	mrs	x11, cntvct_el0
	ldr	x12, [x2, #OFF_HB_DUE]
	subs	x13, x11, x12		/* now - due, signed */
	b.mi	not_due
	cmp	x13, x10		/* due; a period late or more (a stall, a */
	b.hs	resync			/* clock that jumped): no burst of lines, */
	add	x12, x12, x10		/* the next one a period from now */
	str	x12, [x2, #OFF_HB_DUE]	/* on time: the next one a period on */
	b	heartbeat
not_due:				/* due more than a period ahead: the */
	neg	x13, x13		/* clock went back; count from now */
	cmp	x13, x10
	b.ls	main_loop
	add	x11, x11, x10
	str	x11, [x2, #OFF_HB_DUE]
	b	main_loop
resync:
	add	x11, x11, x10
	str	x11, [x2, #OFF_HB_DUE]
heartbeat:				/* HEARTBEAT_PREFIX, 8 hex digits, "\n": */
	WAIT_TXFE			/* one burst into the empty FIFO */
	adr	x3, hb_prefix
	mov	x4, #(hb_prefix_end - hb_prefix)
5:	ldrb	w6, [x3], #1
	str	w6, [x1, #UART_DR]
	subs	x4, x4, #1
	b.ne	5b
	ldr	w7, [x2, #OFF_HEARTBEATS]
	adr	x3, hex_digits
	mov	w8, #28			/* most significant nibble first */
6:	lsr	w6, w7, w8
	and	w6, w6, #0xF
	ldrb	w6, [x3, x6]
	str	w6, [x1, #UART_DR]
	subs	w8, w8, #4
	b.pl	6b
	mov	w6, #0x0A
	str	w6, [x1, #UART_DR]
	add	w7, w7, #1
	str	w7, [x2, #OFF_HEARTBEATS]	/* lines printed since this boot */
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
hb_prefix:
	HEARTBEAT_PREFIX_BYTES
hb_prefix_end:
hex_digits:
	.ascii	"0123456789abcdef"
