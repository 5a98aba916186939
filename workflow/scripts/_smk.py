"""Shared plumbing for the workflow scripts (imported as ``_smk``).

``run(main)`` puts the repository root on ``sys.path``, sends logging to ``snakemake.log[0]``,
seeds the global RNGs from the config, and turns a :class:`GenbrainInputError` into a one-line
message on stderr and in the log (exit 1) instead of a traceback.
"""

import logging
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(main, snakemake) -> None:
    """Call ``main(snakemake)`` with logging, seeding and one-line user errors."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    log_path = snakemake.log[0] if len(snakemake.log) else None
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format=f"%(asctime)s {snakemake.rule}: %(message)s")
    seed = int(snakemake.config.get("seed", 0))
    random.seed(seed)
    import numpy as np

    np.random.seed(seed % 2**32)
    from genbrain.errors import GenbrainInputError

    try:
        main(snakemake)
    except GenbrainInputError as err:
        logging.getLogger("genbrain").error("%s", err)
        print(f"genbrain error: {err}", file=sys.stderr)
        sys.exit(1)
