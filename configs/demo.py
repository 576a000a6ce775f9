"""The embedded demo: the tiny VideoFusion network trained for a few minutes on procedural IR/visible videos.

The config is vfusion_jax/configs/demo.py (installed with the package); this file keeps its documented path,
``--config=configs/demo.py[:variant]``, for runs from the repository.
"""

from vfusion_jax.configs.demo import *  # pylint: disable=wildcard-import,unused-wildcard-import
