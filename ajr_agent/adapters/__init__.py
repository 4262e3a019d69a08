"""AJR's edges: Slurm (commands, pyslurm, an in-memory Slurm), log files, node logs, the epilog spool, settings files, the state database. Imports only domain."""
