"""AJR: automatic job recovery for Slurm clusters running AI training jobs."""

__version__ = "0.1.0"
