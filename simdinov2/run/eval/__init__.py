"""submitit launchers of the v2 evaluations."""
