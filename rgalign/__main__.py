"""``python -m rgalign`` = the ``rgalign`` command (torchrun launches it this way)."""

from rgalign.cli import main

main()
