"""cpr: the cpr-transfer interface as data. :mod:`.dialect` (released 10.x vs RFC v1:
how a scenario becomes commands), :mod:`.channels` (main and cpr channels as QAPI and
``-incoming``), :mod:`.backends` (memory back-ends as arguments), :mod:`.relay` (a
main-channel relay that holds the stream, for mid-stream faults), :mod:`.faults`
(``Fault(stage, victim, action)`` at named stages). Uses :mod:`harness.core`."""
