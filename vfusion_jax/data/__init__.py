"""Data loading: M3SVD frame folders and videos, degradations and input pipelines."""
