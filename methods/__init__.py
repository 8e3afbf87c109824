"""Built-in attention methods, one family a file; installed as ``attnbench.methods``."""
