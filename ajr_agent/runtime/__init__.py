"""The loop: polls Slurm, follows the logs, feeds events to the policy and carries out its actions, with slow work off the loop."""
