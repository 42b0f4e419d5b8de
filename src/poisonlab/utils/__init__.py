"""Small helpers shared across layers: atomic file output (:mod:`.io`), output folders
(:mod:`.output`), seeding (:mod:`.seeding`). Importing the package imports none of them, so the
torch-free ones stay torch-free."""
