"""Self-tests of harness.evidence (layout, memory, pattern) on a memfd standing in for guest RAM (no QEMU needed)."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from harness.core.errors import HarnessError, UsageError
from harness.evidence.layout import (PAGE_SIZE, RamError, RamLayoutError, WorkArea,
                                     gpa_of_offset, offset_of_gpa, ram_layout)
from harness.evidence.memory import (RamFdNotFound, compare_mappings, find_ram_fd,
                                     mapped_regions, open_ram)
from harness.evidence.pattern import fill_pattern, pattern_word, verify_pattern

pytestmark = pytest.mark.selftest

MiB = 1 << 20
GiB = 1 << 30
SIZE = 64 * MiB
SEED = 0x5EED_1234_ABCD_0042
HINT = "memory-backend-memfd"


def _memfd(size, name):
    fd = os.memfd_create(name)
    os.ftruncate(fd, size)
    return fd


@pytest.fixture
def memfd(request):
    # A name of its own per test: an mmap holds a dup of its fd, so a mapping leaked by
    # an earlier failed test must not make this test's lookup ambiguous.
    fd = _memfd(SIZE, f"{HINT}-{request.node.name}")
    yield fd
    os.close(fd)


@pytest.fixture
def ram(memfd):
    with open_ram(f"/proc/self/fd/{memfd}", writable=True) as r:
        yield r


@pytest.fixture
def filled(ram):
    fill_pattern(ram, SEED)
    return ram


def _hint(fd):
    """The memfd's own name, as a hint that matches only it."""
    return os.readlink(f"/proc/self/fd/{fd}").split(":", 1)[1].rsplit(" (deleted)", 1)[0]


def _raw(ram):
    """A writable byte view of the whole backend (tests poke it behind the API)."""
    return np.frombuffer(ram._map(), dtype=np.uint8)


# ----------------------------------------------------------------- pattern

def test_fill_then_verify_passes(filled):
    report = verify_pattern(filled, SEED)
    assert report.ok, report.describe()
    assert report.bad_page_count == 0 and report.bad_pages == ()
    assert report.pages_checked == SIZE // PAGE_SIZE - 1          # the work area page
    assert report.bytes_checked == SIZE - WorkArea().size
    assert report.excluded == ((0x10000, 0x11000),)
    assert "pattern intact" in report.describe()


def test_pattern_matches_its_definition_and_is_distinct(filled):
    words = filled._words(0, SIZE).reshape(-1, 512)
    for page in (0, 1, 5000, SIZE // PAGE_SIZE - 1):
        for index in (0, 1, 511):
            assert int(words[page, index]) == pattern_word(SEED, page, index)
    sample = words[100:164]   # every word of these pages distinct, within and across pages
    assert len(np.unique(sample)) == sample.size
    del words, sample


def test_other_seed_fails(filled):
    report = verify_pattern(filled, SEED + 1)
    assert report.bad_page_count == SIZE // PAGE_SIZE - 1
    assert len(report.bad_pages) == 64 and not report.ok


def test_one_flipped_byte_names_its_page(filled):
    raw = _raw(filled)
    raw[0x2345678] ^= 0x01
    del raw
    report = verify_pattern(filled, SEED)
    assert not report.ok
    assert report.bad_page_count == 1
    assert report.bad_pages == (0x2345000,)
    assert report.misplaced == () and report.zeroed == ()
    assert "1 page(s) changed" in report.describe()
    assert "0x2345000" in report.describe()


def test_swapped_pages_fail_naming_both(filled):
    a, b = 0x123000, 0x3456000
    raw = _raw(filled)
    tmp = raw[a:a + PAGE_SIZE].copy()
    raw[a:a + PAGE_SIZE] = raw[b:b + PAGE_SIZE]
    raw[b:b + PAGE_SIZE] = tmp
    del raw
    report = verify_pattern(filled, SEED)
    assert report.bad_pages == (a, b)
    assert report.misplaced == ((a, b), (b, a))
    text = report.describe()
    assert "0x123000 holds the pattern of 0x3456000" in text


def test_zeroed_page_is_named(filled):
    raw = _raw(filled)
    raw[0x200000:0x201000] = 0
    del raw
    report = verify_pattern(filled, SEED)
    assert report.bad_pages == (0x200000,) and report.zeroed == (0x200000,)


def test_bad_page_list_is_capped_but_counted(filled):
    raw = _raw(filled)
    raw[0x100000:0x100000 + 100 * PAGE_SIZE:PAGE_SIZE] ^= 0xFF
    del raw
    report = verify_pattern(filled, SEED, max_listed=10)
    assert report.bad_page_count == 100
    assert report.bad_pages == tuple(0x100000 + i * PAGE_SIZE for i in range(10))
    assert "(+90 more)" in report.describe()


def test_work_area_is_neither_written_nor_checked(ram):
    work = WorkArea()
    ram.write_u32(work.base + work.magic_offset, work.magic)
    ram.write_u64(work.counter_gpa, 12345)
    fill_pattern(ram, SEED)
    snap = ram.snapshot()
    assert snap.magic_ok and snap.counter == 12345   # the fill never wrote there
    ram.write_u64(work.counter_gpa, 99999)           # the guest keeps running
    raw = _raw(ram)
    raw[work.base:work.end] ^= 0x5A
    del raw
    assert verify_pattern(ram, SEED).ok


def test_explicit_exclude_is_byte_exact(ram):
    exclude = [(0x20010, 0x20020), (0x3000000, 0x3002000)]
    fill_pattern(ram, SEED, exclude)
    raw = _raw(ram)
    raw[0x20015] ^= 1                 # inside: ignored
    raw[0x3001234] ^= 1               # inside: ignored
    assert verify_pattern(ram, SEED, exclude).ok
    raw[0x20008] ^= 1                 # same page, outside the range: caught
    del raw
    report = verify_pattern(ram, SEED, exclude)
    assert report.bad_pages == (0x20000,)
    # the work area is no longer excluded when exclude is given: an empty list checks all
    assert verify_pattern(ram, SEED, []).bad_page_count == 3


def test_fill_needs_a_writable_mapping(memfd):
    with open_ram(f"/proc/self/fd/{memfd}") as ro:
        with pytest.raises(RamError, match="read-only"):
            fill_pattern(ro, SEED)
        with pytest.raises(RamError, match="read-only"):
            ro.write_u64(0x10008, 1)


def test_read_only_mapping_verifies(filled, memfd):
    with open_ram(f"/proc/self/fd/{memfd}") as ro:
        assert verify_pattern(ro, SEED).ok
    assert ro.closed


def test_bad_seed_is_a_usage_error(ram):
    with pytest.raises(UsageError):
        fill_pattern(ram, -1)


def test_reports_name_guest_physical_addresses_above_4g(memfd):
    # A 64 MiB q35 guest with max-ram-below-4g=32M: the upper half sits at 4 GiB.
    with open_ram(f"/proc/self/fd/{memfd}", writable=True, machine="q35",
                  max_ram_below_4g=32 * MiB) as ram:
        assert ram.layout.regions[1].gpa == 1 << 32
        fill_pattern(ram, SEED)
        raw = _raw(ram)
        raw[40 * MiB + 17] ^= 1
        del raw
        report = verify_pattern(ram, SEED)
        assert report.bad_pages == ((1 << 32) + 8 * MiB,)
        assert ram.read_u64((1 << 32) + 8 * MiB) == pattern_word(SEED, 40 * MiB // PAGE_SIZE, 0)


def test_verify_layout_override_must_match_size(filled):
    with pytest.raises(RamLayoutError, match="differs"):
        verify_pattern(filled, SEED, machine="q35", ram_size=2 * SIZE)
    assert verify_pattern(filled, SEED, machine="pc-i440fx-10.0", ram_size=SIZE).ok


def test_speed_1gib(capsys):
    """Not an assertion on speed: prints fill/verify time for 1 GiB."""
    fd = _memfd(GiB, "speed")
    try:
        with open_ram(f"/proc/self/fd/{fd}", writable=True) as ram:
            fill = fill_pattern(ram, SEED)
            t0 = time.monotonic()
            refill = fill_pattern(ram, SEED)
            report = verify_pattern(ram, SEED)
            assert report.ok
            with capsys.disabled():
                print(f"\n1 GiB: fill (fresh memfd, allocates) {fill.elapsed:.2f}s, "
                      f"fill (allocated) {refill.elapsed:.2f}s, verify {report.elapsed:.2f}s "
                      f"(total {time.monotonic() - t0:.2f}s for refill+verify)")
    finally:
        os.close(fd)


# ----------------------------------------------------------------- work area, reads

def test_work_area_from_mapping():
    w = WorkArea.from_mapping({"base": "0x20000", "counter_offset": 16, "boots_offset": "0x8",
                               "comment": "ignored"})
    assert (w.base, w.counter_offset, w.boots_offset) == (0x20000, 16, 8)
    assert w.counter_gpa == 0x20010 and w.magic == 0x47525043
    with pytest.raises(UsageError, match="counter_offset"):
        WorkArea(counter_offset=0x1004)
    with pytest.raises(UsageError):
        WorkArea.from_mapping({"base": "nope"})


def test_work_area_reads(ram):
    w = ram.work
    ram.write_u32(w.base + w.magic_offset, w.magic)
    ram.write_u32(w.base + w.version_offset, 1)
    ram.write_u64(w.counter_gpa, 0x1_0000_0005)
    ram.write_u32(w.base + w.boots_offset, 2)
    ram.write_u32(w.base + w.heartbeats_offset, 7)
    snap = ram.snapshot()
    assert snap.magic_ok and snap.version == 1 and snap.counter == 0x1_0000_0005
    assert (snap.boots, snap.heartbeats) == (2, 7)
    assert ram.read_bytes(w.base, 4) == (0x47525043).to_bytes(4, "little")
    with pytest.raises(RamLayoutError):
        ram.read_u64(SIZE - 4)          # runs past the end of RAM


# ----------------------------------------------------------------- finding the fd

def test_find_ram_fd_in_this_process(memfd):
    found = find_ram_fd(os.getpid(), SIZE, hint=_hint(memfd))
    assert found.fd == memfd
    assert HINT in found.link and found.size == SIZE
    st = os.fstat(memfd)
    assert (found.inode, found.dev) == (st.st_ino, st.st_dev)
    assert found.path == f"/proc/{os.getpid()}/fd/{memfd}"


def test_find_ram_fd_prefers_hint_then_mapping(memfd):
    other = _memfd(SIZE, "some-other-file")
    try:
        assert find_ram_fd(os.getpid(), SIZE, hint=_hint(memfd)).fd == memfd
        assert find_ram_fd(os.getpid(), SIZE, hint="some-other").fd == other
        with pytest.raises(RamFdNotFound) as info:
            find_ram_fd(os.getpid(), SIZE)
        err = info.value
        assert err.reason == "ambiguous" and {c[0] for c in err.candidates} >= {memfd, other}
        assert str(os.getpid()) in str(err) and "some-other-file" in str(err)
        with open_ram(f"/proc/self/fd/{other}"):      # now only `other` is mapped
            assert find_ram_fd(os.getpid(), SIZE).fd == other
    finally:
        os.close(other)


def test_find_ram_fd_duplicates_are_one_file(memfd):
    dup = os.dup(memfd)
    try:
        assert find_ram_fd(os.getpid(), SIZE).fd == min(memfd, dup)
    finally:
        os.close(dup)


def test_find_ram_fd_errors_clearly(memfd):
    with pytest.raises(RamFdNotFound) as info:
        find_ram_fd(os.getpid(), SIZE + PAGE_SIZE, hint=_hint(memfd))
    err = info.value
    assert isinstance(err, HarnessError) and err.reason == "none"
    text = str(err)
    assert f"pid {os.getpid()}" in text and str(SIZE + PAGE_SIZE) in text
    assert _hint(memfd) in text               # the candidate list shows what is open
    with pytest.raises(RamError, match="no such process"):
        find_ram_fd(2 ** 22 + 12345, SIZE)


def test_mapped_regions_and_compare_mappings(memfd):
    st = os.fstat(memfd)
    assert mapped_regions(os.getpid(), st.st_ino, st.st_dev) == []
    with open_ram(f"/proc/self/fd/{memfd}") as ram:
        words = ram._words(0, 8)
        addr = words.ctypes.data
        del words
        regions = mapped_regions(os.getpid(), st.st_ino, st.st_dev)
        assert any(r.start <= addr < r.end and r.offset == 0 for r in regions)
        ev = compare_mappings(os.getpid(), os.getpid(), SIZE, _hint(memfd))
        assert ev.same and ev.src_regions == tuple(regions)
        assert ev.to_dict()["same"] is True


_CHILD = """
import mmap, os, sys
fd = int(sys.argv[1]) if sys.argv[1] != "new" else os.memfd_create("memory-backend-memfd-child")
if sys.argv[1] == "new":
    os.ftruncate(fd, int(sys.argv[2]))
m = mmap.mmap(fd, int(sys.argv[2]))
print("ready", flush=True)
sys.stdin.read()
"""


def _child_mapping(arg, pass_fds=()):
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, arg, str(SIZE)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=pass_fds)
    assert proc.stdout.readline().strip() == b"ready"
    return proc


@pytest.mark.parametrize("shared", [True, False], ids=["same-memfd", "other-memfd"])
def test_compare_mappings_across_processes(memfd, shared):
    proc = _child_mapping(str(memfd), (memfd,)) if shared else _child_mapping("new")
    try:
        with open_ram(f"/proc/self/fd/{memfd}"):
            ev = compare_mappings(os.getpid(), proc.pid, SIZE, _hint(memfd))
        assert ev.same is shared and ev.same_file is shared
        assert ev.src_regions and ev.dst_regions
        assert ("same RAM file" if shared else "DIFFERENT") in ev.describe()
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


# ----------------------------------------------------------------- guest-physical layout

@pytest.mark.parametrize("machine", ["q35", "pc-q35-10.0", "q35,accel=kvm"])
def test_q35_split(machine):
    big = 4 * GiB                                   # >= 0xb0000000: lowmem 2 GiB
    assert gpa_of_offset(0x1000, machine, big) == 0x1000
    assert gpa_of_offset(0x7FFFFFFF, machine, big) == 0x7FFFFFFF
    assert gpa_of_offset(0x80000000, machine, big) == 1 << 32
    assert gpa_of_offset(big - 1, machine, big) == (1 << 32) + 2 * GiB - 1
    assert offset_of_gpa((1 << 32) + 0x1234, machine, big) == 0x80001234
    with pytest.raises(RamLayoutError, match="not RAM"):
        offset_of_gpa(0x90000000, machine, big)     # the PCI hole
    small = 0xA0000000                              # < 0xb0000000: all below 4 GiB
    assert gpa_of_offset(small - 1, machine, small) == small - 1
    assert len(ram_layout(machine, small).regions) == 1
    edge = 0xB0000000
    assert gpa_of_offset(edge - 1, machine, edge) == (1 << 32) + edge - 1 - 0x80000000


@pytest.mark.parametrize("machine", ["pc", "pc-i440fx-10.0"])
def test_pc_split(machine):
    big = 0xE0000000                                # >= 0xe0000000: lowmem 3 GiB
    assert gpa_of_offset(0xBFFFFFFF, machine, big) == 0xBFFFFFFF
    assert gpa_of_offset(0xC0000000, machine, big) == 1 << 32
    assert ram_layout(machine, 8 * GiB).regions[1].size == 5 * GiB
    small = 0xDFFFF000                              # just below: all below 4 GiB
    assert gpa_of_offset(small - 1, machine, small) == small - 1
    with pytest.raises(RamLayoutError, match="outside guest RAM"):
        gpa_of_offset(small, machine, small)


def test_other_machines():
    assert gpa_of_offset(0x1000, None, GiB) == 0x1000
    assert gpa_of_offset(0x1000, "virt-10.0", GiB) == GiB + 0x1000
    with pytest.raises(RamLayoutError, match="microvm"):
        gpa_of_offset(0, "microvm", GiB)
