"""Command-line entry points: ``vfusion-train`` and ``vfusion-eval`` (the top-level train.py and eval.py call them).

The other programs keep their ``python -m`` homes: ``vfusion_jax.infer``, ``vfusion_jax.export``,
``vfusion_jax.convert`` and ``vfusion_jax.data.build``. Every program module exposes ``run()`` for its console
script (pyproject.toml), which ends in `run_program`. ``shared.py``: the options that eval and infer share.
"""

import sys
import types
from typing import Callable, Optional, Sequence

from absl import app
from absl import flags

SHORT_HELP = ('-h', '-help', '--help', '-helpshort', '--helpshort', '-?')
FULL_HELP = ('-helpfull', '--helpfull')


def run_program(main: Callable, program: types.ModuleType, *, help_modules: Sequence[types.ModuleType] = (),
                check_argument: Optional[Callable[[str], str]] = None) -> None:
  """``absl.app.run(main)`` for the program module ``program`` (the one that defines its flags and ``main``).

  ``--help`` (``-h``, ``--helpshort``) prints ``program``'s docstring and the flags of ``program`` and
  ``help_modules``, and exits 0; ``--helpfull`` does so with every flag. (absl's own help exits 1 and lists the
  flags of ``__main__``, which a console script or a thin wrapper script has none of.) ``check_argument(arg)``
  returns an error message for an argument to refuse before parsing (e.g. a renamed flag), else ''.
  """

  def parse(argv: list[str]) -> list[str]:
    for arg in argv[1:]:
      if arg == '--':
        break
      if arg in SHORT_HELP or arg in FULL_HELP:
        flag_help = ('\n'.join(flags.FLAGS.module_help(m) for m in (program, *help_modules))
                     if arg in SHORT_HELP else flags.FLAGS.get_help())
        sys.stdout.write(f'{(program.__doc__ or "").strip()}\n\nflags:\n{flag_help}\n')
        sys.exit(0)
      error = check_argument(arg) if check_argument else ''
      if error:
        sys.stderr.write(f'FATAL Flags parsing error: {error}\n')
        sys.exit(1)
    return app.parse_flags_with_usage(argv)

  app.run(main, flags_parser=parse)
