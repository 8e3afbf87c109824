"""Built-in suite files (TOML), shipped as package data of ``attnbench.suites``."""
