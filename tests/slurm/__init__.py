"""Sweeps on a Slurm cluster, run by `make slurm-check`: a controller and two nodes on this machine."""
