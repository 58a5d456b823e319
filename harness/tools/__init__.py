"""tools: what is built on runs. :mod:`.report` (the conformance matrix, the Allure
extras, the baseline compare), :mod:`.sweep` (one case across RAM sizes), :mod:`.bench`
(what cpr-transfer costs, on the same pair driver). Uses :mod:`harness.run` and below."""
