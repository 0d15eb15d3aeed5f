"""cs336-train: not implemented yet; see packages/train/README.md for what it will hold."""
