"""Guest memory back-ends, rendered as ``-object``/``-machine``/``-m`` arguments.

Both sides of a transfer get the very same arguments: the target maps the memory the
source hands over, it must describe it identically.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

from harness.core import hugepages
from harness.core.errors import Unsupported, UsageError

RAM_ID = "ram0"


@dataclass(frozen=True)
class BackendKind:
    name: str
    qom_type: Optional[str]   # None: plain -m, no memory backend
    share: bool
    #: What identifies the RAM fd in /proc/PID/fd (a substring of the link).
    fd_hint: str
    hugetlb: bool = False
    doc: str = ""


BACKENDS = {b.name: b for b in (
    BackendKind("memfd", "memory-backend-memfd", True, "memory-backend-memfd",
                doc="memory-backend-memfd,share=on"),
    BackendKind("file-shm", "memory-backend-file", True, "/dev/shm/",
                doc="memory-backend-file,share=on on /dev/shm"),
    BackendKind("ram-share", "memory-backend-ram", True, "",
                doc="memory-backend-ram,share=on"),
    BackendKind("shm", "memory-backend-shm", True, "/dev/shm/qemu-",
                doc="memory-backend-shm, POSIX shared memory (share=on is its only mode)"),
    BackendKind("memfd-hugetlb", "memory-backend-memfd", True, "memory-backend-memfd",
                hugetlb=True, doc="memory-backend-memfd,hugetlb=on (2M pages)"),
    BackendKind("ram-noshare", "memory-backend-ram", False, "",
                doc="memory-backend-ram,share=off (CPR must refuse)"),
    BackendKind("file-noshare", "memory-backend-file", False, "/dev/shm/",
                doc="memory-backend-file,share=off (CPR must refuse)"),
    BackendKind("none", None, False, "",
                doc="-m with no memory backend (CPR must refuse)"),
    BackendKind("epc", "memory-backend-epc", True, "",
                doc="memory-backend-epc, SGX enclave memory (CPR must refuse)"),
)}


@dataclass(frozen=True)
class MemoryArgs:
    object_args: List[str]    # the -object ... arguments ([] for "none")
    machine_props: str        # ",memory-backend=ram0" or ""
    mem_path: Optional[str]   # the backing file, when there is one


def render(kind: str, size_mb: int, prealloc: bool, shm_dir: Optional[str],
           check_host: bool = True) -> MemoryArgs:
    """Arguments for a back-end of ``kind``. ``shm_dir``: private dir on /dev/shm.

    ``check_host``: raise Unsupported when the host cannot provide it (huge pages).
    """
    b = BACKENDS.get(kind)
    if b is None:
        raise UsageError(f"unknown memory backend {kind!r}; known: {', '.join(BACKENDS)}")
    if b.qom_type is None:
        return MemoryArgs([], "", None)
    props = [b.qom_type, f"id={RAM_ID}", f"size={size_mb}M", f"share={'on' if b.share else 'off'}"]
    mem_path = None
    if b.qom_type == "memory-backend-file":
        if shm_dir is None:
            raise UsageError("a file backend needs a directory on /dev/shm")
        mem_path = os.path.join(shm_dir, "guest-ram")
        props.append(f"mem-path={mem_path}")
    if b.hugetlb:
        needed = size_mb // 2
        free = hugepages.free()
        if check_host and free < needed:
            raise Unsupported(f"{b.name} needs {needed} free 2 MiB huge pages, the host has "
                              f"{free} (echo N > /proc/sys/vm/nr_hugepages)")
        props += ["hugetlb=on", "hugetlbsize=2M"]
    if prealloc:
        props.append("prealloc=on")
    return MemoryArgs(["-object", ",".join(props)], f",memory-backend={RAM_ID}", mem_path)
