"""The v1 trainer run by other programs (`trainer`: the `python simdino/main_dino.py ...` command line)."""
