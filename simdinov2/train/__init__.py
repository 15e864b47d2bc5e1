"""v2 training: the meta-architecture (`ssl_meta_arch.SSLMetaArch`), the training loop and CLI
(`train.py`: `get_args_parser`, `main`) and the optimisation pieces shared with the v1 tree (`optim.py`).

Nothing heavy is imported here so that `simdinov2.train.optim` stays cheap for the v1 scripts.
"""
