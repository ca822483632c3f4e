"""``python -m fsfm_fast.finetune``: the flags are in ``fsfm_fast.finetune.deepfake``."""
import sys

from ..runtime import cli
from .deepfake import main

if __name__ == "__main__":
    sys.exit(cli.run(main, "fsfm_fast.finetune"))
