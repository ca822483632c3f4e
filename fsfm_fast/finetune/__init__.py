"""Fine-tuning a pretrained encoder into a detector: the deepfake verb (``python -m fsfm_fast.finetune``,
``deepfake``) and cross-domain face anti-spoofing (``python -m fsfm_fast.finetune_fas``, ``fas``), both
tasks of the training engine."""
