"""The one training engine (``trainer``) and what it is built from: device-side step statistics
(``step_stats``), checkpoints (``checkpoint``), the run log (``run_log``) and schedules (``schedules``)."""
