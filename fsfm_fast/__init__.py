"""fsfm_fast: fast, faithful pretraining of the FSFM face security foundation model."""

__version__ = "0.1.0"
