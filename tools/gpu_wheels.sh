#!/usr/bin/env bash
# Downloads into .whl/ (on a machine with network) the wheels the GPU machine lacks for LMSeg:
# the project's non-torch dependencies that its image (python 3.12, torch, numpy, opencv, tqdm,
# tabulate, einops, pyyaml, pillow already there) does not hold. Then run the device command
# with carry [".whl"]; tools/gpu_check.sh installs them with pip --no-index.
# detectron2 publishes no wheel on PyPI: build one here with `pip wheel --no-deps -w .whl
# 'git+https://github.com/facebookresearch/detectron2'` for python 3.12 before the run.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
for pkg in open_clip_torch segment-anything fvcore iopath yacs pycocotools ftfy wcwidth termcolor omegaconf \
           hydra-core antlr4-python3-runtime black cloudpickle; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLAT[@]}" -d .whl "$pkg"
done
du -sh .whl
