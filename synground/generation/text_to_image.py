"""Descriptions to images with a diffusers Stable Diffusion pipeline, batched, seeded per image."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import torch

from synground.generation.runtime import (
    OUT_OF_MEMORY,
    LazyModels,
    Rejected,
    StageClock,
    load_pretrained,
    model_dtype,
    model_provenance,
    resolve_device,
    run_batched,
)

log = logging.getLogger(__name__)

SCHEDULERS = {  # name -> diffusers class; "default" keeps the checkpoint's own scheduler
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
}
LONG_PROMPT_POLICIES = ("sentences", "truncate")


class StableDiffusion(LazyModels):
    """Images as uint8 tensors [3, H, W] that stay in memory until the shard is written (encoded once).

    CLIP's text encoder reads 77 tokens and detailed captions are longer. `long_prompts="sentences"` keeps the
    leading whole sentences that fit (cutting words only when the first sentence alone is too long); `"truncate"`
    cuts at the token limit. Either way each shortened prompt is counted (`prompt_shortened`) and the prompt used
    is kept in the sample's provenance.
    """

    pipeline_class = "StableDiffusionPipeline"

    def __init__(
        self,
        model_id: str = "stable-diffusion-v1-5/stable-diffusion-v1-5",
        revision: str | None = None,
        scheduler: str = "default",
        steps: int = 50,
        guidance: float = 7.5,
        height: int = 512,
        width: int = 512,
        negative_prompt: str | None = None,
        long_prompts: str = "sentences",
        device: str = "auto",
        dtype: str = "float16",
        batch_size: int = 8,
    ):
        if scheduler != "default" and scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose default or one of {sorted(SCHEDULERS)}")
        if long_prompts not in LONG_PROMPT_POLICIES:
            raise ValueError(f"unknown long_prompts policy {long_prompts!r}; choose one of {LONG_PROMPT_POLICIES}")
        self.model_id, self.revision, self.scheduler = model_id, revision, scheduler
        self.steps, self.guidance, self.height, self.width = steps, guidance, height, width
        self.negative_prompt, self.long_prompts = negative_prompt, long_prompts
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self._loaded: Any = None

    def load(self) -> Any:
        if self._loaded is None:
            import diffusers  # slow to import: only when a diffusion stage runs

            device = resolve_device(self.device)
            dtype = model_dtype(self.dtype, device)
            pipeline = load_pretrained(getattr(diffusers, self.pipeline_class), self.model_id, self.revision, dtype=dtype)
            if self.scheduler != "default":
                pipeline.scheduler = getattr(diffusers, SCHEDULERS[self.scheduler]).from_config(pipeline.scheduler.config)
            pipeline.set_progress_bar_config(disable=True)
            self._loaded = pipeline.to(device)
        return self._loaded

    @property
    def provenance(self) -> dict[str, Any]:
        unet = self._loaded.unet if self._loaded is not None else None
        return model_provenance(
            self.model_id,
            self.revision,
            unet,
            scheduler=self.scheduler,
            steps=self.steps,
            guidance=self.guidance,
            height=self.height,
            width=self.width,
            negative_prompt=self.negative_prompt,
            long_prompts=self.long_prompts,
        )

    def fit_prompt(self, text: str) -> str:
        """The prompt the text encoder will read in full, by the long-prompt policy."""
        tokenizer = self.load().tokenizer
        limit = tokenizer.model_max_length - 2  # start and end tokens

        def fits(candidate: str) -> bool:
            return len(tokenizer(candidate, add_special_tokens=False).input_ids) <= limit

        if fits(text):
            return text
        if self.long_prompts == "sentences":
            sentences = re.split(r"(?<=[.!?])\s+", text.strip())
            kept = ""
            for sentence in sentences:
                candidate = f"{kept} {sentence}".strip()
                if not fits(candidate):
                    break
                kept = candidate
            if kept:
                return kept
        ids = tokenizer(text, add_special_tokens=False).input_ids[:limit]
        return tokenizer.decode(ids)

    def generate(
        self, texts: Sequence[str], seeds: Sequence[int], clock: StageClock, candidates: Sequence[Rejected] | None = None
    ) -> list[tuple[torch.Tensor, str] | None]:
        """(uint8 image [3, H, W], prompt used) per text; None for an image lost to memory or numerics (`candidates`:
        what each text's request is, kept by `clock` when its image is rejected)."""
        prompts = [self.fit_prompt(text) for text in texts]
        clock.events["prompt_shortened"] += sum(prompt != text for prompt, text in zip(prompts, texts))
        images = run_batched(self._draw, list(zip(prompts, seeds)), self.batch_size, clock, "text_to_image")
        checked = [checked_image(image, clock, candidate) for image, candidate in zip(images, candidates or [None] * len(images))]
        return [(pixels, prompt) if pixels is not None else None for pixels, prompt in zip(checked, prompts)]

    @torch.inference_mode()
    def _draw(self, batch: Sequence[tuple[str, int]]) -> list[torch.Tensor]:
        pipeline = self.load()
        output = pipeline(prompt=[prompt for prompt, _ in batch], **self._call_arguments(batch), output_type="pt")
        return list(output.images)

    def _call_arguments(self, batch: Sequence[tuple[Any, int]]) -> dict[str, Any]:
        # CPU generators: the same seed draws the same starting noise on any GPU
        return {
            "generator": [torch.Generator("cpu").manual_seed(seed) for _, seed in batch],
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance,
            "height": self.height,
            "width": self.width,
            "negative_prompt": [self.negative_prompt] * len(batch) if self.negative_prompt else None,
        }


BLACK = 2  # the brightest pixel value (of 255) an image may have and still count as black


def checked_image(image: torch.Tensor | None, clock: StageClock, candidate: Rejected | None = None) -> torch.Tensor | None:
    """The image as uint8, or None (counted) when it is missing, not finite, or black (a safety-filtered output).

    A rejected `candidate` is kept with its score: the fraction of non-finite values, or the brightest pixel value
    (threshold `BLACK`) with the black image itself."""
    if image is None or image is OUT_OF_MEMORY:  # counted where memory ran out
        return None
    finite = torch.isfinite(image)
    if not finite.all():
        clock.reject("nan_image", candidate=candidate, score=round(1 - finite.float().mean().item(), 4))
        return None
    pixels = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if pixels.max() <= BLACK:
        clock.reject("black_image", candidate=candidate, image=pixels, score=float(pixels.max()), threshold=float(BLACK))
        return None
    return pixels
