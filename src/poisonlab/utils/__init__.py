"""Small helpers shared across layers (file I/O, seeding)."""

from poisonlab.utils.io import atomic_dir, atomic_write, write_json
from poisonlab.utils.seeding import derive_seed, make_generator

__all__ = ["atomic_dir", "atomic_write", "derive_seed", "make_generator", "write_json"]
