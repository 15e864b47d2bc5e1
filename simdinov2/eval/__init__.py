"""Evaluation of frozen backbones, shared by both trees.

The cores live here once: feature extraction (`features`), the weighted k-NN vote (`knn`), the
linear-probe classifiers and their training / evaluation steps (`linear`), and logistic regression
(`log_regression`). The v2 command-line programs are `knn.py`, `linear.py` and `log_regression.py`
(set-up in `setup.py`); the v1 programs `simdino/eval_knn.py` and `simdino/eval_linear.py` import the
same cores.
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

__all__ = [
    "AllClassifiers",
    "IndexedDataset",
    "LinearClassifier",
    "ModelWithIntermediateLayers",
    "ShardSampler",
    "class_balanced_subset",
    "create_linear_input",
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
