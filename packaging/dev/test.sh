#!/usr/bin/env bash
# Run AJR's whole test suite on this machine, setting up everything it needs first
# (Debian packages, a venv with AJR, the local Slurm cluster). Arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/setup-env.sh"
ajr_setup
cd "$AJR_ROOT"
exec "$AJR_VENV/bin/python" -m pytest "$@"
