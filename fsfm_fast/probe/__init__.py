"""Frozen-feature probes of encoders (``python -m fsfm_fast.probe``) and the pretraining health monitor."""
