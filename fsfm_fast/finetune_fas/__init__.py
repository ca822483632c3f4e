"""``python -m fsfm_fast.finetune_fas``: the verb lives in ``fsfm_fast.finetune.fas``."""
