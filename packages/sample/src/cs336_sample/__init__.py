"""cs336-sample: not implemented yet; see packages/sample/README.md for what it will hold."""
