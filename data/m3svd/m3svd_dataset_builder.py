"""The M3SVD builder where the ``tfds`` command looks for it: ``tfds build data/m3svd --manual_dir=M --data_dir=D``.

The builder itself is ``vfusion_jax.data.m3svd_dataset_builder`` (installed with the package; needs
``pip install .`` or the repository root on PYTHONPATH). Without TensorFlow, build with
``vfusion-build-m3svd`` / ``python -m vfusion_jax.data.build`` (same records).
"""

from vfusion_jax.data import m3svd_dataset_builder


class Builder(m3svd_dataset_builder.Builder):
  """The packaged M3SVD builder, registered under this module for the ``tfds`` command."""
