"""Fault injections for the generation pipeline: a request lost to a fault is counted once, under the fault's name."""

from __future__ import annotations

import pytest
import torch

from synground.data.schema import GenerationRequest
from synground.generation.descriptions import Concept2Text
from synground.generation.detection import OpenVocabularyDetector
from synground.generation.llm import LanguageModel
from synground.generation.phrases import PROMPTS, PhraseExtractor
from synground.generation.pipeline import SynGroundGenerator
from synground.generation.runtime import StageClock
from synground.generation.text_to_image import StableDiffusion
from synground.generation.tiny import WORDS

OUT_OF_MEMORY = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")


@pytest.fixture
def tiny_llm(tiny_components) -> LanguageModel:
    return LanguageModel(tiny_components["llm"], device="cpu", dtype="float32", max_new_tokens=8, batch_size=4)


def failing_on(llm: LanguageModel, monkeypatch, kind: str | None) -> None:
    """The LLM runs out of memory on every prompt of `kind` (every prompt when None); the others run for real."""
    real = LanguageModel.complete
    marker = None if kind is None else PROMPTS[kind].split("{description}")[0]

    def complete(self, prompts, seed, do_sample=None):
        if marker is None or any(prompt.startswith(marker) for prompt in prompts):
            raise OUT_OF_MEMORY
        return real(self, prompts, seed, do_sample)

    monkeypatch.setattr(LanguageModel, "complete", complete)


@pytest.mark.parametrize("style,failing", [("short", "short"), ("both", "long"), ("both", "short")])
def test_an_llm_out_of_memory_is_counted_once_not_again_as_no_phrases(tiny_llm, monkeypatch, style, failing):
    failing_on(tiny_llm, monkeypatch, failing)
    clock = StageClock()
    found = PhraseExtractor(tiny_llm, style=style).extract(["a red dog on the grass", "a blue car"], [1, 2], clock)
    assert found == [None, None]  # a style of both kinds has lost one of them: the request is dropped
    assert clock.rejections == {"out_of_memory": 2}


def test_a_description_lost_to_memory_is_not_counted_again_as_no_description(tiny_components, tiny_llm, monkeypatch):
    failing_on(tiny_llm, monkeypatch, None)
    generator = SynGroundGenerator(
        Concept2Text(tiny_llm, WORDS[11:30]),
        StableDiffusion(tiny_components["stable_diffusion"], steps=2, height=64, width=64, device="cpu", dtype="float32"),
        PhraseExtractor(tiny_llm),
        OpenVocabularyDetector(tiny_components["grounding_dino"], device="cpu"),
    )
    requests = [GenerationRequest(key=f"r{i}", seed=i) for i in range(3)]
    assert generator.generate(requests) == []
    assert generator.clock.rejections == {"out_of_memory": 3}
