"""Training: the loop (loop.py), optimizers and schedules, checkpoints, progress, and the job that
turns a config into a finished run directory (job.py)."""
