#!/usr/bin/env bash
# The device check for a machine with an accelerator: parity and the two-tier throughput of
# every framework its Python already has, on --device gpu (default), in under 8 minutes.
#
#   benchmarks/device_check.sh [--device gpu|gpu:N|cpu] [--out DIR] [--budget-s 420] ...
#   PYTHON=/opt/conda/bin/python W2V_PTB=/data/ptb.zip benchmarks/device_check.sh
#
# It builds no environment and installs nothing (the machine may have no network): it picks the
# first Python that has NumPy ($PYTHON, else python3, else python), runs this checkout's code
# with it (PYTHONPATH), and `benchmarks/device_check.py` does the rest: environment.json,
# parity.jsonl, throughput.jsonl, test_parity.txt, summary.json and summary.txt under one folder
# (default device_check/DATE-DEVICE), with what could not run and why. Without PTB (W2V_PTB)
# the throughput runs on a generated Zipf corpus. Exit 0 when everything that ran passed.
set -u
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python=""
for candidate in ${PYTHON:-} python3 python; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import numpy" >/dev/null 2>&1; then
    python="$(command -v "$candidate")"
    break
  fi
done
if [ -z "$python" ]; then
  echo "device_check: error: no Python with NumPy found (set PYTHON=/path/to/python)" >&2
  exit 2
fi
echo "device_check: $python ($("$python" -c 'import sys; print(sys.version.split()[0])'))"
cd "$root" || exit 2
# The whole check stops at 8 minutes even if a framework hangs (the Python side keeps to
# --budget-s, 450 s by default, between its measurements).
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec timeout --kill-after=10 480 \
  "$python" -m benchmarks.device_check "$@"
