"""The parts of the pipeline that must survive what models say and do: LLM answers, out-of-memory batches."""

import pytest
import torch

from synground.generation.layout import parse_layout
from synground.generation.phrases import parse_phrases
from synground.generation.runtime import OUT_OF_MEMORY, StageClock, run_batched


def test_phrases_are_parsed_from_numbered_bulleted_and_inline_lists():
    answer = (
        '1. A red dog\n2) the tall tree;  "a blue car"\n- grass, sky\n* Sure! Here are the objects in the photo of a park:\n3.'
    )
    assert parse_phrases(answer, max_words=4) == ["a red dog", "the tall tree", "a blue car", "grass", "sky"]


def test_an_answer_without_phrases_parses_to_nothing():
    assert parse_phrases("", 4) == [] and parse_phrases("1.\n2.\n- \n; ,", 4) == []
    assert parse_phrases("12 34", 4) == []  # no letters: not a phrase


def test_layouts_keep_well_formed_boxes_only():
    answer = (
        "1. a red dog: 0.1 0.2 0.5 0.9\n"
        "the tree - [0.6, 0.0, 1.0, 0.8]\n"
        "a car: 0.5 0.5 0.4 0.9\n"  # x0 > x1
        "sky: 0 0 1.5 1\n"  # outside the image
        "nothing here"
    )
    assert parse_layout(answer, max_objects=5) == [("a red dog", [0.1, 0.2, 0.5, 0.9]), ("the tree", [0.6, 0.0, 1.0, 0.8])]
    assert len(parse_layout(answer, max_objects=1)) == 1


def test_an_out_of_memory_batch_is_retried_at_half_size_then_skipped():
    calls = []

    def stage(batch):
        calls.append(len(batch))
        if len(batch) > 2 or 13 in batch:  # batches over 2 items do not fit; item 13 never fits
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [item * 10 for item in batch]

    clock = StageClock()
    results = run_batched(stage, list(range(10, 18)), batch_size=4, clock=clock, stage="text_to_image")
    assert results == [100, 110, OUT_OF_MEMORY, OUT_OF_MEMORY, 140, 150, 160, 170]  # 12 shared the failing half with 13
    assert calls == [4, 2, 2, 4, 2, 2]
    assert clock.rejections == {"out_of_memory": 2} and clock.events == {"text_to_image/out_of_memory_retry": 2}
    assert clock.items["text_to_image"] == 6


def test_other_errors_are_not_mistaken_for_out_of_memory():
    def broken(batch):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_batched(broken, [1, 2], 2, StageClock(), "detect")


def test_seeded_completions_repeat_and_leave_the_callers_random_state_alone(tmp_path):
    from synground.generation.llm import LanguageModel
    from synground.generation.tiny import _llm

    _llm(tmp_path / "llm")
    model = LanguageModel(str(tmp_path / "llm"), device="cpu", max_new_tokens=8, do_sample=True)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    first = model.complete(["USER: a red dog ASSISTANT:"] * 2, seed=7)
    assert torch.equal(torch.rand(3), before)  # the caller's stream continues as if nothing had run
    assert model.complete(["USER: a red dog ASSISTANT:"] * 2, seed=7) == first


def test_a_paraphrase_is_the_first_line_of_the_answer_cleaned():
    from synground.generation.paraphrases import parse_paraphrase

    assert parse_paraphrase('\n  1. "The red Automobile."\nanything else', 6) == "the red automobile"
    assert parse_paraphrase("New phrase: a small  hound", 6) == "a small hound"
    assert parse_paraphrase("- a hound", 6) == "a hound"
    assert parse_paraphrase("a hound sitting on the grass in the park", 6) == ""  # longer than max_words
    assert parse_paraphrase("", 6) == "" and parse_paraphrase("42", 6) == ""


class Scripted:
    """An LLM stand-in whose answer to each prompt is given by the phrase it asks about."""

    def __init__(self, answers: dict[str, str]):
        self.answers, self.asked = answers, []

    def complete_parsed(self, prompts, seeds, parse, clock, stage, reject_lost=True):
        self.asked.append((list(prompts), list(seeds), reject_lost))
        return [parse(self.answers[prompt.split("Phrase: ")[1].split(" ASSISTANT")[0]]) for prompt in prompts]


def test_paraphrases_that_repeat_the_phrase_or_run_long_are_dropped_and_counted():
    from synground.generation.paraphrases import Paraphraser

    llm = Scripted({"a dog": "A hound", "the red car": "the red car", "a tree": "a tall green tree in a big park"})
    clock = StageClock()
    found = Paraphraser(llm, extra_words=3).paraphrase(["a dog", "the red car", "a tree"], [5, 5, 6], clock)
    assert found == ["a hound", None, None]
    assert clock.events["no_paraphrase"] == 2 and not clock.rejections
    assert llm.asked[0][1] == [5, 5, 6] and llm.asked[0][2] is False  # memory running out drops no sample
    with pytest.raises(ValueError, match=r"must contain \{phrase\}"):
        Paraphraser(llm, prompt="Rewrite it")


def test_a_paraphrase_batch_that_runs_out_of_memory_keeps_its_samples():
    def out_of_memory(batch):
        raise torch.OutOfMemoryError("CUDA out of memory")

    clock = StageClock()
    results = run_batched(out_of_memory, ["a", "b"], 2, clock, "paraphrases", reject_lost=False)
    assert results == [OUT_OF_MEMORY, OUT_OF_MEMORY]
    assert not clock.rejections and clock.events["paraphrases/out_of_memory"] == 2
