"""genbrain: the computational core of genbrain-pipeline.

Everything that computes lives here so that it can be tested without Snakemake.
The package never imports snakemake and never touches the network.
"""

from genbrain.errors import GenbrainInputError

__all__ = ["GenbrainInputError"]
__version__ = "0.1.0"
