"""``python -m intrudim.cli``: the same as the ``intrudim`` command."""

from intrudim.cli.app import main

main()
