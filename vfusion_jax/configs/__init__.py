"""Experiment configs (``get_config(variant)`` returning a ConfigDict), installed with the package.

The repository's configs/*.py are the same configs under their documented paths (``--config=configs/m3svd.py``);
an installed package's are ``--config=$(python -c 'import vfusion_jax.configs as c; print(c.path("m3svd"))')``.
"""

import pathlib


def path(name: str) -> str:
  """The file of config ``name`` ('m3svd', 'demo', 'tpu_v5e'), for ``--config=<path>[:variant]``."""
  file = pathlib.Path(__file__).parent / f'{name}.py'
  if not file.exists():
    names = sorted(p.stem for p in file.parent.glob('*.py') if not p.stem.startswith('_'))
    raise FileNotFoundError(f'no config {name!r}; the package has {names}')
  return str(file)
