#!/usr/bin/env bash
# Prepare the venv (idempotent) and run the base-layer and token-interop tests.
# Extra arguments go to pytest, e.g. `tests/django/run-tests.sh -k reconnect -v`.
# Exits non-zero when a test fails.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
exec .venv/bin/python -m pytest "$@"
