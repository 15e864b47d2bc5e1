"""v1 training glue: the student/teacher pair and its loss (`multicrop`), the program pieces and epoch loop
composed by `simdino/main_dino.py` (`dino_loop`) and the per-epoch checkpoints (`epoch_checkpoint`).

The step, schedules, optimizer and every building block are `simdinov2`'s; only what v1 alone uses lives here.
"""
