"""cs336-optim: not implemented yet; see packages/optim/README.md for what it will hold."""
