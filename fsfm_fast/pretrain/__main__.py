"""``python -m fsfm_fast.pretrain``: the flags are in ``fsfm_fast.pretrain.args``."""
import sys

from ..runtime import cli
from .task import main

if __name__ == "__main__":
    sys.exit(cli.run(main, "fsfm_fast.pretrain"))
