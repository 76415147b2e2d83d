"""A causal language model that completes batches of prompts (Vicuna by default, any transformers causal LM)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from synground.generation.runtime import (
    OUT_OF_MEMORY,
    LazyModels,
    StageClock,
    load_pretrained,
    model_dtype,
    model_provenance,
    move_to,
    resolve_device,
    run_batched,
)


class LanguageModel(LazyModels):
    """Greedy or seeded sampling completions of batches of prompts."""

    def __init__(
        self,
        model_id: str = "lmsys/vicuna-7b-v1.5",
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "float16",
        max_new_tokens: int = 128,
        do_sample: bool = False,
        temperature: float = 0.7,
        top_p: float = 0.9,
        batch_size: int = 16,
    ):
        self.model_id, self.revision = model_id, revision
        self.device, self.dtype = device, dtype
        self.max_new_tokens, self.do_sample = max_new_tokens, do_sample
        self.temperature, self.top_p = temperature, top_p
        self.batch_size = batch_size
        self._loaded: tuple[Any, Any] | None = None

    def load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            device = resolve_device(self.device)
            tokenizer = load_pretrained(AutoTokenizer, self.model_id, self.revision)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            dtype = model_dtype(self.dtype, device)
            model = load_pretrained(AutoModelForCausalLM, self.model_id, self.revision, dtype=dtype).to(device).eval()
            self._loaded = (tokenizer, model)
        return self._loaded

    @property
    def provenance(self) -> dict[str, Any]:
        model = self._loaded[1] if self._loaded else None
        sampling = {"temperature": self.temperature, "top_p": self.top_p} if self.do_sample else {}
        return model_provenance(
            self.model_id, self.revision, model, max_new_tokens=self.max_new_tokens, do_sample=self.do_sample, **sampling
        )

    @torch.inference_mode()
    def complete(self, prompts: Sequence[str], seed: int, do_sample: bool | None = None) -> list[str]:
        """The completion of each prompt (the prompt itself left out). `seed` fixes sampling for this batch."""
        tokenizer, model = self.load()
        tokenizer.padding_side = "left"  # generation appends on the right: every prompt must end at the last column
        inputs = move_to(dict(tokenizer(list(prompts), return_tensors="pt", padding=True)), model.device)
        sample = self.do_sample if do_sample is None else do_sample
        settings = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p} if sample else {"do_sample": False}
        # seeded without touching the caller's random state (training draws from it when generating on the fly)
        with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
            torch.manual_seed(seed)
            output = model.generate(**inputs, max_new_tokens=self.max_new_tokens, pad_token_id=tokenizer.pad_token_id, **settings)
        return tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    def complete_all(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        clock: StageClock,
        stage: str,
        do_sample: bool | None = None,
        reject_lost: bool = True,
    ) -> list[str | None]:
        """`complete` in batches of `batch_size`, each seeded by its first request; OUT_OF_MEMORY where memory ran out
        (a rejection, or with `reject_lost` False an event: run_batched)."""
        return run_batched(
            lambda batch: self.complete([prompt for prompt, _ in batch], batch[0][1], do_sample),
            list(zip(prompts, seeds)),
            self.batch_size,
            clock,
            stage,
            reject_lost,
        )

    def complete_parsed(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        parse: Callable[[str], Any],
        clock: StageClock,
        stage: str,
        reject_lost: bool = True,
    ) -> list[Any]:
        """`parse` of each completion. An answer that parses to nothing is asked once more, sampled with seed + 1
        (counted as `<stage>_retried`); if that parses to nothing too, so be it. `reject_lost`: complete_all."""
        answers = self.complete_all(prompts, seeds, clock, stage, reject_lost=reject_lost)
        parsed = [OUT_OF_MEMORY if answer is OUT_OF_MEMORY else parse(answer or "") for answer in answers]
        retry = [i for i, found in enumerate(parsed) if not found and found is not OUT_OF_MEMORY]
        if retry:
            clock.events[f"{stage}_retried"] += len(retry)
            again = self.complete_all(
                [prompts[i] for i in retry], [seeds[i] + 1 for i in retry], clock, stage, do_sample=True, reject_lost=reject_lost
            )
            for i, answer in zip(retry, again):
                parsed[i] = OUT_OF_MEMORY if answer is OUT_OF_MEMORY else parse(answer or "")
        return parsed
