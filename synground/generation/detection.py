"""Boxes for phrases from an open-vocabulary detector (Grounding DINO by default, OWLv2 as an option).

GLIP, the paper's detector, is not in transformers; Grounding DINO is its successor. Each detected box is assigned
to the one phrase that scores it highest: for Grounding DINO the best token of the phrase's span in the joint
prompt "phrase one. phrase two.", for OWLv2 the phrase's own query. A box is kept when its best token scores at
least `box_threshold` and its phrase at least `text_threshold` (for OWLv2 both are the phrase score); then per phrase:
non-maximum suppression, boxes covering more than `max_box_area` of the image or thinner than `min_box_size` pixels
are dropped, at most `max_boxes_per_phrase` are kept. The region's score is its best box's. An image left without any
box is rejected as `no_detection`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision.ops import batched_nms, box_convert
from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

from synground.data.schema import Region
from synground.generation.runtime import (
    LazyModels,
    Rejected,
    StageClock,
    load_pretrained,
    model_dtype,
    model_provenance,
    move_to,
    resolve_device,
    run_batched,
)

KINDS = ("grounding_dino", "owlv2")


class OpenVocabularyDetector(LazyModels):
    def __init__(
        self,
        model_id: str = "IDEA-Research/grounding-dino-base",
        revision: str | None = None,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        nms_iou: float = 0.5,
        max_box_area: float = 0.9,
        min_box_size: float = 8.0,
        max_boxes_per_phrase: int = 3,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 8,
    ):
        self.model_id, self.revision = model_id, revision
        self.box_threshold, self.text_threshold, self.nms_iou = box_threshold, text_threshold, nms_iou
        self.max_box_area, self.min_box_size, self.max_boxes_per_phrase = max_box_area, min_box_size, max_boxes_per_phrase
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self._loaded: tuple[Any, Any, str] | None = None

    def load(self) -> tuple[Any, Any, str]:
        if self._loaded is None:
            device = resolve_device(self.device)
            processor = load_pretrained(AutoProcessor, self.model_id, self.revision)
            dtype = model_dtype(self.dtype, device)
            model = load_pretrained(AutoModelForZeroShotObjectDetection, self.model_id, self.revision, dtype=dtype)
            kind = model.config.model_type.replace("-", "_")
            if kind not in KINDS:
                raise ValueError(f"detector {self.model_id!r} is a {kind!r} model; supported: {KINDS}")
            self._loaded = (processor, model.to(device).eval(), kind)
        return self._loaded

    @property
    def provenance(self) -> dict[str, Any]:
        model = self._loaded[1] if self._loaded else None
        return model_provenance(
            self.model_id,
            self.revision,
            model,
            box_threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            nms_iou=self.nms_iou,
            max_box_area=self.max_box_area,
            min_box_size=self.min_box_size,
            max_boxes_per_phrase=self.max_boxes_per_phrase,
        )

    def detect(
        self,
        images: Sequence[torch.Tensor],
        phrases: Sequence[list[str]],
        clock: StageClock,
        candidates: Sequence[Rejected] | None = None,
    ) -> list[list[Region] | None]:
        """Regions per image (uint8 [3, H, W]); phrases with no box are left out and counted, an image with none is
        counted as `no_detection`. Its candidate (`candidates`: what each image's request is) is kept by `clock` with
        each phrase's best box whatever the thresholds, the best of their scores and, as the threshold, the score at
        which a box passes both `box_threshold` and `text_threshold` (a box may also have failed the size limits)."""
        found = run_batched(self._detect_batch, list(zip(images, phrases)), self.batch_size, clock, "detect")
        results: list[list[Region] | None] = []
        for detected, asked, candidate in zip(found, phrases, candidates or [None] * len(found)):
            if not detected:  # lost to memory: counted there
                results.append(None)
                continue
            regions, best_boxes = detected
            clock.events["phrase_without_box"] += len(asked) - len(regions)
            if not regions:
                score = max((region.score for region in best_boxes), default=None)
                threshold = max(self.box_threshold, self.text_threshold)
                clock.reject("no_detection", candidate=candidate, regions=best_boxes, score=score, threshold=threshold)
            results.append(regions)
        return results

    @torch.inference_mode()
    def _detect_batch(self, batch: Sequence[tuple[torch.Tensor, list[str]]]) -> list[tuple[list[Region], list[Region]]]:
        processor, model, kind = self.load()
        images = [image for image, _ in batch]
        if kind == "grounding_dino":
            texts = [". ".join(phrases) + "." for _, phrases in batch]
            inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
            outputs = model(**move_to(dict(inputs), model.device, model.dtype))
            probabilities = outputs.logits.sigmoid().float()
            scores = [
                _span_scores(token_scores, processor.tokenizer, text, phrases)
                for token_scores, text, (_, phrases) in zip(probabilities, texts, batch)
            ]
            query_scores = list(probabilities.max(dim=-1).values)
            sizes = [(image.shape[2], image.shape[1]) for image in images]  # boxes are relative to each image
        else:
            inputs = processor(images=images, text=[phrases for _, phrases in batch], return_tensors="pt")
            outputs = model(**move_to(dict(inputs), model.device, model.dtype))
            scores = [logits[:, : len(phrases)].sigmoid().float() for logits, (_, phrases) in zip(outputs.logits, batch)]
            query_scores = [phrase_scores.max(dim=1).values for phrase_scores in scores]
            sizes = [(max(image.shape[1:]),) * 2 for image in images]  # OWLv2 pads to a square at the bottom right
        return [
            self._regions(*arguments, phrases)
            for *arguments, (_, phrases) in zip(query_scores, scores, outputs.pred_boxes.float(), sizes, images, batch)
        ]

    def _regions(
        self,
        query_scores: torch.Tensor,
        phrase_scores: torch.Tensor,
        boxes: torch.Tensor,
        size: tuple[int, int],
        image: torch.Tensor,
        phrases: list[str],
    ) -> tuple[list[Region], list[Region]]:
        """The kept regions and, when there are none, each phrase's best box whatever the thresholds (what a rejected
        candidate shows). query_scores [queries]; phrase_scores [queries, phrases]; boxes [queries, 4] relative cx, cy,
        w, h."""
        height, width = image.shape[1:]
        best, phrase_index = phrase_scores.max(dim=1)
        absolute = box_convert(boxes, "cxcywh", "xyxy") * torch.tensor([size[0], size[1], size[0], size[1]], device=boxes.device)
        absolute[:, 0::2] = absolute[:, 0::2].clamp(0, width)
        absolute[:, 1::2] = absolute[:, 1::2].clamp(0, height)
        sides = absolute[:, 2:] - absolute[:, :2]
        area = sides[:, 0] * sides[:, 1] / (width * height)
        keep = (
            (query_scores >= self.box_threshold)
            & (best >= self.text_threshold)
            & (sides.min(dim=1).values >= self.min_box_size)
            & (area <= self.max_box_area)
        )
        every_box = absolute
        absolute, best, phrase_index = absolute[keep], best[keep], phrase_index[keep]
        kept = batched_nms(absolute, best, phrase_index, self.nms_iou)  # sorted by score
        regions = []
        for index, phrase in enumerate(phrases):
            mine = kept[phrase_index[kept] == index][: self.max_boxes_per_phrase]
            if len(mine):
                regions.append(
                    Region(
                        phrase, [[round(v, 2) for v in box] for box in absolute[mine].tolist()], round(best[mine[0]].item(), 4)
                    )
                )
        if regions or not len(phrase_scores):
            return regions, []
        tops = phrase_scores.argmax(dim=0).tolist()  # per phrase, the query that scores it highest
        return [], [
            Region(phrase, [[round(v, 2) for v in every_box[top].tolist()]], round(phrase_scores[top, index].item(), 4))
            for index, (phrase, top) in enumerate(zip(phrases, tops))
        ]


def _span_scores(token_scores: torch.Tensor, tokenizer: Any, text: str, phrases: list[str]) -> torch.Tensor:
    """[queries, phrases]: each phrase's best token score within its span of the joint prompt."""
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    columns, start = [], 0
    for phrase in phrases:
        end = start + len(phrase)
        tokens = [i for i, (first, last) in enumerate(offsets) if last > first and first >= start and last <= end]
        columns.append(token_scores[:, tokens].max(dim=1).values if tokens else token_scores.new_zeros(len(token_scores)))
        start = end + 2  # ". " between phrases
    return torch.stack(columns, dim=1)
