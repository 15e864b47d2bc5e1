"""submitit launcher of the v2 trainer."""
