"""Evaluation of frozen backbones, shared by both trees.

The cores live here once: feature extraction (`features`), the weighted k-NN vote (`knn`), the
linear-probe and attentive-probe classifiers and their training step (`linear`), logistic regression
(`log_regression`), and the metric types, the one evaluation loop and the evaluation sets (`metrics`).
The v2 command-line programs are `knn.py`, `linear.py` (also `--attentive`), `log_regression.py` and
`finetuning.py` (set-up in `setup.py`); the v1 tree's k-NN and linear
programs import the same cores.
"""

from .features import (
    IndexedDataset,
    ShardSampler,
    class_balanced_subset,
    extract_features,
    l2_normalized,
    make_eval_loader,
)
from .knn import format_knn_result, knn_classify, knn_classify_sharded, knn_correct_counts
from .linear import (
    AllClassifiers,
    LinearClassifier,
    ModelWithIntermediateLayers,
    create_linear_input,
    evaluate_classifiers,
    setup_linear_classifiers,
    train_step,
)
from .log_regression import fit_logistic_regression
from .metrics import ClassificationCounts, MetricType, evaluate

__all__ = [
    "AllClassifiers",
    "ClassificationCounts",
    "IndexedDataset",
    "LinearClassifier",
    "MetricType",
    "ModelWithIntermediateLayers",
    "ShardSampler",
    "class_balanced_subset",
    "create_linear_input",
    "evaluate",
    "evaluate_classifiers",
    "extract_features",
    "fit_logistic_regression",
    "format_knn_result",
    "knn_classify",
    "knn_classify_sharded",
    "knn_correct_counts",
    "l2_normalized",
    "make_eval_loader",
    "setup_linear_classifiers",
    "train_step",
]
