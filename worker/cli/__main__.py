"""``python -m worker.cli``: the ``streamctl`` command."""

from worker.cli.main import main

main(prog_name="streamctl")
