"""Filters of generated samples: CLIP image-text agreement (open_clip) and near-duplicate images.

Detector confidence and box sanity (size, area) are thresholds of the detector itself (detection.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from synground.data.leakage import difference_hash
from synground.data.schema import GroundingSample
from synground.generation.runtime import LazyModels, Rejected, StageClock, resolve_device, run_batched


class ClipScore(LazyModels):
    """Cosine similarity of image and description embeddings; samples below `min_score` are rejected.

    `model_config` registers a model config JSON first (a custom or tiny architecture); `pretrained` is an
    open_clip tag or a checkpoint file.
    """

    def __init__(
        self,
        model: str = "ViT-B-32",
        pretrained: str | None = "laion2b_s34b_b79k",
        min_score: float = 0.2,
        model_config: str | None = None,
        device: str = "auto",
        batch_size: int = 32,
    ):
        self.model_name, self.pretrained, self.min_score = model, pretrained, min_score
        self.model_config, self.device, self.batch_size = model_config, device, batch_size
        self._loaded: tuple[Any, Any, tuple[int, int], tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def provenance(self) -> dict[str, Any]:
        return {"model": self.model_name, "pretrained": self.pretrained, "min_score": self.min_score}

    def load(self):
        if self._loaded is None:
            import open_clip

            if self.model_config:
                open_clip.add_model_config(self.model_config)
            model = open_clip.create_model(self.model_name, pretrained=self.pretrained, device=resolve_device(self.device))
            config = model.visual.preprocess_cfg if hasattr(model.visual, "preprocess_cfg") else {}
            size = model.visual.image_size
            size = size if isinstance(size, tuple) else (size, size)
            mean = tuple(config.get("mean", open_clip.OPENAI_DATASET_MEAN))
            std = tuple(config.get("std", open_clip.OPENAI_DATASET_STD))
            self._loaded = (model.eval(), open_clip.get_tokenizer(self.model_name), size, mean, std)
        return self._loaded

    def score(self, images: Sequence[torch.Tensor], texts: Sequence[str], clock: StageClock) -> list[float | None]:
        return run_batched(self._score_batch, list(zip(images, texts)), self.batch_size, clock, "clip_score")

    def passing(
        self,
        images: Sequence[torch.Tensor],
        texts: Sequence[str],
        clock: StageClock,
        candidates: Sequence[Rejected] | None = None,
    ) -> list[float | None]:
        """Each score that reaches `min_score`; None for the rest, those below it counted as `low_clip_score` and
        their `candidates` (what each image's request is) kept by `clock` with the score (scores lost to memory are
        counted by `score`)."""
        scores = self.score(images, texts, clock)
        for score, candidate in zip(scores, candidates or [None] * len(scores)):
            if isinstance(score, float) and score < self.min_score:
                clock.reject("low_clip_score", candidate=candidate, score=round(score, 4), threshold=self.min_score)
        return [score if isinstance(score, float) and score >= self.min_score else None for score in scores]

    @torch.inference_mode()
    def _score_batch(self, batch: Sequence[tuple[torch.Tensor, str]]) -> list[float]:
        model, tokenizer, size, mean, std = self.load()
        device = next(model.parameters()).device
        # resized and normalised on the device, from the uint8 tensors the generator already holds (no PIL round trip)
        pixels = torch.stack(
            [
                F.interpolate(
                    image[None].to(device).float() / 255, size=size, mode="bicubic", align_corners=False, antialias=True
                )[0]
                for image, _ in batch
            ]
        )
        pixels = (pixels - torch.tensor(mean, device=device)[:, None, None]) / torch.tensor(std, device=device)[:, None, None]
        image_features = F.normalize(model.encode_image(pixels).float(), dim=-1)
        text_features = F.normalize(model.encode_text(tokenizer([text for _, text in batch]).to(device)).float(), dim=-1)
        return (image_features * text_features).sum(dim=-1).tolist()


class NearDuplicates:
    """Drops samples whose image is within `max_distance` bits (64-bit dHash) of an earlier one in the same list;
    `clock` keeps a dropped one with its distance to the nearest earlier image as its score.

    Applied per shard: the result depends only on the shard's own samples, so a resumed run writes the same shards.
    """

    def __init__(self, max_distance: int = 4):
        self.max_distance = max_distance

    def __call__(self, samples: list[GroundingSample], clock: StageClock) -> list[GroundingSample]:
        kept, hashes = [], []
        for sample in samples:
            value = difference_hash(sample.image)
            distance = min((bin(value ^ other).count("1") for other in hashes), default=None)
            if distance is not None and distance <= self.max_distance:
                candidate = Rejected(sample.key, sample.caption, sample.image, sample.regions)
                clock.reject("near_duplicate", candidate=candidate, score=float(distance), threshold=float(self.max_distance))
                continue
            hashes.append(value)
            kept.append(sample)
        return kept
