"""LMSeg: the meta-architecture that strings the stages together.

image -> CLIP dense features + guidance, SAM features -> fusion -> cost volume against the class
prompts -> cost embedding -> aggregator -> decoder -> per-class logits; BCE loss in training, sigmoid
scores at the input's size at inference (whole image or sliding window).
"""
from __future__ import annotations

import logging
from typing import ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList
from torch import nn

from .activation_checkpointing import check_checkpoint_parts
from .aggregator import Aggregator, ClassAggregation, SpatialAggregation
from .class_text import Vocabulary
from .clip_encoder import ClipEncoder, build_clip_encoder
from .compilation import CompiledOrEager
from .cost import CostEmbedding, cost_volume
from .decoder import Decoder
from .fusion import FUSION_MODES, FeatureFusion, crop_and_resize
from .loss import sem_seg_bce_loss
from .norms import use_autocast_norms
from .prompts import DescriptionsArg, PromptBuilder, build_prompt_builder
from .sam_encoder import SamEncoder, build_sam_encoder
from .sliding import SlidingWindows, whole_image_boxes
from .summary import log_parameter_summary
from ..tta import check_test_aug

logger = logging.getLogger(__name__)

# Logit given to the classes left out by the class cap, and the score it gives them.
EXCLUDED_LOGIT = -100.0
EXCLUDED_SCORE = torch.sigmoid(torch.tensor(EXCLUDED_LOGIT)).item()


@META_ARCH_REGISTRY.register()
class LMSeg(nn.Module):
    """Open-vocabulary semantic segmentation with CLIP, SAM and class prompts.

    Inputs are detectron2's list of dicts (``image``: 3 x H x W uint8 RGB, ``height``, ``width``,
    and ``sem_seg`` in training). Training returns ``{"loss_sem_seg": loss}``; inference returns
    ``[{"sem_seg": T x height x width scores}]`` over the current vocabulary
    (:meth:`set_vocabulary`).
    """

    @configurable
    def __init__(
        self,
        *,
        clip: ClipEncoder,
        sam: Optional[SamEncoder],
        fusion: FeatureFusion,
        prompt_builder: PromptBuilder,
        cost_embed: CostEmbedding,
        aggregator: Aggregator,
        decoder: Decoder,
        clip_pixel_mean: Sequence[float],
        clip_pixel_std: Sequence[float],
        sam_pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        sam_pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
        class_cap: int = 256,
        class_chunk: int = 128,
        description_dropout: float = 0.0,
        test_template_only: bool = False,
        ignore_value: int = 255,
        size_divisibility: int = 0,
        keep_padding: bool = False,
        sliding_window: bool = False,
        sliding_grid: int = 640,
        sliding_window_size: int = 384,
        sliding_overlap: float = 0.333,
        sliding_global_weight: float = 0.5,
        sam_per_window: bool = True,
        vocabulary: Sequence[str] = (),
        vocabulary_descriptions: DescriptionsArg = None,
        activation_checkpointing: Sequence[str] = (),
        compile_inference: bool = False,
    ):
        super().__init__()
        _check_fusion_matches_sam(fusion.mode, sam is not None)
        if class_cap < 1:
            raise ValueError(f"MODEL.LMSEG.CLASS_CAP={class_cap} must be at least 1")
        if class_chunk < 1:
            raise ValueError(f"MODEL.LMSEG.CLASS_CHUNK={class_chunk} must be at least 1")
        self.windows = SlidingWindows(sliding_grid, sliding_window_size, sliding_overlap, sliding_global_weight)
        self._scaled_windows: Dict[int, SlidingWindows] = {}
        self.clip = clip
        self.sam = sam
        self.fusion = fusion
        self.vocab = Vocabulary(prompt_builder)
        self.cost_embed = cost_embed
        self.aggregator = aggregator
        self.decoder = decoder
        use_autocast_norms(self)
        self._set_activation_checkpointing(activation_checkpointing)
        # the per-class head at inference, compiled on first use (TEST.COMPILE) or eager
        self._inference_head = CompiledOrEager(self._head, "the per-class head") if compile_inference else self._head
        aggregator.check_grid(clip.grid_size)
        if len(clip.guidance_layers) != decoder.num_stages:
            raise ValueError(
                f"MODEL.CLIP.GUIDANCE_LAYERS has {len(clip.guidance_layers)} entries but the decoder has "
                f"{decoder.num_stages} stages (MODEL.DECODER.DIMS): give one guidance layer per stage"
            )
        self.register_buffer("clip_pixel_mean", torch.tensor(clip_pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("clip_pixel_std", torch.tensor(clip_pixel_std).view(-1, 1, 1), False)
        self.register_buffer("sam_pixel_mean", torch.tensor(sam_pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("sam_pixel_std", torch.tensor(sam_pixel_std).view(-1, 1, 1), False)
        self.class_cap = class_cap
        self.class_chunk = class_chunk
        if not 0.0 <= description_dropout < 1.0:
            raise ValueError(f"MODEL.PROMPTS.DESCRIPTION_DROPOUT is {description_dropout}: give a probability in [0, 1)")
        builder = prompt_builder
        if description_dropout > 0 and (builder.texts != "both" or builder.num_channels != builder.num_prompts):
            raise ValueError(
                "MODEL.PROMPTS.DESCRIPTION_DROPOUT replaces description prompts by the template, so it needs "
                'MODEL.PROMPTS.TEXTS "both" and COMBINE "channels"; set it to 0 for this config'
            )
        self.description_dropout = float(description_dropout)
        if test_template_only and builder.num_templates == 0:
            raise ValueError('MODEL.PROMPTS.TEST_TEMPLATE_ONLY needs templates (MODEL.PROMPTS.TEXTS "both")')
        self.test_template_only = bool(test_template_only)
        self.ignore_value = ignore_value
        self.size_divisibility = size_divisibility
        self.keep_padding = keep_padding
        self.sliding_window = sliding_window
        self.sam_per_window = sam_per_window
        if vocabulary:
            self.set_vocabulary(vocabulary, vocabulary_descriptions)
        log_parameter_summary(self)

    @classmethod
    def from_config(cls, cfg) -> dict:
        _check_input_format(cfg)
        check_test_aug(cfg)
        sam_enabled = cfg.MODEL.SAM.ENABLED
        _check_fusion_matches_sam(cfg.MODEL.FUSION.MODE, sam_enabled)
        clip_weights, sam_weights = _pretrained_sources(cfg)
        clip = build_clip_encoder(
            cfg.MODEL.CLIP.NAME,
            clip_weights,
            quick_gelu=cfg.MODEL.CLIP.QUICK_GELU,
            image_size=cfg.MODEL.CLIP.IMAGE_SIZE,
            guidance_layers=cfg.MODEL.CLIP.GUIDANCE_LAYERS,
            finetune=cfg.MODEL.CLIP.FINETUNE,
            text_batch_size=cfg.MODEL.CLIP.TEXT_BATCH_SIZE,
            dense=cfg.MODEL.FUSION.MODE != "sam_only",
        )
        sam = None
        if sam_enabled:
            sam = build_sam_encoder(
                cfg.MODEL.SAM.TYPE,
                sam_weights,
                input_size=cfg.MODEL.SAM.INPUT_SIZE,
                finetune=cfg.MODEL.SAM.FINETUNE,
            )
        fusion = FeatureFusion(
            cfg.MODEL.FUSION.MODE,
            clip_dim=clip.embed_dim,
            sam_dim=sam.out_channels if sam is not None else 0,
            weight_init=cfg.MODEL.FUSION.WEIGHT_INIT,
            per_channel=cfg.MODEL.FUSION.PER_CHANNEL,
            attention_heads=cfg.MODEL.FUSION.ATTENTION_HEADS,
        )
        prompt_builder = build_prompt_builder(cfg)
        embed_dim = cfg.MODEL.COST.EMBED_DIM
        class_cap, class_chunk = cfg.MODEL.LMSEG.CLASS_CAP, cfg.MODEL.LMSEG.CLASS_CHUNK
        agg = cfg.MODEL.AGGREGATOR
        aggregator = Aggregator(
            feature_dim=clip.embed_dim,
            embed_dim=embed_dim,
            num_layers=agg.NUM_LAYERS,
            num_heads=agg.NUM_HEADS,
            window=agg.WINDOW_SIZE,
            mlp_ratio=agg.MLP_RATIO,
            appearance_guidance_dim=agg.APPEARANCE_GUIDANCE_DIM,
            text_guidance_dim=agg.TEXT_GUIDANCE_DIM,
            pooling=agg.POOLING,
            test_pooling=agg.TEST_POOLING,
            pad_to=class_cap,
            class_chunk=class_chunk,
            spatial=agg.SPATIAL,
            class_attention=agg.CLASS,
        )
        dec = cfg.MODEL.DECODER
        decoder = Decoder(
            embed_dim=embed_dim,
            guidance_width=clip.width,
            dims=dec.DIMS,
            guidance_dims=dec.GUIDANCE_DIMS,
            guidance_upsample_dims=dec.GUIDANCE_UPSAMPLE_DIMS,
            norm_group_size=dec.NORM_GROUP_SIZE,
            class_chunk=class_chunk,
        )
        return {
            "clip": clip,
            "sam": sam,
            "fusion": fusion,
            "prompt_builder": prompt_builder,
            "cost_embed": CostEmbedding(prompt_builder.num_channels, embed_dim, cfg.MODEL.COST.KERNEL_SIZE),
            "aggregator": aggregator,
            "decoder": decoder,
            "clip_pixel_mean": cfg.MODEL.CLIP.PIXEL_MEAN,
            "clip_pixel_std": cfg.MODEL.CLIP.PIXEL_STD,
            "sam_pixel_mean": cfg.MODEL.SAM.PIXEL_MEAN,
            "sam_pixel_std": cfg.MODEL.SAM.PIXEL_STD,
            "class_cap": class_cap,
            "class_chunk": class_chunk,
            "description_dropout": cfg.MODEL.PROMPTS.DESCRIPTION_DROPOUT,
            "test_template_only": cfg.MODEL.PROMPTS.TEST_TEMPLATE_ONLY,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "size_divisibility": cfg.MODEL.LMSEG.SIZE_DIVISIBILITY,
            "keep_padding": cfg.TEST.KEEP_PADDING,
            "sliding_window": cfg.TEST.SLIDING_WINDOW,
            "sliding_grid": cfg.TEST.SLIDING_GRID,
            "sliding_window_size": cfg.TEST.SLIDING_WINDOW_SIZE,
            "sliding_overlap": cfg.TEST.SLIDING_OVERLAP,
            "sliding_global_weight": cfg.TEST.SLIDING_GLOBAL_WEIGHT,
            "sam_per_window": cfg.TEST.SAM_PER_WINDOW,
            **_initial_vocabulary(cfg),
            "activation_checkpointing": cfg.MODEL.LMSEG.ACTIVATION_CHECKPOINTING,
            "compile_inference": cfg.TEST.COMPILE,
        }

    def _set_activation_checkpointing(self, parts: Sequence[str]) -> None:
        check_checkpoint_parts(parts)
        self.clip.checkpoint_activations = "clip" in parts
        if self.sam is not None:
            self.sam.checkpoint_activations = "sam" in parts
        for module in self.aggregator.modules():
            if isinstance(module, (SpatialAggregation, ClassAggregation)):
                module.checkpoint_activations = "aggregator" in parts
        self.decoder.checkpoint_activations = "decoder" in parts

    # ----------------------------------------------------------------------------- vocabulary
    @property
    def device(self) -> torch.device:
        return self.clip_pixel_mean.device

    @property
    def vocabulary(self) -> Tuple[str, ...]:
        """The class names of every forward call, in output order."""
        return self.vocab.names

    @property
    def prompt_builder(self) -> PromptBuilder:
        return self.vocab.prompt_builder

    @property
    def num_prompts(self) -> int:
        return self.prompt_builder.num_prompts

    def set_vocabulary(self, class_names: Sequence[str], descriptions: DescriptionsArg = None) -> None:
        """Set the classes of every later forward call (training or inference).

        A name is one class; it may list synonyms separated by ", " (the first one is used in the
        prompts). Names must be distinct, also once case is ignored and across synonyms
        (:func:`~lmseg.modeling.class_text.validate_vocabulary`). ``descriptions`` (a descriptions
        file or mapping, e.g. a benchmark's) describe the classes; by default they are looked up in
        MODEL.PROMPTS.DESCRIPTIONS, and classes described nowhere get the template (logged).
        """
        self.vocab.set(class_names, descriptions)

    def using_vocabulary(self, class_names: Sequence[str], descriptions: DescriptionsArg = None) -> ContextManager[None]:
        """Temporarily set the vocabulary (a context manager); the previous one is restored on exit."""
        return self.vocab.using(class_names, descriptions)

    def text_embeddings(self) -> torch.Tensor:
        """L2-normalised prompt embeddings (T, P, C) of the current vocabulary, (T, 1, C) when
        MODEL.PROMPTS.COMBINE is "mean" (cached when no gradient must reach the text tower)."""
        return self.vocab.embeddings(self.clip)

    def drop_descriptions(self, text: torch.Tensor) -> torch.Tensor:
        """What a class described nowhere gets (its templates in turn in the description slots), in
        place of its description prompts: in training for each class with probability
        MODEL.PROMPTS.DESCRIPTION_DROPOUT, in evaluation for every class with
        MODEL.PROMPTS.TEST_TEMPLATE_ONLY, otherwise never."""
        if self.training:
            if self.description_dropout == 0:
                return text
            drop = torch.rand(text.shape[0], device=text.device) < self.description_dropout
        elif self.test_template_only and text.shape[1] > 1:
            drop = torch.ones(text.shape[0], dtype=torch.bool, device=text.device)
        else:
            return text
        n_templates = self.prompt_builder.num_templates
        slots = torch.arange(text.shape[1], device=text.device)
        source = torch.where(slots < n_templates, slots, (slots - n_templates) % n_templates)
        return torch.where(drop[:, None, None], text[:, source], text)

    @property
    def max_kept_classes(self) -> int:
        """The most classes whose scores a ``kept_classes_only`` output holds per image: the class
        cap of each of an image's views (windows and whole view on the sliding path)."""
        return self.class_cap * (self.windows.num_views if self.sliding_window else 1)

    @property
    def fusion_weight(self) -> Optional[torch.Tensor]:
        """The learned CLIP weight w of the weighted fusion (None for other fusion modes)."""
        return self.fusion.weight

    # -------------------------------------------------------------------------------- forward
    def forward(self, batched_inputs: List[Dict]) -> object:
        """Training: the loss ``{"loss_sem_seg": ...}`` of inputs with "image" (3, H, W, 0-255 RGB)
        and "sem_seg" (H, W) labels. Inference: one dict per input with "image", optional "height"
        and "width" (the output size, default the image's) and "sliding_grid" (another grid side
        for sliding windows, :mod:`lmseg.tta`). Each output holds "sem_seg", (T, height, width)
        class probabilities; or, for an input with ``"kept_classes_only": True`` and a vocabulary
        past MODEL.LMSEG.CLASS_CAP, "kept_scores" (U, height, width) of the U classes some view kept,
        "kept_classes" (U,) their indices and "other_score" the score of every other class, so
        that memory grows with the kept classes, not with T (:func:`dense_scores` expands it).
        """
        images = [x["image"].to(self.device, non_blocking=True).float() for x in batched_inputs]
        if self.training:
            targets = [x["sem_seg"].to(self.device, non_blocking=True) for x in batched_inputs]
            return self._forward_train(images, targets)
        text = self.drop_descriptions(self.text_embeddings())
        sizes = [(int(x.get("height", im.shape[-2])), int(x.get("width", im.shape[-1]))) for x, im in zip(batched_inputs, images)]
        grids = [x.get("sliding_grid") for x in batched_inputs]
        compact = [bool(x.get("kept_classes_only", False)) for x in batched_inputs]
        if not self.sliding_window:
            if any(g is not None for g in grids):
                raise ValueError("an input names a 'sliding_grid', but TEST.SLIDING_WINDOW is False")
            return self._inference_whole(images, sizes, text, compact)
        results: List[Optional[Dict[str, torch.Tensor]]] = [None] * len(images)
        for grid in dict.fromkeys(grids):  # inputs grouped by grid, in order
            group = [i for i, g in enumerate(grids) if g == grid]
            out = self._inference_sliding(
                [images[i] for i in group], [sizes[i] for i in group], text, self._windows(grid), [compact[i] for i in group]
            )
            for i, result in zip(group, out):
                results[i] = result
        return results

    def _windows(self, grid: Optional[int]) -> SlidingWindows:
        """The sliding windows of TEST.SLIDING_GRID (``grid`` None), or of another grid side with the
        same window size, overlap and blend (test-time scales, :mod:`lmseg.tta`)."""
        if grid is None or grid == self.windows.grid:
            return self.windows
        if grid not in self._scaled_windows:
            w = self.windows
            self._scaled_windows[grid] = SlidingWindows(int(grid), w.window, w.overlap, w.global_weight)
        return self._scaled_windows[grid]

    def _forward_train(self, images: List[torch.Tensor], targets: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        batch = ImageList.from_tensors(images, self.size_divisibility).tensor  # (B, 3, H, W), 0-padded
        labels = ImageList.from_tensors(targets, self.size_divisibility, pad_value=self.ignore_value).tensor.long()
        text = self.drop_descriptions(self.text_embeddings())
        t = text.shape[0]
        present = None
        if t > self.class_cap:
            # Classes present in an image's labels are always kept by the class cap.
            valid = labels.flatten(1)
            present = torch.zeros(len(images), t + 1, dtype=torch.bool, device=self.device)
            present.scatter_(1, valid.clamp(0, t).masked_fill(valid == self.ignore_value, t), True)
            present = present[:, :t]
        sam = None
        if self.sam is not None:
            sam = self._sam_maps(self._sam_features(batch), whole_image_boxes(len(images), self.device))
        logits, kept = self._predict(self._clip_views(batch), sam, text, present)
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        if kept is None:
            return {"loss_sem_seg": sem_seg_bce_loss(logits, labels, self.ignore_value)}
        loss = sem_seg_bce_loss(logits, labels, self.ignore_value, classes=kept, num_classes=t, other_logit=EXCLUDED_LOGIT)
        return {"loss_sem_seg": loss}

    # ----------------------------------------------------------------------------- core pass
    def _clip_views(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise (N, 3, H, W) 0-255 images for CLIP and resize them to its input size."""
        x = (images - self.clip_pixel_mean) / self.clip_pixel_std
        s = self.clip.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return x

    def _sam_features(self, images) -> torch.Tensor:
        """SAM feature maps (N, C_sam, G, G) of N 0-255 images (a batch or a list of 3 x H x W),
        each normalised and resized whole to SAM's input size."""
        s = self.sam.input_size
        batch = []
        for image in images:
            x = (image[None] - self.sam_pixel_mean) / self.sam_pixel_std
            if x.shape[-2:] != (s, s):
                x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
            batch.append(x)
        x = torch.cat(batch)
        return self.sam(x)

    def _sam_maps(self, features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Crop SAM feature maps to the areas of the CLIP views and reduce them to CLIP's grid.

        ``boxes`` holds one row (image index, x0, y0, x1, y1 in relative coordinates) per view, so
        that both encoders' features of a view cover the same area. Each CLIP cell receives the
        area mean of the SAM cells under it, so every SAM cell of a view contributes. Returns
        (views, C_sam, g, g).
        """
        return crop_and_resize(features, boxes, self.clip.grid_size)

    def _predict(
        self,
        clip_views: torch.Tensor,
        sam_maps: Optional[torch.Tensor],
        text: torch.Tensor,
        keep_classes: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Logits of V views, and which classes they are for.

        Args:
            clip_views: (V, 3, S, S) normalised CLIP inputs.
            sam_maps: (V, C_sam, g, g) SAM features of the same areas, or None.
            text: (T, P, C) prompt embeddings.
            keep_classes: optional (V, T) bool of classes the class cap must keep.

        Returns:
            (V, T, 4g, 4g) logits and None when T is within the class cap; past it, (V, cap, 4g, 4g)
            logits of each view's kept classes and their (V, cap) indices, sorted: every other class
            has the logit ``EXCLUDED_LOGIT`` everywhere, which is never stored.
        """
        dense, guidance = self.clip.encode_image(clip_views)
        feats = self.fusion(dense, sam_maps)  # (V, C, g, g)
        v, t = feats.shape[0], text.shape[0]
        if t <= self.class_cap:
            view_text = text.expand(v, *text.shape)  # (V, T, P, C)
            keep = None
        else:
            keep = self._select_classes(feats, text, keep_classes)  # (V, cap)
            view_text = text[keep]
        head = self._head if self.training else self._inference_head
        return head(feats, view_text, *guidance), keep  # (V, T', 4g, 4g)

    def _head(self, feats: torch.Tensor, view_text: torch.Tensor, *guidance: torch.Tensor) -> torch.Tensor:
        """Logits (V, T', 4g, 4g) from fused features (V, C, g, g) and prompts (V, T', P, C)."""
        cost = cost_volume(feats, view_text)  # (V, P, T', g, g)
        x = self.aggregator(self.cost_embed(cost), feats, view_text)
        return self.decoder(x, list(guidance))

    def _select_classes(
        self, feats: torch.Tensor, text: torch.Tensor, keep_classes: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Indices (V, cap) of the classes with the highest peak cosine in each view.

        The cost volume is computed in chunks of classes, so memory stays bounded whatever the
        vocabulary size, and without autograd (the selection is not differentiable, and a graph
        would keep every chunk's cost volume alive until the backward pass).
        """
        chunk = max(self.class_chunk, 1024)
        with torch.no_grad():
            scores = torch.cat(
                [
                    cost_volume(feats, text[i : i + chunk]).flatten(3).amax(dim=(1, 3))
                    for i in range(0, text.shape[0], chunk)
                ],
                dim=1,
            ).float()  # (V, T)
        if keep_classes is not None:
            scores = scores.masked_fill(keep_classes, float("inf"))
        return scores.topk(self.class_cap, dim=1).indices.sort(dim=1).values

    # ----------------------------------------------------------------------------- inference
    def _inference_whole(
        self, images: List[torch.Tensor], sizes: List[Tuple[int, int]], text: torch.Tensor, compact: List[bool]
    ) -> List[Dict[str, torch.Tensor]]:
        """Each image seen whole, resized (after optional padding) to CLIP's input size."""
        padded = [self._pad(im) for im in images]
        clip_views = torch.cat([self._clip_views(p[None]) for p in padded])
        sam = None
        if self.sam is not None:
            sam = self._sam_maps(self._sam_features(padded), whole_image_boxes(len(padded), self.device))
        logits, kept = self._predict(clip_views, sam, text)
        results = []
        for i, (image, pad, size) in enumerate(zip(images, padded, sizes)):
            crop = None
            if self.keep_padding:
                # CAT-Seg's post-processing (detectron2's sem_seg_postprocess applied to the
                # low-resolution map): the padded strip stays, but the map itself is cut to the
                # received image's size in cells, which only bites for images smaller than it.
                crop = (logits.shape[-2:], image.shape[-2:])
            elif pad.shape[-2:] != image.shape[-2:]:
                crop = (pad.shape[-2:], image.shape[-2:])
            to_scores = lambda x: _resize_scores(x.sigmoid(), size, crop)  # noqa: E731
            classes = None if kept is None else kept[i]
            results.append(self._map_classes(logits[i], to_scores, text.shape[0], classes, compact=compact[i]))
        return results

    def _pad(self, image: torch.Tensor) -> torch.Tensor:
        """Pad bottom/right to a multiple of the size divisibility with CLIP's mean colour.

        The strip is zero after CLIP's normalisation (as CAT-Seg pads) and nearly so after SAM's,
        whose mean colour is close.
        """
        d = self.size_divisibility
        if d <= 0:
            return image
        h, w = image.shape[-2:]
        ph, pw = -h % d, -w % d
        if not ph and not pw:
            return image
        out = self.clip_pixel_mean.expand(3, h + ph, w + pw).clone()
        out[:, :h, :w] = image
        return out

    def _inference_sliding(
        self,
        images: List[torch.Tensor],
        sizes: List[Tuple[int, int]],
        text: torch.Tensor,
        windows: SlidingWindows,
        compact: List[bool],
    ) -> List[Dict[str, torch.Tensor]]:
        """Windows over the image resized to a square grid, averaged with a whole-image view.

        All views of all images run as one batch. With ``sam_per_window`` (the default) SAM runs
        once per view, each window resized to SAM's input size on its own (the whole-image view sees
        the image), so every view has SAM's training scale relative to CLIP's; without it, once per
        image on the whole image, each window taking its area of SAM's feature map.
        """
        views = torch.cat([windows.views(image) for image in images])  # (images * views, 3, s, s)
        clip_views = self._clip_views(views)
        sam = None
        if self.sam is not None and self.sam_per_window:
            per_image = views.split(windows.num_views)
            sam_inputs = [v for image, own in zip(images, per_image) for v in (*own[:-1], image)]
            sam = self._sam_maps(self._sam_features(sam_inputs), whole_image_boxes(len(sam_inputs), self.device))
        elif self.sam is not None:
            sam = self._sam_maps(self._sam_features(images), windows.boxes(len(images), self.device))
        logits, kept = self._predict(clip_views, sam, text)  # (images * views, T or cap, h, w)
        t, n = text.shape[0], windows.num_views
        results = []
        for i, size_out in enumerate(sizes):
            image_logits = logits[i * n : (i + 1) * n]
            classes = None
            if kept is not None:
                image_logits, classes = _union_of_views(image_logits, kept[i * n : (i + 1) * n])
            fold = lambda x: _resize_scores(windows.fold(x), size_out)  # noqa: E731
            results.append(self._map_classes(image_logits, fold, t, classes, dim=1, compact=compact[i]))
        return results

    def _map_classes(
        self,
        x: torch.Tensor,
        fn,
        num_classes: int,
        classes: Optional[torch.Tensor] = None,
        dim: int = 0,
        compact: bool = False,
    ) -> Dict[str, object]:
        """One output dict: ``fn`` applied to chunks of classes along ``dim`` fills one float32
        (T, H, W) "sem_seg".

        ``classes`` names the class of each slice of ``x`` along ``dim`` when it holds only some of
        the ``num_classes`` (the class cap's kept ones); every other class gets the score ``fn``
        gives the logit ``EXCLUDED_LOGIT`` everywhere, a constant, whose maps are never computed.
        With ``compact`` such an output holds only the kept classes' scores ("kept_scores",
        "kept_classes", "other_score"). Only one chunk's intermediate maps exist at a time, and the
        output is never copied.
        """
        compact = compact and classes is not None
        out = None
        start = 0
        for chunk in x.split(self.class_chunk, dim=dim):
            y = fn(chunk)
            if out is None:
                out = y.new_empty((x.shape[dim] if compact else num_classes, *y.shape[1:]), dtype=torch.float32)
                if classes is not None and not compact:
                    out.fill_(EXCLUDED_SCORE)
            stop = start + y.shape[0]
            out[slice(start, stop) if classes is None or compact else classes[start:stop]] = y.float()
            start = stop
        if compact:
            return {"kept_scores": out, "kept_classes": classes, "other_score": EXCLUDED_SCORE}
        return {"sem_seg": out}


def dense_scores(output: Dict[str, object], num_classes: int) -> torch.Tensor:
    """The (T, H, W) "sem_seg" scores of an inference output, expanded from the kept classes' scores
    of a ``kept_classes_only`` output when it holds those."""
    if "sem_seg" in output:
        return output["sem_seg"]
    kept = output["kept_scores"]
    out = kept.new_full((num_classes, *kept.shape[1:]), output["other_score"])
    out[output["kept_classes"]] = kept
    return out


def _check_input_format(cfg) -> None:
    """Refuse, before anything is built, inputs the model would misread: it normalises its images
    as RGB with MODEL.CLIP/SAM.PIXEL_MEAN/STD, and never reads detectron2's MODEL.PIXEL_MEAN/STD."""
    if cfg.INPUT.FORMAT != "RGB":
        raise ValueError(
            f"INPUT.FORMAT={cfg.INPUT.FORMAT!r}: LMSeg reads its images as RGB (CLIP's and SAM's "
            "normalisation are RGB); set INPUT.FORMAT RGB (configs/Base-LMSeg.yaml does, a config "
            "written without _BASE_ gets detectron2's BGR)"
        )
    from detectron2.config import get_cfg as get_d2_cfg

    d2 = get_d2_cfg().MODEL
    for key in ("PIXEL_MEAN", "PIXEL_STD"):
        if list(cfg.MODEL[key]) != list(d2[key]):
            raise ValueError(
                f"MODEL.{key}={list(cfg.MODEL[key])} is not used by LMSeg; set MODEL.CLIP.{key} "
                f"and MODEL.SAM.{key} instead and leave MODEL.{key} unset"
            )


def _check_fusion_matches_sam(mode: str, sam_enabled: bool) -> None:
    # an unknown mode is left to FeatureFusion, which lists the accepted ones
    if mode in FUSION_MODES and (mode == "clip_only") == sam_enabled:
        raise ValueError(
            f"MODEL.FUSION.MODE={mode!r} and MODEL.SAM.ENABLED={sam_enabled} disagree: "
            "'clip_only' fusion goes with MODEL.SAM.ENABLED False, every other mode needs SAM"
        )


def _pretrained_sources(cfg) -> Tuple[str, str]:
    """MODEL.CLIP.PRETRAINED and MODEL.SAM.CHECKPOINT, each replaced by "" (nothing to fetch) when
    the MODEL.WEIGHTS file holds that encoder's weights anyway."""
    from lmseg.checkpoint import pretrained_parts_in

    clip, sam = cfg.MODEL.CLIP.PRETRAINED, cfg.MODEL.SAM.CHECKPOINT
    held = pretrained_parts_in(cfg.MODEL.WEIGHTS)
    if "clip" in held and clip:
        logger.info("MODEL.CLIP.PRETRAINED=%r not loaded: MODEL.WEIGHTS holds CLIP's weights", clip)
        clip = ""
    if "sam" in held and sam and cfg.MODEL.SAM.ENABLED:
        logger.info("MODEL.SAM.CHECKPOINT=%r not loaded: MODEL.WEIGHTS holds SAM's weights", sam)
        sam = ""
    return clip, sam


def _union_of_views(logits: torch.Tensor, kept: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The logits (views, U, h, w) of the U classes kept by any of an image's views, sorted, each view
    holding ``EXCLUDED_LOGIT`` for the classes it did not keep; and the U class indices. ``logits``
    is (views, cap, h, w) with the kept classes ``kept`` (views, cap)."""
    union, position = torch.unique(kept, sorted=True, return_inverse=True)  # position: (views, cap)
    out = logits.new_full((logits.shape[0], union.numel(), *logits.shape[-2:]), EXCLUDED_LOGIT)
    out.scatter_(1, position[:, :, None, None].expand_as(logits), logits)
    return out, union


def _resize_scores(scores: torch.Tensor, size: Tuple[int, int], crop=None) -> torch.Tensor:
    """Resize (T, h, w) scores to ``size``; with ``crop = (padded size, content size)`` the scores
    are first brought to the padded size and the padded strip is cut away."""
    if crop is not None:
        (ph, pw), (ch, cw) = crop
        if tuple(scores.shape[-2:]) != (ph, pw):
            scores = F.interpolate(scores[None], size=(ph, pw), mode="bilinear", align_corners=False)[0]
        scores = scores[:, :ch, :cw]
    if tuple(scores.shape[-2:]) != tuple(size):
        scores = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
    return scores


def _initial_vocabulary(cfg) -> dict:
    """The vocabulary of the first training dataset (or the first test dataset), if any, and its
    descriptions (the dataset's ``descriptions`` metadata; None looks them up in MODEL.PROMPTS)."""
    names = list(cfg.DATASETS.TRAIN) or list(cfg.DATASETS.TEST)
    if not names:
        return {"vocabulary": ()}
    from lmseg.data import ensure_datasets_registered

    ensure_datasets_registered(names[:1])
    meta = MetadataCatalog.get(names[0])
    classes = meta.get("stuff_classes", None)
    if not classes:
        which = "DATASETS.TRAIN" if cfg.DATASETS.TRAIN else "DATASETS.TEST"
        raise ValueError(
            f"{which}[0]={names[0]!r} is not a registered dataset with a vocabulary (stuff_classes); use one "
            "of the benchmark names, 'sem_seg_folder:<path>', or register it with detectron2"
        )
    return {"vocabulary": tuple(classes), "vocabulary_descriptions": meta.get("descriptions", None)}
