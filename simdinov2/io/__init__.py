"""Low-level file writing, below `logging`, `checkpoint` and `cli` (it imports only `simdinov2.errors`):
atomic writes (`atomic`: `atomic_torch_save`, `atomic_write_text`, `sweep_temporaries`, the disk-full report)
and the output folder of a program (`output_dir`: `make_output_dir`)."""
