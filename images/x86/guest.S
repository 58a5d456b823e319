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
 * Heartbeat: every HEARTBEAT_MS of the guest's time (its TSC, calibrated at
 * boot against PIT channel 2) it prints `CPRGUEST hb <seq>\n`, seq = the
 * work area's `heartbeats` field in 8 lowercase hex digits (0 after a boot),
 * then bumps the field. The TSC is read only every 2^CLOCK_CHECK_SHIFT passes
 * of the counter loop; port I/O happens only at boot and to print.
 *
 * Build: `python images/build.py x86-bios`. The constants (WORK_BASE, OFF_*,
 * MAGIC, VERSION, SERIAL_PORT, HEARTBEAT_MS, CLOCK_CHECK_SHIFT, CALIBRATE_MS,
 * ROM_BASE, ROM_SIZE and the BOOT_MARKER / HEARTBEAT_PREFIX strings) are
 * generated from layout.json into layout.inc by build.py; nothing here
 * repeats them.
 *
 * Assembled with `as --32`, linked with `ld -m elf_i386 -T link.ld`,
 * flattened with `objcopy -O binary`.
 */

	.include "layout.inc"

	.if ROM_BASE != 0xFFFF0000 || ROM_SIZE != 0x10000
	.error "link.ld assumes a 64 KiB ROM at 0xFFFF0000"
	.endif
	.if CLOCK_CHECK_SHIFT > 20 || HEARTBEAT_DIGITS != 8 || HEARTBEAT_PREFIX_LEN > 7
	.error "CLOCK_CHECK_SHIFT must be 0..20, the sequence 8 hex digits, the line <= 16 bytes"
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

	/* PIT channel 2 as a one-shot: the boot-time yardstick for the TSC */
	.set PIT_CH2, 0x42
	.set PIT_CMD, 0x43
	.set PORT_61, 0x61		/* bit 0: gate 2, bit 1: speaker, bit 5: OUT2 */
	.set PIT_HZ, 1193182
	.set PIT_CAL_COUNT, (PIT_HZ * CALIBRATE_MS + 500) / 1000
	.set CAL_ROUNDS, 16		/* at most; one when the host is quiet */
	.set FALLBACK_KHZ, 1000000	/* when the PIT cannot be read: say 1 GHz */
	.if PIT_CAL_COUNT < 1 || PIT_CAL_COUNT > 0xFFFF
	.error "CALIBRATE_MS does not fit the PIT's 16-bit count"
	.endif

	/* absolute addresses of the work-area fields */
	.set WA_MAGIC,      WORK_BASE + OFF_MAGIC
	.set WA_VERSION,    WORK_BASE + OFF_VERSION
	.set WA_COUNTER_LO, WORK_BASE + OFF_COUNTER
	.set WA_COUNTER_HI, WORK_BASE + OFF_COUNTER + 4
	.set WA_BOOTS,      WORK_BASE + OFF_BOOTS
	.set WA_HEARTBEATS, WORK_BASE + OFF_HEARTBEATS
	.set WA_CLOCK_KHZ,  WORK_BASE + OFF_CLOCK_KHZ
	.set WA_HB_DUE_LO,  WORK_BASE + OFF_HB_DUE
	.set WA_HB_DUE_HI,  WORK_BASE + OFF_HB_DUE + 4
	.set CHECK_MASK, (1 << CLOCK_CHECK_SHIFT) - 1

/*
 * WAIT_THRE: wait until the UART's transmitter is empty (LSR.THRE; with the
 * FIFO on, the whole 16-byte FIFO is free then), at most LSR_SPIN polls.
 * Inline (no call, no stack). Clobbers eax, ebx, edx.
 */
	.macro WAIT_THRE
	movl	$LSR_SPIN, %ebx
	movw	$UART_LSR, %dx
.Lthre_poll\@:
	inb	%dx, %al
	testb	$LSR_THRE, %al
	jnz	.Lthre_done\@
	decl	%ebx
	jnz	.Lthre_poll\@
.Lthre_done\@:
	.endm

/* SEND: put the byte in %al into the transmitter. Clobbers edx. */
	.macro SEND
	movw	$UART_THR, %dx
	outb	%al, %dx
	.endm

/*
 * PUTS start, end: write the bytes [start, end) to the UART, one wait for
 * THRE per byte (the boot marker: once a boot).
 * Clobbers eax, ebx, ecx, edx, esi.
 */
	.macro PUTS start, end
	movl	$\start, %esi
	movl	$(\end - \start), %ecx
.Lputs_byte\@:
	WAIT_THRE
	movb	(%esi), %al
	SEND
	incl	%esi
	decl	%ecx
	jnz	.Lputs_byte\@
	.endm

/*
 * BURST start, end: write the bytes [start, end) with no wait: the caller
 * waited for THRE and the line fits the 16-byte FIFO. Clobbers eax, ecx,
 * edx, esi.
 */
	.macro BURST start, end
	movl	$\start, %esi
	movl	$(\end - \start), %ecx
.Lburst_byte\@:
	movb	(%esi), %al
	SEND
	incl	%esi
	decl	%ecx
	jnz	.Lburst_byte\@
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

	/* 2. work-area header. boots: +1 if the magic survived (a reset), else 1.
	 * clock_khz stays 0 until the clock is calibrated (step 3). */
	movl	$1, %eax
	cmpl	$MAGIC, WA_MAGIC
	jne	1f
	movl	WA_BOOTS, %eax
	incl	%eax
1:	movl	%eax, WA_BOOTS
	movl	$0, WA_COUNTER_LO
	movl	$0, WA_COUNTER_HI
	movl	$0, WA_HEARTBEATS
	movl	$0, WA_CLOCK_KHZ
	movl	$VERSION, WA_VERSION
	movl	$MAGIC, WA_MAGIC	/* last: a valid magic means a complete header */

	/* 3. the clock: TSC ticks in CALIBRATE_MS of PIT channel 2 (gate on,
	 * speaker off, mode 0: OUT2 rises at the terminal count). TSC reads
	 * bracket each port access, so a round knows how wide its answer is (a
	 * vCPU descheduled around a poll widens it); the narrowest round counts,
	 * and the first within 1/256 of its length ends the rounds. Only low TSC
	 * words: a round is far below 2^32 ticks. Registers: ebx rounds left,
	 * ecx narrowest width so far, esi start slack, edi TSC before the count
	 * was written, ebp TSC before the last poll that saw OUT2 low. The
	 * narrowest round's middle waits in hb_due (not yet in use). */
	movl	$CAL_ROUNDS, %ebx
	movl	$0xFFFFFFFF, %ecx
cal_round:
	inb	$PORT_61, %al
	andb	$0xFC, %al
	orb	$0x01, %al
	outb	%al, $PORT_61
	movb	$0xB0, %al		/* channel 2, lobyte/hibyte, mode 0, binary */
	outb	%al, $PIT_CMD
	movb	$(PIT_CAL_COUNT & 0xFF), %al
	outb	%al, $PIT_CH2
	rdtsc
	movl	%eax, %edi		/* the count starts after this ... */
	movb	$(PIT_CAL_COUNT >> 8), %al
	outb	%al, $PIT_CH2
	rdtsc				/* ... and before this */
	movl	%eax, %esi
	subl	%edi, %esi		/* esi = start slack */
	movl	%edi, %ebp
1:	rdtsc
	movl	%eax, %edx		/* edx = TSC before this poll */
	subl	%edi, %eax
	js	7f			/* 2^31 ticks (~1 s) and OUT2 still low: no PIT */
	inb	$PORT_61, %al
	testb	$0x20, %al
	jnz	2f
	movl	%edx, %ebp		/* OUT2 was low after this */
	jmp	1b
2:	rdtsc				/* OUT2 rose before this */
	movl	%eax, %edx
	subl	%ebp, %edx
	addl	%esi, %edx		/* edx = width: since the last low poll, plus slack */
	subl	%edi, %eax		/* eax = the most ticks it can have been */
	cmpl	%ecx, %edx
	jae	3f			/* no narrower than the best round */
	movl	%edx, %ecx
	shrl	$1, %edx
	subl	%edx, %eax		/* eax = the middle of what it can have been */
	movl	%eax, WA_HB_DUE_LO
	cmpl	$0x00FFFFFF, %ecx
	ja	3f
	movl	%ecx, %edx
	shll	$8, %edx
	cmpl	%eax, %edx
	jbe	7f			/* within 1/256: enough */
3:	decl	%ebx
	jnz	cal_round
7:	movl	$FALLBACK_KHZ, %eax
	cmpl	$0xFFFFFFFF, %ecx
	je	4f			/* no round saw OUT2 rise */
	movl	WA_HB_DUE_LO, %eax
	xorl	%edx, %edx
	movl	$CALIBRATE_MS, %ecx
	divl	%ecx			/* eax = ticks per ms */
	testl	%eax, %eax
	jnz	4f
	movl	$FALLBACK_KHZ, %eax
4:	movl	%eax, %edi		/* edi = clock_khz */
	movl	$HEARTBEAT_MS, %ecx
	mull	%ecx
	testl	%edx, %edx
	jz	5f
	movl	$0xFFFFFFFF, %eax
5:	movl	%eax, %ebp		/* ebp = ticks per heartbeat, for good */
	rdtsc
	addl	%ebp, %eax
	adcl	$0, %edx
	movl	%eax, WA_HB_DUE_LO	/* the first heartbeat: a period from now */
	movl	%edx, WA_HB_DUE_HI
	movl	%edi, WA_CLOCK_KHZ	/* calibrated */

	/* 4. main loop: 64-bit counter in RAM; every 2^CLOCK_CHECK_SHIFT passes
	 * the TSC is read, and a heartbeat printed when hb_due has passed */
main_loop:
	addl	$1, WA_COUNTER_LO
	adcl	$0, WA_COUNTER_HI
	testl	$CHECK_MASK, WA_COUNTER_LO
	jnz	main_loop
	rdtsc
	movl	%eax, %ecx
	movl	%edx, %ebx		/* ebx:ecx = now */
	subl	WA_HB_DUE_LO, %eax
	sbbl	WA_HB_DUE_HI, %edx	/* edx:eax = now - due, signed */
	js	not_due
	testl	%edx, %edx		/* due; a period late or more (a stall, */
	jnz	resync			/* a clock that jumped): no burst of lines, */
	cmpl	%ebp, %eax		/* the next one a period from now */
	jae	resync
	addl	%ebp, WA_HB_DUE_LO	/* on time: the next one a period on */
	adcl	$0, WA_HB_DUE_HI
	jmp	heartbeat
not_due:				/* due more than a period ahead: the */
	cmpl	$-1, %edx		/* clock went back; count from now */
	jne	resync_quiet
	negl	%eax
	jz	resync_quiet
	cmpl	%ebp, %eax
	jbe	main_loop
resync_quiet:
	addl	%ebp, %ecx
	adcl	$0, %ebx
	movl	%ecx, WA_HB_DUE_LO
	movl	%ebx, WA_HB_DUE_HI
	jmp	main_loop
resync:
	addl	%ebp, %ecx
	adcl	$0, %ebx
	movl	%ecx, WA_HB_DUE_LO
	movl	%ebx, WA_HB_DUE_HI
heartbeat:				/* HEARTBEAT_PREFIX, 8 hex digits, "\n": */
	WAIT_THRE			/* one burst into the empty FIFO: port */
	BURST	hb_prefix, hb_prefix_end	/* I/O is what costs a guest here */
	movl	WA_HEARTBEATS, %edi
	movl	$HEARTBEAT_DIGITS, %esi
6:	roll	$4, %edi		/* most significant nibble first */
	movl	%edi, %eax
	andl	$0x0F, %eax
	movb	hex_digits(%eax), %al
	SEND
	decl	%esi
	jnz	6b
	movb	$0x0A, %al
	SEND
	incl	WA_HEARTBEATS		/* lines printed since this boot */
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
hb_prefix:
	HEARTBEAT_PREFIX_BYTES
hb_prefix_end:
hex_digits:
	.ascii	"0123456789abcdef"

/* ------------------------------------------------------------------------ */
/* reset vector: linear 0xFFFFFFF0 = CS base 0xFFFF0000 + IP 0xFFF0 */

	.section .reset, "ax"
	.code16
	.globl	reset_vector
reset_vector:
	cli
	jmp	init16
	.org	16, 0xF4		/* pad to exactly 16 bytes with hlt */
