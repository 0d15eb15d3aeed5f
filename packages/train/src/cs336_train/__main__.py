"""`python -m cs336_train ...` (e.g. under `torchrun`) is the `cs336-train` command."""

from cs336_train.cli import main

main()
