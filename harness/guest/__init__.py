"""guest: the guests the project builds, and their drivers. :mod:`.images` (build and
describe an image), :mod:`.driver` (what the pair driver needs from any guest),
:mod:`.bare_metal` (the x86 and aarch64 firmware guests: a work area in RAM),
:mod:`.linux` (a Debian kernel and busybox, driven over its console). Uses
:mod:`harness.core`; no module here imports another driver."""
from __future__ import annotations

from harness.guest.bare_metal import BareMetalDriver
from harness.guest.driver import GuestDriver, WorkArea
from harness.guest.images import GuestImage, arch_of, image
from harness.guest.linux import LinuxDriver


def driver(img: GuestImage, workdir: str) -> GuestDriver:
    """The driver for ``img``'s kind of guest."""
    return (LinuxDriver if img.kind == "linux" else BareMetalDriver)(img, workdir)


__all__ = ["GuestDriver", "GuestImage", "WorkArea", "arch_of", "driver", "image"]
