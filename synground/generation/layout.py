"""The layout-conditioned variant: an LLM proposes phrases with boxes, GLIGEN draws them where they were asked.

The paper tried it and found detector boxes better; it stays a selectable strategy (`generation=layout`). The boxes
are the layout itself (no detector), so each region's score is None.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from synground.data.schema import GenerationRequest, GroundingSample, Region
from synground.generation.filters import ClipScore
from synground.generation.llm import LanguageModel
from synground.generation.paraphrases import Paraphraser, paraphrase_samples
from synground.generation.runtime import OUT_OF_MEMORY, Rejected, StageClock, load_stages, prompt_version, run_batched, to_pil
from synground.generation.text_to_image import StableDiffusion, checked_image

LAYOUT_PROMPT = (
    "USER: Plan a photo of this description. List up to {max_objects} objects, one per line, as "
    "`phrase: x0 y0 x1 y1` with the box corners as fractions of the image width and height between 0 and 1."
    "\nDescription: {description} ASSISTANT:"
)
NUMBER = r"(\d+(?:\.\d+)?)"
LAYOUT_LINE = re.compile(rf"^\s*(?:[-*•]|\d+[.)])?\s*(.+?)\s*[:\-]\s*[\[(]?\s*{NUMBER}[,\s]+{NUMBER}[,\s]+{NUMBER}[,\s]+{NUMBER}")
VERSION = 1


def parse_layout(answer: str, max_objects: int) -> list[tuple[str, list[float]]]:
    """(phrase, relative xyxy box) per well-formed line; boxes outside [0, 1] or empty are dropped."""
    layout = []
    for line in answer.splitlines():
        match = LAYOUT_LINE.match(line)
        if not match:
            continue
        phrase = match.group(1).strip(" \"'`").lower()
        box = [float(value) for value in match.groups()[1:]]
        if phrase and all(0 <= v <= 1 for v in box) and box[0] < box[2] and box[1] < box[3]:
            layout.append((phrase, box))
    return layout[:max_objects]


class Gligen(StableDiffusion):
    """Stable Diffusion with GLIGEN's gated attention: each phrase is drawn inside its box."""

    pipeline_class = "StableDiffusionGLIGENPipeline"

    def __init__(
        self, model_id: str = "masterful/gligen-1-4-generation-text-box", scheduled_sampling_beta: float = 0.3, **settings: Any
    ):
        super().__init__(model_id, **settings)
        self.scheduled_sampling_beta = scheduled_sampling_beta

    @property
    def provenance(self) -> dict[str, Any]:
        return {**super().provenance, "scheduled_sampling_beta": self.scheduled_sampling_beta}

    def draw_layouts(
        self,
        texts: Sequence[str],
        layouts: Sequence[list[tuple[str, list[float]]]],
        seeds: Sequence[int],
        clock: StageClock,
        candidates: Sequence[Rejected] | None = None,
    ) -> list[torch.Tensor | None]:
        """A uint8 image [3, H, W] per layout; None for one lost to memory or numerics (`candidates`: what each
        layout's request is, kept by `clock` when its image is rejected)."""
        prompts = [self.fit_prompt(text) for text in texts]
        clock.events["prompt_shortened"] += sum(prompt != text for prompt, text in zip(prompts, texts))
        images = run_batched(self._draw_layout, list(zip(prompts, seeds, layouts)), self.batch_size, clock, "text_to_image")
        return [checked_image(image, clock, candidate) for image, candidate in zip(images, candidates or [None] * len(images))]

    @torch.inference_mode()
    def _draw_layout(self, batch: Sequence[tuple[str, int, list[tuple[str, list[float]]]]]) -> list[torch.Tensor]:
        # diffusers' GLIGEN pipeline applies one layout to its whole batch: one call per layout
        images = []
        for prompt, seed, layout in batch:
            output = self.load()(
                prompt=prompt,
                gligen_phrases=[phrase for phrase, _ in layout],
                gligen_boxes=[box for _, box in layout],
                gligen_scheduled_sampling_beta=self.scheduled_sampling_beta,
                **self._call_arguments([(None, seed)]),
                output_type="pt",
            )
            images.append(output.images[0])
        return images


class LayoutGenerator:
    """A `TripletGenerator`: description -> LLM layout -> GLIGEN image (-> CLIP filter)."""

    def __init__(
        self,
        descriptions: Any,
        llm: LanguageModel,
        text_to_image: Gligen,
        clip_filter: ClipScore | None = None,
        prompt: str = LAYOUT_PROMPT,
        max_objects: int = 5,
        source: str = "synground-layout",
        paraphrases: Paraphraser | None = None,
    ):
        self.descriptions, self.llm, self.text_to_image, self.clip_filter = descriptions, llm, text_to_image, clip_filter
        self.prompt, self.max_objects, self.source = prompt, max_objects, source
        self.paraphrases = paraphrases  # SelfEQ's, of the layout's phrases (generation/paraphrases=llm)
        self.clock = StageClock()

    @property
    def uses_cuda(self) -> bool:
        stages = (self.descriptions, self.llm, self.text_to_image, self.clip_filter, self.paraphrases)
        return any(getattr(stage, "uses_cuda", False) for stage in stages)

    def load(self) -> None:
        load_stages([self.descriptions, self.llm, self.text_to_image, self.clip_filter, self.paraphrases])

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GroundingSample]:
        clock = self.clock
        described = []
        for request, description in zip(requests, self.descriptions.describe(requests, clock)):
            if description is None:
                clock.reject("no_description", candidate=Rejected(request.key))
            elif description:  # not lost to memory (counted there)
                described.append((request, description))
        layouts = self._layouts([d.text for _, d in described], [r.seed for r, _ in described], clock)
        planned = []
        for (request, description), layout in zip(described, layouts):
            if layout is not OUT_OF_MEMORY and not layout:
                clock.reject("no_layout", candidate=Rejected(request.key, description.text))
            elif not layout:
                continue
            else:
                planned.append((request, description, layout))
        size = (self.text_to_image.width, self.text_to_image.height)  # of the images to be drawn
        images = self.text_to_image.draw_layouts(
            [d.text for _, d, _ in planned],
            [layout for *_, layout in planned],
            [r.seed for r, *_ in planned],
            clock,
            [Rejected(r.key, d.text, regions=layout_regions(layout, *size)) for r, d, layout in planned],
        )
        drawn = [(*item, image) for item, image in zip(planned, images) if image is not None]
        scores: list[float | None] = [None] * len(drawn)
        if self.clip_filter is not None:
            scores = self.clip_filter.passing(
                [image for *_, image in drawn],
                [d.text for _, d, *_ in drawn],
                clock,
                [
                    Rejected(r.key, d.text, image, layout_regions(layout, image.shape[2], image.shape[1]))
                    for r, d, layout, image in drawn
                ],
            )
            drawn, scores = [x for x, s in zip(drawn, scores) if s is not None], [s for s in scores if s is not None]
        samples = [self._sample(*item, score) for item, score in zip(drawn, scores)]
        if self.paraphrases is not None:
            paraphrase_samples(samples, [request.seed for request, *_ in drawn], self.paraphrases, clock)
        return samples

    def _layouts(self, texts: Sequence[str], seeds: Sequence[int], clock: StageClock) -> list[list[tuple[str, list[float]]]]:
        prompts = [self.prompt.format(description=text, max_objects=self.max_objects) for text in texts]
        return self.llm.complete_parsed(prompts, seeds, lambda answer: parse_layout(answer, self.max_objects), clock, "layout")

    def _sample(
        self,
        request: GenerationRequest,
        description: Any,
        layout: list[tuple[str, list[float]]],
        image: torch.Tensor,
        clip_score: float | None,
    ) -> GroundingSample:
        height, width = image.shape[1:]
        provenance = {
            "generator": f"synground-layout-v{VERSION}",
            "seed": request.seed,
            "index": request.index,
            "description": description.provenance,
            "text_to_image": self.text_to_image.provenance,
            "layout": {
                "llm": self.llm.provenance,
                "prompt_version": prompt_version(self.prompt),
                "max_objects": self.max_objects,
            },
            "image_ids": description.provenance.get("image_ids", []),
        }
        if clip_score is not None:
            provenance.update(clip=self.clip_filter.provenance, clip_score=round(clip_score, 4))
        regions = layout_regions(layout, width, height)
        return GroundingSample(request.key, to_pil(image), description.text, regions, self.source, provenance)


def layout_regions(layout: list[tuple[str, list[float]]], width: int, height: int) -> list[Region]:
    """A layout's boxes in pixels of a `width` x `height` image; a phrase placed twice is one region with two boxes."""
    regions: dict[str, Region] = {}
    for phrase, (x0, y0, x1, y1) in layout:
        box = [round(x0 * width, 2), round(y0 * height, 2), round(x1 * width, 2), round(y1 * height, 2)]
        regions.setdefault(phrase, Region(phrase, [], None)).boxes.append(box)
    return list(regions.values())
