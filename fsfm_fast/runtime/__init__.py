"""What every verb shares at its edges: one-line errors (``cli``), devices and precision (``devices``),
process groups (``distributed``), stop signals (``signals``) and the shared flag groups (``flags``)."""
