"""cs336-nn: not implemented yet; see packages/nn/README.md for what it will hold."""
