"""Slurm job scripts for SCOW and other clusters."""
