"""scenario: what a case is and what it must do, as data. :mod:`.model` (the frozen
Scenario, the Expect and Observed enums), :mod:`.catalogue` (every scenario by id, the
suites), :mod:`.expectations` (known deviations, matched on the run's facts). Uses
:mod:`harness.core`, :mod:`harness.cpr` and :mod:`harness.guest`."""
