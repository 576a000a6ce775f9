"""VideoFusion on M3SVD: the released network and training recipe.

The config is vfusion_jax/configs/m3svd.py (installed with the package); this file keeps its documented path,
``--config=configs/m3svd.py[:variant]``, for runs from the repository.
"""

from vfusion_jax.configs.m3svd import *  # pylint: disable=wildcard-import,unused-wildcard-import
