"""The M3SVD TFDS dataset (see m3svd_dataset_builder.py)."""
