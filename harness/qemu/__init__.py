"""qemu: one QEMU process and what it can do. :mod:`.process` (one process: its log,
launch separate from connect, intent, idempotent shutdown), :mod:`.qmp` (a bounded QMP
session on qemu.qmp, with its transcript), :mod:`.probe` (version, accelerators, QMP
schema, machine types of a binary, cached), :mod:`.features` (behavioural probes).
Uses only :mod:`harness.core`."""
