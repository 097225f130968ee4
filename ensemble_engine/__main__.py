"""``python -m ensemble_engine`` runs the ``ee`` command line; torchrun starts each rank this way
(``torchrun --nproc_per_node N -m ensemble_engine produce ...``).

The guard matters: a process started with the "spawn" method (data-loader or combine workers)
imports the main module again, and must not run the command a second time.
"""

from .cli import main

if __name__ == "__main__":
    main()
