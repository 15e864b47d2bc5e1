"""Experiment scripts (not part of the installed package): the small-scale reproduction of the paper's claims
on Fashion-MNIST whose measured rows are in docs/RESULTS.md (`experiments/fmnist.py`, one command per row)."""
