#!/usr/bin/env python
"""Evaluate a model on the six zero-shot benchmarks that are on disk and write a Markdown table.

    python tools/evaluate_all.py --config-file configs/vitl.yaml [--num-gpus N] \
        [--output results.md] MODEL.WEIGHTS model.pth

It starts its processes as train_net.py does: --num-gpus (and --num-machines, --machine-rank,
--dist-url), or torchrun (lmseg/launch.py).

Benchmarks whose folders are missing under $DETECTRON2_DATASETS are listed as skipped, with the
folder they need; they are not failures. The table (mIoU, %) goes to --output (default
OUTPUT_DIR/benchmarks.md) and the full metrics to the same path with a .json suffix.
"""
import json
import sys
import os
from pathlib import Path
from typing import Dict, List, Tuple

from detectron2.engine import default_argument_parser
from detectron2.utils import comm

from lmseg.checkpoint import MissingWeightsError, check_weights_file, load_weights
from lmseg.config import get_lmseg_cfg
from lmseg.data import benchmarks, datasets_root
from lmseg.engine import Trainer, setup
from lmseg.launch import LaunchError, check_launch_arguments, launch

# The six zero-shot benchmarks, in the order of the papers' tables.
ZERO_SHOT = [
    ("A-847", "ade20k_full_sem_seg_freq_val_all"),
    ("PC-459", "context_459_test_sem_seg"),
    ("A-150", "ade20k_150_test_sem_seg"),
    ("PC-59", "context_59_test_sem_seg"),
    ("VOC-20", "voc_2012_test_sem_seg"),
    ("VOC-20b", "voc_2012_test_background_sem_seg"),
]


def find_benchmarks(root: str) -> Tuple[List[str], Dict[str, str]]:
    """Split the zero-shot benchmarks into those present under root and those missing (with the
    first folder that is missing)."""
    layout = {b.name: b for b in benchmarks()}
    present, missing = [], {}
    for _, name in ZERO_SHOT:
        b = layout[name]
        folders = [os.path.join(root, b.image_dir), os.path.join(root, b.label_dir)]
        absent = [f for f in folders if not os.path.isdir(f)]
        if absent:
            missing[name] = absent[0]
        else:
            present.append(name)
    return present, missing


def markdown_table(model_name: str, results: Dict[str, Dict], missing: Dict[str, str]) -> str:
    """A one-row Markdown table of mIoU per benchmark, then the list of skipped benchmarks."""
    header = "| model | " + " | ".join(short for short, _ in ZERO_SHOT) + " |"
    rule = "| --- |" + " --- |" * len(ZERO_SHOT)
    cells = []
    for _, name in ZERO_SHOT:
        cells.append(f"{results[name]['sem_seg']['mIoU']:.1f}" if name in results else "skipped")
    lines = [header, rule, f"| {model_name} | " + " | ".join(cells) + " |"]
    if missing:
        lines += ["", "Skipped (not on disk):"]
        lines += [f"- {name}: {folder} not found" for name, folder in missing.items()]
    return "\n".join(lines) + "\n"


def main(args):
    cfg = setup(args)
    present, missing = find_benchmarks(datasets_root())
    found = comm.all_gather(present)  # every process must evaluate the same benchmarks, in step
    if any(other != present for other in found):
        raise RuntimeError(
            "the processes find different benchmarks on disk ("
            + "; ".join(f"process {rank}: {', '.join(names) or 'none'}" for rank, names in enumerate(found))
            + "): every machine must see the same datasets folder ($DETECTRON2_DATASETS)"
        )
    results = {}
    if present:
        cfg.defrost()
        cfg.DATASETS.TEST = tuple(present)
        cfg.freeze()
        model = Trainer.build_model(cfg)
        load_weights(model, cfg.MODEL.WEIGHTS, save_dir=cfg.OUTPUT_DIR)
        results = Trainer.test(cfg, model)
        if len(present) == 1:
            results = {present[0]: results}
    if comm.is_main_process():
        output = args.output or os.path.join(cfg.OUTPUT_DIR, "benchmarks.md")
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        name = os.path.basename(cfg.MODEL.WEIGHTS) or os.path.basename(args.config_file)
        table = markdown_table(name, results, missing)
        Path(output).write_text(table)
        Path(output).with_suffix(".json").write_text(json.dumps({"results": results, "skipped": missing}, indent=2))
        print(table)
        print(f"written to {output}")
    return results


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument("--output", default="", help="Markdown file to write (default OUTPUT_DIR/benchmarks.md)")
    args = parser.parse_args()
    try:  # before anything is built or written: no table for weights that are not there
        check_launch_arguments(args)
        check_weights_file(get_lmseg_cfg(args.config_file, args.opts).MODEL.WEIGHTS)
    except (LaunchError, MissingWeightsError) as err:
        print(f"evaluate_all.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        launch(main, args)
    except LaunchError as err:  # a torchrun process that cannot join its run (no GPU of its own)
        print(f"evaluate_all.py: error: {err}", file=sys.stderr)
        sys.exit(2)
