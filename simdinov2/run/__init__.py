"""submitit launchers of both trees (see submit.py)."""
