"""Noun phrases extracted from a description by a causal LM, with forgiving parsing of its answer."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from synground.generation.llm import LanguageModel
from synground.generation.runtime import OUT_OF_MEMORY, Rejected, StageClock, prompt_version

PROMPTS = {
    "short": (
        "USER: List the objects in this description as short noun phrases of at most four words, one per "
        "line.\nDescription: {description} ASSISTANT:"
    ),
    "long": (
        "USER: List the objects in this description as referring expressions that tell each object apart "
        "(its attributes and where it is), one per line.\nDescription: {description} ASSISTANT:"
    ),
}
STYLES = ("short", "long", "both")  # the paper: short phrases make better triplets, mixing adds nothing
BULLET = re.compile(r"^\s*(?:[-*•]+|\d+\s*[.):]|\(\d+\))\s*")


def parse_phrases(answer: str, max_words: int) -> list[str]:
    """Phrases from a list-like answer: lines, or items separated by ';' or ','; bullets, numbers, quotes removed."""
    phrases = []
    for line in answer.splitlines():
        for item in re.split(r"[;,]", BULLET.sub("", line)):
            phrase = BULLET.sub("", item).strip(" \t\"'`.:").lower()
            phrase = re.sub(r"\s+", " ", phrase)
            if phrase and len(phrase.split()) <= max_words and any(character.isalpha() for character in phrase):
                phrases.append(phrase)
    return list(dict.fromkeys(phrases))


class PhraseExtractor:
    """`style` short, long or both (both prompts, phrases merged). An answer with no phrase is asked again once with
    sampling; if it still has none the description is skipped and counted as `no_phrases`."""

    def __init__(
        self,
        llm: LanguageModel,
        style: str = "short",
        prompts: dict[str, str] | None = None,
        max_phrases: int = 8,
        max_words: dict[str, int] | None = None,
    ):
        if style not in STYLES:
            raise ValueError(f"unknown phrase style {style!r}; choose one of {STYLES}")
        self.llm, self.style, self.max_phrases = llm, style, max_phrases
        self.prompts = {**PROMPTS, **(prompts or {})}
        self.max_words = {"short": 4, "long": 16, **(max_words or {})}

    @property
    def uses_cuda(self) -> bool:
        return self.llm.uses_cuda

    @property
    def provenance(self) -> dict[str, Any]:
        kinds = ("short", "long") if self.style == "both" else (self.style,)
        return {
            "llm": self.llm.provenance,
            "style": self.style,
            "max_phrases": self.max_phrases,
            "prompt_versions": {kind: prompt_version(self.prompts[kind]) for kind in kinds},
        }

    def extract(
        self, descriptions: Sequence[str], seeds: Sequence[int], clock: StageClock, candidates: Sequence[Rejected] | None = None
    ) -> list[list[str] | None]:
        """The phrases of each description; None for one without (`candidates`: what each description's request is,
        kept by `clock` when it has none)."""
        kinds = ("short", "long") if self.style == "both" else (self.style,)
        found: list[list[str]] = [[] for _ in descriptions]
        lost = [False] * len(descriptions)  # to memory in any kind's request: counted once, there
        for kind in kinds:
            for index, new in enumerate(self._ask(kind, descriptions, seeds, clock)):
                if new is OUT_OF_MEMORY:
                    lost[index] = True
                else:
                    found[index] += [phrase for phrase in new if phrase not in found[index]]
        results: list[list[str] | None] = []
        for phrases, gone, candidate in zip(found, lost, candidates or [None] * len(found)):
            if not phrases and not gone:
                clock.reject("no_phrases", candidate=candidate)
            results.append(None if gone else phrases[: self.max_phrases] or None)
        return results

    def _ask(self, kind: str, descriptions: Sequence[str], seeds: Sequence[int], clock: StageClock) -> list[list[str]]:
        prompts = [self.prompts[kind].format(description=text) for text in descriptions]
        return self.llm.complete_parsed(
            prompts, seeds, lambda answer: parse_phrases(answer, self.max_words[kind]), clock, "phrases"
        )
