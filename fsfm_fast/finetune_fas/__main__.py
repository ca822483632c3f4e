"""``python -m fsfm_fast.finetune_fas``: cross-domain face anti-spoofing (``fsfm_fast.finetune.fas``)."""
import sys

from ..finetune.fas import main
from ..runtime import cli

if __name__ == "__main__":
    sys.exit(cli.run(main, "fsfm_fast.finetune_fas"))
