"""Benchmark scripts (not part of the installed package): measured speed of our training step, augmentation,
k-NN evaluation, coding-rate loss and optimizer pieces against the peers a user would otherwise pick, and
against this machine's measured matmul peak. See benchmarks/RESULTS.md for the numbers and commands."""
