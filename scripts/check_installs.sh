#!/usr/bin/env bash
# Checks that the package's `gpu` and `tpu` extras (pip install ".[gpu]" / ".[tpu]", the README's accelerator
# lines) resolve with the pinned stack (pip's resolver, --dry-run: nothing is installed).
# Usage: bash scripts/check_installs.sh   (needs the package index, not an accelerator)
set -euo pipefail
cd "$(dirname "$0")/.."
for extra in gpu tpu; do
  report="$(mktemp)"
  python -m pip install --dry-run --ignore-installed --quiet --report "$report" \
    ".[$extra]" 2> >(grep -v '^WARNING: Location' >&2)
  python - "$extra" "$report" <<'PY'
import json, sys
extra, report = sys.argv[1:]
installs = {i['metadata']['name'].lower(): i['metadata']['version'] for i in json.load(open(report))['install']}
wanted = ('jax', 'jaxlib', 'jax-cuda12-plugin', 'jax-cuda12-pjrt', 'nvidia-cudnn-cu12', 'libtpu', 'flax',
          'orbax-checkpoint')
print(f'.[{extra}]: resolves, {len(installs)} packages;',
      ', '.join(f'{n}=={installs[n]}' for n in wanted if n in installs))
PY
  rm -f "$report"
done
