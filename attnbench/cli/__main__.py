"""``python -m attnbench.cli``: the ``attnbench`` command."""
from attnbench.cli import entry

entry()
