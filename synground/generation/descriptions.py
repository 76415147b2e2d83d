"""Where descriptions come from: captions of real seed images (Image2Text, the paper's best), a seed image's
region descriptions concatenated or summarised by an LLM, or an LLM writing from a list of concepts (Concept2Text,
no real image at all)."""

from __future__ import annotations

import io
import logging
import random
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from synground.data.schema import GenerationRequest, GroundingSample, sample_from_metadata
from synground.data.shards import resolve_shards
from synground.generation.llm import LanguageModel
from synground.generation.runtime import (
    OUT_OF_MEMORY,
    LazyModels,
    StageClock,
    load_pretrained,
    model_dtype,
    model_provenance,
    move_to,
    prompt_version,
    resolve_device,
    run_batched,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


@dataclass
class Description:
    text: str
    provenance: dict[str, Any] = field(default_factory=dict)


class SeedImages:
    """Real images (with their region descriptions, if any) to describe, by request index.

    `path` is a shard set (a directory with a manifest, a manifest or a glob: e.g. Visual Genome converted by
    convert.py, whose region phrases and image ids come along) or a folder of image files. Request i takes seed
    i modulo the set's size; a request without an index (on-the-fly training) takes a seed drawn from its seed.
    """

    def __init__(self, path: str):
        self.path = path
        self._index: list[tuple[str, str, int, int, int, int]] | list[Path] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_index": None}

    def load(self) -> list:
        """The index of the seed images (tar member offsets, or file paths), built once."""
        if self._index is None:
            folder = Path(self.path)
            try:
                if folder.is_dir() and not (folder / "manifest.json").exists():
                    self._index = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
                else:
                    self._index = [entry for shard in resolve_shards(self.path) for entry in _shard_members(shard)]
            except (FileNotFoundError, ValueError) as error:
                raise FileNotFoundError(
                    f"seed images {self.path!r}: {error}. Convert a dataset first (python convert.py "
                    "dataset=visual_genome) or point seed_images.path at a folder of images"
                ) from error
            if not self._index:
                raise FileNotFoundError(f"seed images {self.path!r}: no image found (give a shard set or a folder of images)")
        return self._index

    def __len__(self) -> int:
        return len(self.load())

    def fetch(self, requests: Sequence[GenerationRequest], clock: StageClock) -> list[GroundingSample | None]:
        """The seed of each request (its own image if it carries one); None, counted, where the seed is unreadable."""
        seeds = []
        for request in requests:
            try:
                seeds.append(
                    self.get(request) if request.image is None else GroundingSample(request.key, request.image, "", [], "seed")
                )
            except (OSError, ValueError, SyntaxError) as error:
                log.warning("request %s: seed image skipped: %s", request.key, error)
                clock.events["unreadable_seed_image"] += 1
                seeds.append(None)
        return seeds

    def get(self, request: GenerationRequest) -> GroundingSample:
        entries = self.load()
        position = request.index if request.index is not None else random.Random(request.seed).randrange(len(entries))
        entry = entries[position % len(entries)]
        if isinstance(entry, Path):
            image = Image.open(entry)
            image.load()
            return GroundingSample(entry.stem, image.convert("RGB"), "", [], "seed", {"image_ids": [f"file:{entry.name}"]})
        shard, key, jpg_offset, jpg_size, json_offset, json_size = entry
        with open(shard, "rb") as file:
            file.seek(jpg_offset)
            jpeg = file.read(jpg_size)
            file.seek(json_offset)
            record = file.read(json_size)
        try:
            image = Image.open(io.BytesIO(jpeg))
            image.load()
        except (OSError, SyntaxError) as error:
            raise ValueError(f"shard {shard}, sample {key!r}: unreadable image ({error})") from error
        return sample_from_metadata(key, image.convert("RGB"), record)


def _shard_members(shard: str) -> list[tuple[str, str, int, int, int, int]]:
    """(shard, key, jpg offset, size, json offset, size) of every sample: read later without scanning the tar."""
    found: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(shard) as tar:
        for member in tar:
            key, _, extension = member.name.partition(".")
            found.setdefault(key, {})[extension] = (member.offset_data, member.size)
    return [(shard, key, *parts["jpg"], *parts["json"]) for key, parts in found.items() if "jpg" in parts and "json" in parts]


def _seed_provenance(seed: GroundingSample) -> dict[str, Any]:
    # image ids let the leakage check match synthetic samples to the real image their description came from
    return {"seed_key": seed.key, "image_ids": list(seed.provenance.get("image_ids", []))}


class Image2Text(LazyModels):
    """Detailed captions of real seed images by a vision-language model (LLaVA-1.5 by default)."""

    needs_seed_images = True

    def __init__(
        self,
        seed_images: SeedImages,
        model_id: str = "llava-hf/llava-1.5-7b-hf",
        revision: str | None = None,
        prompt: str = "USER: <image>\nDescribe this image in detail. ASSISTANT:",
        max_new_tokens: int = 160,
        device: str = "auto",
        dtype: str = "float16",
        batch_size: int = 8,
    ):
        self.seed_images, self.model_id, self.revision = seed_images, model_id, revision
        self.prompt, self.max_new_tokens = prompt, max_new_tokens
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self._loaded: tuple[Any, Any] | None = None

    def load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            device = resolve_device(self.device)
            processor = load_pretrained(AutoProcessor, self.model_id, self.revision)
            dtype = model_dtype(self.dtype, device)
            model = load_pretrained(LlavaForConditionalGeneration, self.model_id, self.revision, dtype=dtype).to(device).eval()
            self._loaded = (processor, model)
        return self._loaded

    def describe(self, requests: Sequence[GenerationRequest], clock: StageClock) -> list[Description | None]:
        seeds = self.seed_images.fetch(requests, clock)
        found = iter(run_batched(self._caption, [s.image for s in seeds if s is not None], self.batch_size, clock, "describe"))
        captions = [next(found) if seed is not None else None for seed in seeds]
        provenance = model_provenance(
            self.model_id,
            self.revision,
            self._loaded and self._loaded[1],
            prompt_version=prompt_version(self.prompt),
            max_new_tokens=self.max_new_tokens,
        )
        return [
            Description(caption.strip(), {"source": "image2text", **provenance, **_seed_provenance(seed)})
            if caption and caption.strip()
            else OUT_OF_MEMORY
            if caption is OUT_OF_MEMORY
            else None
            for caption, seed in zip(captions, seeds)
        ]

    @torch.inference_mode()
    def _caption(self, images: Sequence[Image.Image]) -> list[str]:
        processor, model = self.load()
        processor.tokenizer.padding_side = "left"
        inputs = processor(images=list(images), text=[self.prompt] * len(images), return_tensors="pt", padding=True)
        inputs = move_to(dict(inputs), model.device, model.dtype)
        output = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


class RegionConcat:
    """A seed image's region descriptions joined into one description (a paper baseline; no model)."""

    needs_seed_images = True

    def __init__(self, seed_images: SeedImages, max_regions: int = 10):
        self.seed_images, self.max_regions = seed_images, max_regions

    def describe(self, requests: Sequence[GenerationRequest], clock: StageClock) -> list[Description | None]:
        with clock.stage("describe", len(requests)):
            seeds = self.seed_images.fetch(requests, clock)
        return [
            Description(
                ". ".join(_region_phrases(seed, self.max_regions)) + ".",
                {"source": "region_concat", "max_regions": self.max_regions, **_seed_provenance(seed)},
            )
            if seed is not None and seed.regions
            else None
            for seed in seeds
        ]


def _region_phrases(seed: GroundingSample, limit: int) -> list[str]:
    phrases = list(dict.fromkeys(region.phrase.strip() for region in seed.regions if region.phrase.strip()))
    return phrases[:limit]


class RegionSummary:
    """An LLM's summary of a seed image's region descriptions (a paper baseline)."""

    needs_seed_images = True

    def __init__(
        self,
        seed_images: SeedImages,
        llm: LanguageModel,
        max_regions: int = 20,
        prompt: str = (
            "USER: These phrases describe regions of one photo:\n{regions}\nWrite one detailed "
            "description of the photo. ASSISTANT:"
        ),
    ):
        self.seed_images, self.llm, self.max_regions, self.prompt = seed_images, llm, max_regions, prompt

    @property
    def uses_cuda(self) -> bool:
        return self.llm.uses_cuda

    def describe(self, requests: Sequence[GenerationRequest], clock: StageClock) -> list[Description | None]:
        seeds = [seed if seed is not None and seed.regions else None for seed in self.seed_images.fetch(requests, clock)]
        prompts = [self.prompt.format(regions="\n".join(_region_phrases(seed, self.max_regions))) for seed in seeds if seed]
        found = iter(self.llm.complete_all(prompts, [r.seed for r, seed in zip(requests, seeds) if seed], clock, "describe"))
        texts = [next(found) if seed else None for seed in seeds]
        provenance = {"source": "region_summary", "llm": self.llm.provenance, "prompt_version": prompt_version(self.prompt)}
        return [
            Description(text.strip(), {**provenance, **_seed_provenance(seed)})
            if text and text.strip()
            else OUT_OF_MEMORY
            if text is OUT_OF_MEMORY
            else None
            for text, seed in zip(texts, seeds)
        ]


class Concept2Text:
    """An LLM writes a description from concepts drawn per request from a vocabulary; no real image is involved."""

    needs_seed_images = False

    def __init__(
        self,
        llm: LanguageModel,
        concepts: Sequence[str] | str,
        concepts_per_description: tuple[int, int] = (2, 4),
        prompt: str = ("USER: Write a detailed description of a realistic photo that shows: {concepts}. ASSISTANT:"),
        do_sample: bool = True,
    ):
        # sampled by default: greedy decoding would give one description per concept combination
        self.llm, self.prompt, self.do_sample = llm, prompt, do_sample
        self.concepts = _read_concepts(concepts)
        low, high = concepts_per_description
        if not 1 <= low <= high <= len(self.concepts):
            raise ValueError(
                f"concepts_per_description {concepts_per_description} must satisfy 1 <= low <= high <= "
                f"{len(self.concepts)} (the number of concepts)"
            )
        self.concepts_per_description = (low, high)

    @property
    def uses_cuda(self) -> bool:
        return self.llm.uses_cuda

    def concepts_for(self, request: GenerationRequest) -> list[str]:
        if request.concepts:
            return list(request.concepts)
        rng = random.Random(request.seed)
        return rng.sample(self.concepts, rng.randint(*self.concepts_per_description))

    def describe(self, requests: Sequence[GenerationRequest], clock: StageClock) -> list[Description | None]:
        chosen = [self.concepts_for(request) for request in requests]
        prompts = [self.prompt.format(concepts=", ".join(concepts)) for concepts in chosen]
        texts = self.llm.complete_all(prompts, [request.seed for request in requests], clock, "describe", self.do_sample)
        provenance = {
            "source": "concept2text",
            "llm": self.llm.provenance,
            "prompt_version": prompt_version(self.prompt),
            "do_sample": self.do_sample,
        }
        return [
            Description(text.strip(), {**provenance, "concepts": concepts})
            if text and text.strip()
            else OUT_OF_MEMORY
            if text is OUT_OF_MEMORY
            else None
            for text, concepts in zip(texts, chosen)
        ]


def _read_concepts(concepts: Sequence[str] | str) -> list[str]:
    if isinstance(concepts, str):
        path = Path(concepts)
        if not path.exists():
            raise FileNotFoundError(f"concept file {path} does not exist (one concept per line, or give a list)")
        concepts = path.read_text().splitlines()
    found = list(dict.fromkeys(c.strip() for c in concepts if c.strip()))
    if not found:
        raise ValueError("no concepts given: Concept2Text needs at least one")
    return found
