"""run: one case from its scenario to its verdict. :mod:`.config` (the run's settings,
resolved once from options and environment), :mod:`.setup` (what a scenario runs on:
probes, dialect, accel, guest), :mod:`.driver` (the pair in phases, always torn down),
:mod:`.handover` (how the guest is handed over, per migration mode), :mod:`.chain` (the
soak: live updates one after the other), :mod:`.plan` (command lines, and a dry run),
:mod:`.result` (what was observed), :mod:`.verdict` (every check, expected vs seen),
:mod:`.identity` (which run an artifact belongs to).
Uses every layer below; knows nothing of pytest, allure or avocado."""
