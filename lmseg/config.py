"""LMSeg's configuration keys, added to detectron2's defaults by :func:`add_lmseg_config`.

Every key is commented where it is defined. Defaults describe LMSeg with CLIP ViT-B/16 and SAM ViT-B;
``configs/*.yaml`` override what differs (ViT-L, the tiny test model, CAT-Seg's setting, ablations).
"""
import os
from pathlib import Path
from typing import List, Sequence

from detectron2.config import CfgNode as CN

SAM_VIT_B_URL = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"


def add_lmseg_config(cfg: CN) -> None:
    """Add LMSeg's keys (model, data, solver, test) to a detectron2 config, in place."""
    _add_model_config(cfg)
    _add_data_config(cfg)
    _add_test_config(cfg)
    _add_solver_config(cfg)


def config_dir() -> Path:
    """The folder of LMSeg's configs: ``configs/`` of a checkout, installed as ``lmseg/configs``."""
    return Path(__file__).resolve().parent / "configs"


def list_config_files() -> List[str]:
    """The names of the shipped configs, relative to :func:`config_dir` ("vitb.yaml", ...)."""
    root = config_dir()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.yaml"))


def get_config_file(name: str) -> str:
    """The path of a shipped config by its name, as detectron2's ``model_zoo.get_config_file`` does:
    ``get_config_file("vitb.yaml")``, ``get_config_file("ablations/clip_only.yaml")``. Works from a
    checkout and from an installed package alike."""
    path = config_dir() / name
    if not path.is_file():
        shown = ", ".join(list_config_files())
        raise FileNotFoundError(f"LMSeg has no config {name!r}; the shipped ones are: {shown}")
    return str(path)


def resolve_config_file(config_file: str) -> str:
    """A config file's path: an existing file as given, else the shipped config of that name
    ("vitb.yaml" or "configs/vitb.yaml" from any folder)."""
    if os.path.isfile(config_file):
        return config_file
    name = config_file[len("configs/"):] if config_file.startswith("configs/") else config_file
    if (config_dir() / name).is_file():
        return str(config_dir() / name)
    raise FileNotFoundError(
        f"config file {config_file!r} not found (and it is not one of LMSeg's configs: "
        f"{', '.join(list_config_files())})"
    )


def get_lmseg_cfg(config_file: str = "", opts: Sequence[str] = ()) -> CN:
    """detectron2's defaults with LMSeg's keys, then ``config_file`` and ``KEY VALUE`` ``opts``
    merged in (not frozen)."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_lmseg_config(cfg)
    if config_file:
        cfg.merge_from_file(resolve_config_file(str(config_file)))
    cfg.merge_from_list(list(opts))
    return cfg


def use_cpu_without_cuda(cfg: CN) -> None:
    """Run on the CPU when MODEL.DEVICE asks for CUDA and there is none (in place, cfg not frozen)."""
    import torch

    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"


def _add_model_config(cfg: CN) -> None:
    # The meta-architecture, registered in detectron2's META_ARCH_REGISTRY on `import lmseg`.
    cfg.MODEL.META_ARCHITECTURE = "LMSeg"
    # Label value skipped by the loss (and by evaluation after the dataset's own value is mapped).
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255

    cfg.MODEL.CLIP = CN()
    # open_clip architecture name ("ViT-B-16", "ViT-L-14-336", ...) or one LMSeg registers
    # ("LMSeg-Tiny", a few-layer random CLIP for tests and installation checks).
    cfg.MODEL.CLIP.NAME = "ViT-B-16"
    # open_clip pretrained tag ("openai", ...) or a checkpoint file path; "" = random initialisation
    # (the weights may then come from MODEL.WEIGHTS, which may also be one of CAT-Seg's checkpoints:
    # its CLIP, cost embedding, aggregator and decoder load, SAM and the fusion keep their own).
    cfg.MODEL.CLIP.PRETRAINED = "openai"
    # QuickGELU activations, as OpenAI's CLIP weights were trained with.
    cfg.MODEL.CLIP.QUICK_GELU = True
    # Which CLIP weights train: "none", "attention_qv" (query and value weights of every attention
    # of both towers), "attention" (all attention weights and biases), "full".
    cfg.MODEL.CLIP.FINETUNE = "attention_qv"
    # Square input resolution of CLIP's image tower inside the model (the patch grid is
    # IMAGE_SIZE / patch size, e.g. 384 / 16 = 24). The stored position embedding is resized to it.
    cfg.MODEL.CLIP.IMAGE_SIZE = 384
    # 0-based visual blocks whose patch tokens guide the decoder, one per decoder stage.
    cfg.MODEL.CLIP.GUIDANCE_LAYERS = [3, 7]
    # CLIP's normalisation on the 0-255 scale.
    cfg.MODEL.CLIP.PIXEL_MEAN = [122.7709383, 116.7460125, 104.09373615]
    cfg.MODEL.CLIP.PIXEL_STD = [68.5005327, 66.6321579, 70.3231630]
    # Prompts encoded per text-tower batch (bounds memory for large vocabularies).
    cfg.MODEL.CLIP.TEXT_BATCH_SIZE = 1024

    cfg.MODEL.SAM = CN()
    # Use Segment Anything's image encoder; False gives the CLIP-only (CAT-Seg) architecture.
    cfg.MODEL.SAM.ENABLED = True
    # segment_anything encoder size: "vit_b", "vit_l", "vit_h", or "tiny" (random, for tests).
    cfg.MODEL.SAM.TYPE = "vit_b"
    # SAM checkpoint: a file path or an http(s) URL (downloaded once into torch's hub cache);
    # "" = random initialisation. Full SAM checkpoints and image-encoder-only ones both load.
    cfg.MODEL.SAM.CHECKPOINT = SAM_VIT_B_URL
    # Square input resolution of SAM inside the model (1024 is native; other sizes interpolate the
    # absolute position embedding). The main speed lever of the model.
    cfg.MODEL.SAM.INPUT_SIZE = 1024
    # Which SAM weights train: "none", "qkv_proj" (attention qkv.weight and proj.weight of every
    # block), "full".
    cfg.MODEL.SAM.FINETUNE = "qkv_proj"
    # SAM's normalisation on the 0-255 scale.
    cfg.MODEL.SAM.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.SAM.PIXEL_STD = [58.395, 57.12, 57.375]

    cfg.MODEL.FUSION = CN()
    # How CLIP and SAM features combine: "weighted" (w * clip + (1 - w) * sam, w learned),
    # "clip_only" (needs MODEL.SAM.ENABLED False), "sam_only", "add", "concat" (+ 1x1 conv),
    # "attention" (CLIP features attend to SAM features).
    cfg.MODEL.FUSION.MODE = "weighted"
    # Initial w of the weighted fusion, in (0, 1); w = sigmoid(parameter) stays in [0, 1].
    cfg.MODEL.FUSION.WEIGHT_INIT = 0.5
    # One weight per channel instead of a single scalar.
    cfg.MODEL.FUSION.PER_CHANNEL = False
    # Heads of the "attention" fusion.
    cfg.MODEL.FUSION.ATTENTION_HEADS = 8

    cfg.MODEL.PROMPTS = CN()
    # Templates, each formatted with the class name ("{}"), giving one prompt per class each (when
    # TEXTS uses them); they also stand in, in turn, for the descriptions of undescribed classes.
    cfg.MODEL.PROMPTS.TEMPLATES = ["A photo of a {} in the scene"]
    # Which texts make a class's P prompts (P is the same for every class): "template" (each of
    # TEMPLATES formatted with the name), "descriptions" (one LLM-written description per attribute
    # of ATTRIBUTES, composed as "a wall, which is ..."), or "both" (templates first).
    cfg.MODEL.PROMPTS.TEXTS = "both"
    # The described attributes used, in prompt order: any of "color", "shape", "texture" (the
    # paper's ablation: one of them alone, or all three, its best).
    cfg.MODEL.PROMPTS.ATTRIBUTES = ["color", "shape", "texture"]
    # How the P prompt embeddings of a class enter the cost volume: "channels" (P cost channels) or
    # "mean" (their mean embedding, re-normalised: one channel).
    cfg.MODEL.PROMPTS.COMBINE = "channels"
    # Training only: the probability that a class's description prompts are replaced, for one
    # iteration, by the template (the prompts a name described nowhere gets), so that the model has
    # seen that layout. 0 draws no random numbers and trains exactly as without the key; evaluation
    # and inference never drop. Needs TEXTS "both" and COMBINE "channels" (the layout it imitates).
    # configs/vitb.yaml and vitl.yaml set 0.1 (see GETTING_STARTED, Prompts).
    cfg.MODEL.PROMPTS.DESCRIPTION_DROPOUT = 0.0
    # Evaluation and inference only: every class gets the template-only prompts of a name described
    # nowhere (configs/ablations/template_only_at_test.yaml measures what undescribed names cost).
    cfg.MODEL.PROMPTS.TEST_TEMPLATE_ONLY = False
    # Where the descriptions of a vocabulary come from when it has none of its own (registered
    # benchmarks have their own: the "descriptions" file of their metadata): a descriptions JSON
    # (format: prompt_gen/README.md), a folder of them (the first file, in name order, describing a
    # name wins), or "" for the shipped bank (lmseg/descriptions/data). A class described nowhere
    # gets the template in its description slots (logged).
    cfg.MODEL.PROMPTS.DESCRIPTIONS = ""
    # Asking an LLM (OpenAI or any OpenAI-compatible server) for the classes described nowhere,
    # once, at temperature 0: replies are kept in CACHE and reused. The API key comes from
    # $OPENAI_API_KEY only. With several processes the main process asks and the others use its replies.
    cfg.MODEL.PROMPTS.LLM = CN()
    # Off by default: a model never reaches the network unless told to.
    cfg.MODEL.PROMPTS.LLM.ENABLED = False
    # Model name on the server.
    cfg.MODEL.PROMPTS.LLM.MODEL = "gpt-4o-mini"
    # Server URL ending in /v1 ("" = $OPENAI_BASE_URL, else OpenAI).
    cfg.MODEL.PROMPTS.LLM.BASE_URL = ""
    # Descriptions file the generated descriptions are added to ("~" expands), merged into it under
    # a lock (CACHE + ".lock"), so that runs sharing it keep each other's entries.
    cfg.MODEL.PROMPTS.LLM.CACHE = "~/.cache/lmseg/descriptions.json"

    cfg.MODEL.COST = CN()
    # Channels of the cost embedding and of the whole aggregator.
    cfg.MODEL.COST.EMBED_DIM = 128
    # Kernel of the convolution that embeds the P prompt costs of each class.
    cfg.MODEL.COST.KERNEL_SIZE = 7

    cfg.MODEL.AGGREGATOR = CN()
    # Number of (spatial, class) aggregation layers.
    cfg.MODEL.AGGREGATOR.NUM_LAYERS = 2
    # Attention heads of both the spatial and the class blocks.
    cfg.MODEL.AGGREGATOR.NUM_HEADS = 4
    # MLP hidden size as a multiple of EMBED_DIM.
    cfg.MODEL.AGGREGATOR.MLP_RATIO = 4
    # Swin window (in grid cells); the second block of each pair shifts by half of it.
    cfg.MODEL.AGGREGATOR.WINDOW_SIZE = 12
    # Channels of the projected appearance (image feature) and text guidance.
    cfg.MODEL.AGGREGATOR.APPEARANCE_GUIDANCE_DIM = 128
    cfg.MODEL.AGGREGATOR.TEXT_GUIDANCE_DIM = 128
    # Spatial average pooling before class attention, in training and at inference.
    cfg.MODEL.AGGREGATOR.POOLING = [2, 2]
    cfg.MODEL.AGGREGATOR.TEST_POOLING = [1, 1]
    # The two branches of every layer, for the ablations: SPATIAL the Swin blocks over each class's
    # grid (with the appearance guidance), CLASS the linear attention across classes (with the text
    # guidance). False leaves the branch (and its guidance projection) out of the model; both False
    # pass the cost embedding to the decoder unchanged.
    cfg.MODEL.AGGREGATOR.SPATIAL = True
    cfg.MODEL.AGGREGATOR.CLASS = True

    cfg.MODEL.DECODER = CN()
    # Output channels of the upsampling stages (each doubles the resolution).
    cfg.MODEL.DECODER.DIMS = [64, 32]
    # Channels of the CLIP guidance each stage concatenates, after its 3x3 projection.
    cfg.MODEL.DECODER.GUIDANCE_DIMS = [32, 16]
    # Channels of the transposed convolutions that bring the guidance to each stage's resolution.
    cfg.MODEL.DECODER.GUIDANCE_UPSAMPLE_DIMS = [256, 128]
    # Channels per GroupNorm group in the decoder's convolutions.
    cfg.MODEL.DECODER.NORM_GROUP_SIZE = 16

    cfg.MODEL.LMSEG = CN()
    # Classes kept per image (or window) when the vocabulary is larger: those with the highest peak
    # similarity; the others get a logit of -100. Also the class-attention padding length.
    cfg.MODEL.LMSEG.CLASS_CAP = 256
    # Classes processed at once by the per-class stages (spatial blocks, decoder): bounds memory.
    cfg.MODEL.LMSEG.CLASS_CHUNK = 128
    # Pad images to a multiple of this before resizing them to CLIP's input (0 = no padding).
    cfg.MODEL.LMSEG.SIZE_DIVISIBILITY = 0
    # Training memory: parts whose activations are recomputed in the backward pass instead of
    # stored, any of "clip" (visual blocks), "sam" (encoder blocks), "aggregator" (spatial and class
    # blocks, per class chunk) and "decoder" (per class chunk). Gradients are identical; each listed
    # part runs its forward twice. [] = store everything (fastest, most memory).
    cfg.MODEL.LMSEG.ACTIVATION_CHECKPOINTING = []


def _add_data_config(cfg: CN) -> None:
    """The training mapper's keys.

    The mapper also reads detectron2's own INPUT keys: MIN_SIZE_TRAIN, MAX_SIZE_TRAIN,
    MIN_SIZE_TRAIN_SAMPLING, MIN_SIZE_TEST, MAX_SIZE_TEST, CROP.{ENABLED,TYPE,SIZE}, RANDOM_FLIP
    and FORMAT, which must be "RGB": the model refuses any other format when it is built, and it
    refuses detectron2's MODEL.PIXEL_MEAN/STD set to anything but their defaults (it normalises with
    MODEL.CLIP.PIXEL_MEAN/STD and MODEL.SAM.PIXEL_MEAN/STD and never reads them).
    """
    # Largest fraction of a training crop that a single category may cover (ignored pixels not
    # counted): a crop is drawn again, up to 10 times, until no category covers more. 1.0 turns
    # the limit off.
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # Colour augmentation of training images: detectron2's ColorAugSSDTransform (random brightness,
    # contrast, saturation and hue changes, as in SSD), which Mask2Former and CAT-Seg use.
    cfg.INPUT.COLOR_AUG_SSD = False
    # Pad training images and labels at the bottom and right to a multiple of this (labels with the
    # ignore value). <= 0: no padding beyond the crop size (an "absolute" crop larger than the
    # resized image is always padded to the crop size).
    cfg.INPUT.SIZE_DIVISIBILITY = -1


def _add_test_config(cfg: CN) -> None:
    # Sliding-window inference: windows on a square grid, averaged with a whole-image view.
    cfg.TEST.SLIDING_WINDOW = False
    # Side of the square grid the image is resized to, and of each window on it.
    cfg.TEST.SLIDING_GRID = 640
    cfg.TEST.SLIDING_WINDOW_SIZE = 384
    # Fraction of a window shared with its neighbour (stride = int(size * (1 - overlap))).
    cfg.TEST.SLIDING_OVERLAP = 0.333
    # Weight of the whole-image view in the final average (the windows get 1 - this).
    cfg.TEST.SLIDING_GLOBAL_WEIGHT = 0.5
    # How SAM sees the image in sliding-window inference. True: once per view, each window resized
    # to MODEL.SAM.INPUT_SIZE on its own, so that every view gets as many SAM pixels per CLIP pixel
    # as in training and whole-image inference (SAM input size / CLIP input size); one SAM pass per
    # view. False (opt-in, cheaper, not what the model trained on): once per image, the whole image
    # resized to MODEL.SAM.INPUT_SIZE, each window taking its area of that map, at a coarser scale
    # (1.6 SAM pixels per window pixel instead of 2.7 with the shipped sizes).
    cfg.TEST.SAM_PER_WINDOW = True
    # Whole-image inference, CAT-Seg's post-processing: with SIZE_DIVISIBILITY > 0, keep the padded
    # strip when resizing the prediction to the output size (it shifts the prediction) instead of
    # cropping it; and, as detectron2's sem_seg_postprocess does in CAT-Seg, cut the low-resolution
    # map to the received image's height x width in cells first (a no-op unless the image is
    # smaller than the map).
    cfg.TEST.KEEP_PADDING = False
    # Precision of evaluation: "float32", or autocast to "bfloat16" / "float16".
    cfg.TEST.PRECISION = "float32"
    # Compile the per-class head (cost volume, aggregator, decoder) with torch.compile at inference:
    # fewer, fused kernels, so less launch overhead on a GPU; the first forward of each new shape
    # compiles (seconds to minutes). Where torch.compile is unavailable or fails, a warning is
    # logged and the head runs uncompiled, with the same results.
    cfg.TEST.COMPILE = False


def _add_solver_config(cfg: CN) -> None:
    # "ADAMW" or "SGD".
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # Learning-rate multipliers of the fine-tuned CLIP and SAM weights.
    cfg.SOLVER.CLIP_MULTIPLIER = 0.01
    cfg.SOLVER.SAM_MULTIPLIER = 0.01
    # Weight decay of embeddings (token, position and padding tables); norms use WEIGHT_DECAY_NORM.
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # LR_SCHEDULER_NAME may also be "WarmupPolyLR": lr * (1 - iter / MAX_ITER) ** POLY_LR_POWER.
    cfg.SOLVER.POLY_LR_POWER = 0.9
    # Poly schedule: hold this learning rate once the schedule falls below it (0 = off).
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0
    # SOLVER.CLIP_GRADIENTS.CLIP_TYPE may also be "full_model": the norm of all gradients together
    # is clipped to CLIP_VALUE (detectron2's "value" and "norm" clip each parameter separately).
    # Mixed-precision dtype when SOLVER.AMP.ENABLED: "float16" (GPU, with loss scaling) or
    # "bfloat16" (GPU or CPU).
    cfg.SOLVER.AMP.PRECISION = "float16"
