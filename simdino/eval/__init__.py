"""v1 evaluation set-up (`setup`: DINO's `--arch --pretrained_weights --data_path` flags and the backbone
they name) for `simdino/eval_knn.py` and `simdino/eval_linear.py`; the cores are `simdinov2.eval`'s."""
