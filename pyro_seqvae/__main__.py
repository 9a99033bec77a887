"""``python -m pyro_seqvae`` runs the ``pyro-seqvae`` command line (and so does
``torchrun --nproc_per_node N -m pyro_seqvae train ...``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
