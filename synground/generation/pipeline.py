"""SynGround: description -> Stable Diffusion image -> LLM phrases -> detector boxes -> CLIP filter -> triplet
(-> LLM paraphrases of its phrases, for SelfEQ, when asked).

Each stage is an object built by Hydra from pretrained ids and passed in; this file only composes them. Every
stage runs once per batch of requests, images stay uint8 tensors in memory from the diffusion model to the
shard writer, and each rejection is counted by reason in `clock` (read by the writer after each call). Each stage
that may reject is handed the drafts as they are (`Draft.candidate`), so the clock can keep a few rejected ones per
reason as they were for the dataset report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from synground.data.schema import GenerationRequest, GroundingSample, Region
from synground.generation.descriptions import Description
from synground.generation.detection import OpenVocabularyDetector
from synground.generation.filters import ClipScore
from synground.generation.paraphrases import Paraphraser, paraphrase_samples
from synground.generation.phrases import PhraseExtractor
from synground.generation.runtime import Rejected, StageClock, load_stages, to_pil
from synground.generation.text_to_image import StableDiffusion

VERSION = 1  # bump when the composition changes, so provenance tells old samples from new


class SynGroundGenerator:
    """A `TripletGenerator`; `descriptions` is any source with `describe(requests, clock)` (descriptions.py)."""

    def __init__(
        self,
        descriptions: Any,
        text_to_image: StableDiffusion,
        phrases: PhraseExtractor,
        detector: OpenVocabularyDetector,
        clip_filter: ClipScore | None = None,
        source: str = "synground",
        paraphrases: Paraphraser | None = None,
    ):
        self.descriptions, self.text_to_image, self.phrases = descriptions, text_to_image, phrases
        self.detector, self.clip_filter, self.source = detector, clip_filter, source
        self.paraphrases = paraphrases
        self.clock = StageClock()

    @property
    def uses_cuda(self) -> bool:
        stages = (self.descriptions, self.text_to_image, self.phrases, self.detector, self.clip_filter, self.paraphrases)
        return any(getattr(stage, "uses_cuda", False) for stage in stages)

    def load(self) -> None:
        load_stages([self.descriptions, self.text_to_image, self.phrases, self.detector, self.clip_filter, self.paraphrases])

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GroundingSample]:
        clock = self.clock
        descriptions = self.descriptions.describe(requests, clock)
        for request, description in zip(requests, descriptions):
            if description is None:
                clock.reject("no_description", candidate=Rejected(request.key))
        drafts = [Draft(request, description) for request, description in zip(requests, descriptions) if description]

        drawn = self.text_to_image.generate(
            [d.description.text for d in drafts], [d.request.seed for d in drafts], clock, [d.candidate() for d in drafts]
        )
        for draft, image_and_prompt in zip(drafts, drawn):
            draft.image, draft.prompt = image_and_prompt or (None, "")
        drafts = [d for d in drafts if d.image is not None]

        phrases = self.phrases.extract(
            [d.description.text for d in drafts], [d.request.seed for d in drafts], clock, [d.candidate() for d in drafts]
        )
        drafts = [replace(d, phrases=found) for d, found in zip(drafts, phrases) if found]

        regions = self.detector.detect(
            [d.image for d in drafts], [d.phrases for d in drafts], clock, [d.candidate() for d in drafts]
        )
        drafts = [replace(d, regions=found) for d, found in zip(drafts, regions) if found]

        if self.clip_filter is not None:
            scores = self.clip_filter.passing(
                [d.image for d in drafts], [d.description.text for d in drafts], clock, [d.candidate() for d in drafts]
            )
            drafts = [replace(d, clip_score=score) for d, score in zip(drafts, scores) if score is not None]
        samples = [self._sample(draft) for draft in drafts]
        if self.paraphrases is not None:  # of the phrases kept with boxes
            paraphrase_samples(samples, [d.request.seed for d in drafts], self.paraphrases, clock)
        return samples

    def _sample(self, draft: Draft) -> GroundingSample:
        text_to_image = self.text_to_image.provenance
        if draft.prompt != draft.description.text:
            text_to_image["prompt"] = draft.prompt
        provenance = {
            "generator": f"synground-v{VERSION}",
            "seed": draft.request.seed,
            "index": draft.request.index,
            "description": draft.description.provenance,
            "text_to_image": text_to_image,
            "phrases": self.phrases.provenance,
            "detector": self.detector.provenance,
            "image_ids": draft.description.provenance.get("image_ids", []),
        }
        if self.clip_filter is not None:
            provenance.update(clip=self.clip_filter.provenance, clip_score=round(draft.clip_score, 4))
        return GroundingSample(
            draft.request.key, to_pil(draft.image), draft.description.text, draft.regions, self.source, provenance
        )


@dataclass
class Draft:
    """One request on its way through the stages."""

    request: GenerationRequest
    description: Description
    image: torch.Tensor | None = None  # uint8 [3, H, W]
    prompt: str = ""  # what the diffusion model read (the description, shortened if too long)
    phrases: list[str] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    clip_score: float | None = None

    def candidate(self) -> Rejected:
        """This draft as it is now, for a stage that may reject it."""
        regions = self.regions or [Region(phrase, []) for phrase in self.phrases]
        return Rejected(self.request.key, self.description.text, self.image, regions)
