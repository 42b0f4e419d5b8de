"""``python -m poisonlab`` (and ``torchrun -m poisonlab``) runs the CLI."""

from poisonlab.cli.main import entry

entry()
