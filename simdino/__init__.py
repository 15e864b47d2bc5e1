"""SimDINO (v1): DINO-style scripts (`main_dino.py`, `eval_knn.py`, ...) run from inside `simdino/`.

Every building block (ViT, heads, coding-rate loss, schedules, logging, loaders) is imported from
`simdinov2`; this tree holds only the v1 command-line programs and their glue (`train/`: the
student/teacher pair, epoch loop and epoch checkpoints; `eval/`: the eval set-up; `run/`: the trainer run
as a command). `simdinov2` never imports this package.
"""
