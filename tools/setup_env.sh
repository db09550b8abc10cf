#!/usr/bin/env bash
# Creates the virtual environment .venv in the repository root and installs LMSeg into it with
# everything it needs. Idempotent: a second run with unchanged inputs installs nothing.
#
# detectron2 has no official PyPI package. If .venv's python can already import one (an official
# source build, say), it is left alone; otherwise the pure-Python code of the `sal-detectron2` wheel
# (upstream detectron2 of 2024-04) is installed, which is all semantic segmentation needs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.lmseg-setup"
want="$(cat pyproject.toml tools/setup_env.sh | sha256sum | cut -d' ' -f1)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import lmseg" 2>/dev/null; then
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
py="$VENV/bin/python"
pip=("$py" -m pip install --disable-pip-version-check --progress-bar off)

# torch/torchvision: the pair that lies on this kind of machine's disk (see the README to use others).
if ! "$py" -c "import torch, torchvision" 2>/dev/null; then
    "${pip[@]}" "torch==2.14.1" "torchvision==0.29.1"
fi

if ! "$py" -c "import detectron2" 2>/dev/null; then
    purelib="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "${pip[@]}" --no-deps --only-binary=:all: --python-version 3.10 --target "$purelib" "sal-detectron2==0.7.2"
    # detectron2's own runtime requirements (an official build brings these itself).
    "${pip[@]}" pycocotools termcolor yacs tabulate cloudpickle tensorboard "omegaconf>=2.1,<2.4" \
        "hydra-core>=1.1" matplotlib fvcore iopath "numpy<2"
fi

"${pip[@]}" -e ".[test]"
echo "$want" > "$STAMP"
