"""The Fashion-MNIST harness of `make demo` (`simdino/demo.py`) and of docs/RESULTS.md (`experiments/fmnist.py`).

- `machine`: cores, load average, CPU model, torch threads and loader workers for this machine;
- `recipe`: the demo recipe (main_dino flags), its variants, and training for a wall-clock budget;
- `data`: the training source and labelled splits (Fashion-MNIST or an ImageFolder tree), evaluation views;
- `knn`: the three feature sets (trained teacher, random init, raw pixels) and their k-NN evaluation;
- `figures`: loss curve and CLS-attention figures of a run;
- `report`: the printed table, the reading guide and the `results.json` record.
"""
