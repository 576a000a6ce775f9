"""The released recipe on Cloud TPU v5e slices (see docs/tpu.md).

The config is vfusion_jax/configs/tpu_v5e.py (installed with the package); this file keeps its documented path,
``--config=configs/tpu_v5e.py[:variant]``, for runs from the repository.
"""

from vfusion_jax.configs.tpu_v5e import *  # pylint: disable=wildcard-import,unused-wildcard-import
