"""FSFM-3C self-supervised pretraining (``python -m fsfm_fast.pretrain``): the flags (``args``) and the
pretraining task (``task``) that the training engine runs."""
