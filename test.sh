#!/usr/bin/env bash
# Run CloudVMI's checks: lint, then the test suite, which boots real lab guests itself.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
