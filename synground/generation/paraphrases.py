"""Paraphrases for SelfEQ: each phrase with its object noun replaced by a synonym, written by a causal LM (Vicuna in
the SelfEQ paper; the prompt below is ours, as the paper's own is not published with its code)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from typing import Any

from synground.data.schema import GroundingSample, add_paraphrases
from synground.generation.llm import LanguageModel
from synground.generation.runtime import OUT_OF_MEMORY, StageClock, prompt_version

PROMPT = (
    "USER: Rewrite the phrase with its object noun replaced by a synonym, keeping every other word. Answer with the "
    "new phrase only.\nPhrase: {phrase} ASSISTANT:"
)
LEAD = re.compile(r"^\s*(?:[-*•]+|\d+\s*[.):]|(?:new )?phrase\s*:)\s*", re.IGNORECASE)


def parse_paraphrase(answer: str, max_words: int) -> str:
    """The answer's first non-empty line, a leading bullet, number or "Phrase:" and quotes removed, lower case and
    single-spaced; "" when that is empty, longer than `max_words` or has no letter."""
    for line in answer.splitlines():
        text = re.sub(r"\s+", " ", LEAD.sub("", line).strip(" \t\"'`.")).lower()
        if text:
            return text if len(text.split()) <= max_words and any(c.isalpha() for c in text) else ""
    return ""


class Paraphraser:
    """Asks the LM for a paraphrase of each phrase. An answer that parses to nothing is asked again once with sampling
    (counted as `paraphrases_retried`); one that is still empty or only repeats the phrase leaves the region without a
    paraphrase, counted as `no_paraphrase`: the sample is kept, and SelfEQ skips that region (training counts it).
    `extra_words`: how many words longer than its phrase a paraphrase may be."""

    def __init__(self, llm: LanguageModel, prompt: str = PROMPT, extra_words: int = 3):
        if "{phrase}" not in prompt:
            raise ValueError("the paraphrase prompt must contain {phrase}, where each phrase goes")
        self.llm, self.prompt, self.extra_words = llm, prompt, extra_words

    @property
    def uses_cuda(self) -> bool:
        return self.llm.uses_cuda

    @property
    def provenance(self) -> dict[str, Any]:
        return {"llm": self.llm.provenance, "prompt_version": prompt_version(self.prompt)}

    def paraphrase(self, phrases: Sequence[str], seeds: Sequence[int], clock: StageClock) -> list[str | None]:
        """A paraphrase for each phrase, or None: counted as `no_paraphrase`, or where memory ran out as the event
        `paraphrases/out_of_memory`."""
        if not phrases:
            return []
        longest = max(len(phrase.split()) for phrase in phrases) + self.extra_words
        prompts = [self.prompt.format(phrase=phrase) for phrase in phrases]
        # one parse serves every answer of the batch, so it bounds by the longest phrase (an answer beyond any bound is
        # asked again); each answer is then held to its own phrase's bound below
        parse = lambda answer: parse_paraphrase(answer, longest)  # noqa: E731
        # a phrase whose batch runs out of memory goes without a paraphrase: its sample is kept
        answers = self.llm.complete_parsed(prompts, seeds, parse, clock, "paraphrases", reject_lost=False)
        found: list[str | None] = []
        for phrase, answer in zip(phrases, answers):
            usable = answer is not OUT_OF_MEMORY and answer and answer != phrase.lower()
            usable = usable and len(answer.split()) <= len(phrase.split()) + self.extra_words
            if not usable and answer is not OUT_OF_MEMORY:
                clock.events["no_paraphrase"] += 1
            found.append(answer if usable else None)
        return found


def paraphrase_samples(
    samples: Sequence[GroundingSample], seeds: Sequence[int], paraphraser: Paraphraser, clock: StageClock
) -> None:
    """Give every region of `samples` its paraphrase (in place; each sample's phrases asked with its seed) and record
    the paraphraser in their provenance; a sample is kept whatever its phrases get."""
    add_paraphrases(samples, seeds, partial(paraphraser.paraphrase, clock=clock))
    for sample in samples:
        sample.provenance["paraphrases"] = paraphraser.provenance
