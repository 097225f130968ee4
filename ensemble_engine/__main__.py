"""``python -m ensemble_engine`` (used by torchrun) runs the ``ee`` command line."""

from .cli import main

main()
