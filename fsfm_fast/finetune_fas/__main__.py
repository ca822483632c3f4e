"""``python -m fsfm_fast.finetune_fas``: cross-domain face anti-spoofing (``fsfm_fast.finetune.fas``; its
flags are in ``fsfm_fast.finetune.args``, parsed before the verb is imported: ``-h`` must not wait for torch)."""
import sys

from ..finetune.args import parse_fas_args
from ..runtime import cli

if __name__ == "__main__":
    sys.exit(cli.run_verb("fsfm_fast.finetune_fas", parse_fas_args, "fsfm_fast.finetune.fas"))
