"""Training and evaluation on detectron2's engine, with LMSeg's needs.

* the training step: mixed precision (float16 with loss scaling, or bfloat16, on GPU or CPU),
  full-model gradient clipping after unscaling, a clear stop on a non-finite loss, and the learned
  fusion weight in the metrics;
* checkpoints written atomically (:class:`lmseg.checkpoint.LMSegCheckpointer`);
* distributed training on CPUs (gloo) as well as GPUs;
* evaluation that gives the model each test set's vocabulary (and its descriptions) and restores
  the training one.
"""
from __future__ import annotations

import logging
import os
import time
import weakref
from collections import OrderedDict
from contextlib import ExitStack, nullcontext
from typing import Dict, Optional, Sequence

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, default_setup
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import LMSegCheckpointer
from .config import get_lmseg_cfg, use_cpu_without_cuda
from .data import FOLDER_PREFIX, SemanticSegmentationDatasetMapper, ensure_datasets_registered, is_folder_dataset
from .evaluation import LMSegSemSegEvaluator
from .launch import share_cpu_threads
from .solver import build_lr_scheduler, build_optimizer
from .tta import SemSegTTA

logger = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": None}


def setup(args):
    """The frozen config of a command line (detectron2's parsed arguments), with logging set up.

    Without CUDA, a cuda MODEL.DEVICE falls back to the CPU. On the CPU, the processes of a machine
    share its CPUs (:func:`lmseg.launch.share_cpu_threads`), which the log says.
    """
    cfg = get_lmseg_cfg(args.config_file, args.opts)
    use_cpu_without_cuda(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    # LMSeg's own log lines (the parameter summary, where each part of a checkpoint came from, the
    # evaluation of each test set) go to the console and OUTPUT_DIR/log.txt as detectron2's do.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="lmseg")
    if cfg.MODEL.DEVICE == "cpu":
        threads = share_cpu_threads(comm.get_local_size())
        if threads:
            logger.info(threads)
    return cfg


def check_datasets(cfg) -> None:
    """Stop before any work when the datasets cannot be used as configured.

    The training datasets must share one vocabulary (the model trains on one), and every test
    dataset must be on disk, so that a run does not train for hours and then fail to evaluate.
    """
    train, test = list(cfg.DATASETS.TRAIN), list(cfg.DATASETS.TEST)
    ensure_datasets_registered(train + test)
    vocabularies = {name: tuple(MetadataCatalog.get(name).stuff_classes) for name in train}
    if len(set(vocabularies.values())) > 1:
        listed = "; ".join(f"{name}: {len(v)} classes ({', '.join(v[:3])}, ...)" for name, v in vocabularies.items())
        raise ValueError(
            f"DATASETS.TRAIN lists datasets with different vocabularies ({listed}). The model trains on "
            "one vocabulary: train on datasets that share it, or merge them into one folder dataset "
            "with a common classes.json."
        )
    for name in test:
        try:
            DatasetCatalog.get(name)
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(
                f"DATASETS.TEST has {name!r}, which cannot be used: {err}\nPrepare it (datasets/README.md), "
                "name other test sets, or evaluate nothing with DATASETS.TEST '()'."
            ) from None


def output_folder_names(dataset_names: Sequence[str]) -> Dict[str, str]:
    """The folder under ``OUTPUT_DIR/inference`` of each dataset evaluated in one run.

    A benchmark keeps its registered name. A ``sem_seg_folder:<path>`` dataset is named after the
    last component of its path (``sem_seg_folder:/data/cats/val`` -> ``val``), not after the whole
    name, which holds a colon and the path's every folder. Names that repeat in one run get a
    suffix in the order the datasets are listed: ``a/val`` and ``b/val`` -> ``val`` and ``val-2``.
    """
    folders: Dict[str, str] = {}
    for name in dict.fromkeys(dataset_names):
        if is_folder_dataset(name):
            path = os.path.abspath(os.path.expanduser(name[len(FOLDER_PREFIX):]))
            base = os.path.basename(path) or "folder"  # the root folder has no last component
        else:
            base = name
        folder, n = base, 1
        while folder in folders.values():
            n += 1
            folder = f"{base}-{n}"
        folders[name] = folder
    return folders


def amp_dtype(precision: str, device: torch.device, key: str) -> Optional[torch.dtype]:
    """The autocast dtype of a precision setting, refusing float16 on a CPU with a clear message."""
    if precision not in _DTYPES:
        raise ValueError(f"{key}={precision!r} is not one of {tuple(_DTYPES)}")
    dtype = _DTYPES[precision]
    if dtype is torch.float16 and device.type == "cpu":
        raise ValueError(f"{key}=float16 needs a GPU; on a CPU use bfloat16 (or disable mixed precision)")
    return dtype


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class TrainStep(SimpleTrainer):
    """One training iteration: forward (under autocast), checks, backward, clipping, step.

    Args:
        dtype: autocast dtype, or None for float32.
        clip_norm: clip the norm of all gradients together to this value (0 = no clipping).
    """

    def __init__(self, model, data_loader, optimizer, *, dtype: Optional[torch.dtype] = None, clip_norm: float = 0.0):
        super().__init__(model, data_loader, optimizer)
        self.device_type = unwrap(model).device.type
        self.dtype = dtype
        self.clip_norm = clip_norm
        self.scaler = torch.amp.GradScaler(self.device_type) if dtype is torch.float16 else None

    def run_step(self) -> None:
        assert self.model.training, "the model was switched to eval mode during training"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        autocast = torch.autocast(self.device_type, dtype=self.dtype) if self.dtype else nullcontext()
        with autocast:
            loss_dict = self.model(data)
        losses = sum(loss_dict.values())
        self._check_finite(losses, loss_dict)

        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(losses).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            losses.backward()
        self.after_backward()
        if self.clip_norm > 0:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.clip_norm)
        self._write_metrics(loss_dict, data_time)
        weight = unwrap(self.model).fusion_weight
        if weight is not None and comm.is_main_process():
            get_event_storage().put_scalar("fusion_weight", weight.detach().float().mean().item())
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])

    def _check_finite(self, losses: torch.Tensor, loss_dict: Dict[str, torch.Tensor]) -> None:
        finite = torch.isfinite(losses.detach()).float()
        if comm.get_world_size() > 1:
            # every rank must stop together, or the others would wait forever in backward
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if finite.item() < 1:
            values = {k: float(v.detach()) for k, v in loss_dict.items()}
            raise FloatingPointError(
                f"the loss is not finite at iteration {self.iter} ({values} on this process): training "
                "stopped before updating the weights. Lower SOLVER.BASE_LR, keep gradient clipping on "
                "(SOLVER.CLIP_GRADIENTS), or check the data; --resume continues from the last checkpoint."
            )


def create_ddp_model(model: torch.nn.Module) -> torch.nn.Module:
    """Wrap in DistributedDataParallel when there are several processes; CPU models too."""
    if comm.get_world_size() == 1:
        return model
    device_ids = [comm.get_local_rank()] if model.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with LMSeg's data, optimizer, training step and evaluation."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        check_datasets(cfg)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        dtype = amp_dtype(cfg.SOLVER.AMP.PRECISION, model.device, "SOLVER.AMP.PRECISION") if cfg.SOLVER.AMP.ENABLED else None
        clip = cfg.SOLVER.CLIP_GRADIENTS
        clip_norm = clip.CLIP_VALUE if clip.ENABLED and clip.CLIP_TYPE == "full_model" else 0.0
        model = create_ddp_model(model)
        self._trainer = TrainStep(model, data_loader, optimizer, dtype=dtype, clip_norm=clip_norm)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = LMSegCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=SemanticSegmentationDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        # LMSeg's mapper reads 16-bit labels as they are (detectron2's DatasetMapper does not).
        return build_detection_test_loader(cfg, dataset_name, mapper=SemanticSegmentationDatasetMapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if not output_folder:
            folders = output_folder_names([*cfg.DATASETS.TEST, dataset_name])
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", folders[dataset_name])
        return LMSegSemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def test(cls, cfg, model, evaluators=None, *, tag: str = ""):
        """Evaluate on every DATASETS.TEST, each with its own vocabulary.

        The model's vocabulary is restored afterwards, also when evaluation fails. ``tag`` (e.g.
        " [untrained]") is appended to each dataset's name in the log and to each task's key in the
        results (``sem_seg [untrained]``), so that no row of them reads as an ordinary result.
        """
        names = list(cfg.DATASETS.TEST)
        if not names:
            logger.info("DATASETS.TEST is empty: nothing to evaluate")
            return {}
        ensure_datasets_registered(names)
        if isinstance(evaluators, DatasetEvaluators) or (evaluators is not None and not isinstance(evaluators, list)):
            evaluators = [evaluators]
        if evaluators is not None and len(evaluators) != len(names):
            raise ValueError(f"{len(evaluators)} evaluators for {len(names)} test datasets")
        lmseg = unwrap(model)
        dtype = amp_dtype(cfg.TEST.PRECISION, lmseg.device, "TEST.PRECISION")
        runner = SemSegTTA(cfg, model) if cfg.TEST.AUG.ENABLED else model
        results = OrderedDict()
        for i, name in enumerate(names):
            evaluator = evaluators[i] if evaluators is not None else cls.build_evaluator(cfg, name)
            loader = cls.build_test_loader(cfg, name)
            with ExitStack() as stack:
                meta = MetadataCatalog.get(name)
                stack.enter_context(lmseg.using_vocabulary(meta.stuff_classes, meta.get("descriptions", None)))
                if dtype is not None:
                    stack.enter_context(torch.autocast(lmseg.device.type, dtype=dtype))
                res = inference_on_dataset(runner, loader, evaluator)
            results[name] = {f"{task}{tag}": metrics for task, metrics in res.items()}
            if comm.is_main_process():
                logger.info("Evaluation results for %s%s in csv format:", name, tag)
                print_csv_format(results[name])
        return results[names[0]] if len(results) == 1 else results
