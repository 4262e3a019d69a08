"""Putting AJR on a slurmctld host and checking it there.

`ajr install` is install (with host, files, shipped and slurm_requirements); `ajr doctor` is doctor.
"""
