"""core: what every layer above may use. The error tree (:mod:`.errors`), the one
bounded wait and the case deadline (:mod:`.wait`), the janitor and private temp dirs
(:mod:`.cleanup`), the observer hook adapters map onto their steps (:mod:`.observe`),
log tails (:mod:`.logs`). Imports nothing from the layers above."""
