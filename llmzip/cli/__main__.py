"""``python -m llmzip.cli``: the same as the ``llmzip`` command."""

from . import main

main()
