"""``python -m fsfm_fast.finetune``: the flags are in ``fsfm_fast.finetune.args``, the verb in
``fsfm_fast.finetune.deepfake`` (imported once the flags are parsed: ``-h`` must not wait for torch)."""
import sys

from ..runtime import cli
from .args import parse_args

if __name__ == "__main__":
    sys.exit(cli.run_verb("fsfm_fast.finetune", parse_args, "fsfm_fast.finetune.deepfake"))
