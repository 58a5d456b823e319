"""evidence: what proves guest RAM stayed in place and the guest lived on.
:mod:`.layout` (guest-physical addresses in the backend file, the work area),
:mod:`.memory` (finding, comparing and mapping a QEMU's RAM file), :mod:`.pattern` (the
seeded pattern: fill, verify, name a changed page), :mod:`.sampler` (the pause, from a
separate process), :mod:`.collector` (one transfer's evidence, around the driver's
phases), :mod:`.console` (the guest's console heartbeat across a switch-over: parsed and
judged from both serial files) and :mod:`.console_tail` (when each heartbeat arrived,
from a child process). Uses :mod:`harness.core`, :mod:`harness.cpr` and
:mod:`harness.guest`."""
