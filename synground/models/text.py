"""Text to token ids for the grounding models: BERT WordPiece, truncation counted and warned about once."""

from __future__ import annotations

import logging

import torch
from transformers import BertTokenizer, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

Tokens = dict[str, torch.Tensor]  # at least input_ids and attention_mask, [B, L]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[ENC]"]


def wordpiece_tokenizer(words: list[str]) -> BertTokenizer:
    """An in-memory BERT tokenizer over `words`, with single characters as the fallback for any other word."""
    pieces = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,;:!?'\"-()")
    vocabulary = list(dict.fromkeys(SPECIAL_TOKENS + [w.lower() for w in words] + pieces + [f"##{p}" for p in pieces]))
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(vocabulary)})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class TextTokenizer:
    """Turns texts into padded [first] + WordPiece ids (+ [SEP]) of at most `max_length` tokens.

    Longer texts are cut, never an error; the first cut of a run is logged, and `truncated` counts them all.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, first_token: str, end_with_sep: bool):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.first_id = tokenizer.convert_tokens_to_ids(first_token)
        if self.first_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {first_token} token")
        self.end_ids = [tokenizer.sep_token_id] if end_with_sep else []
        self.truncated = 0

    def __call__(self, texts: list[str], device: torch.device) -> Tokens:
        room = self.max_length - 1 - len(self.end_ids)
        rows = []
        for text in texts:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            if len(ids) > room:
                if not self.truncated:
                    log.warning(
                        "text of %d tokens cut to the model's limit of %d (warned once; see .truncated for the count): %r",
                        len(ids) + 1 + len(self.end_ids),
                        self.max_length,
                        text[:80],
                    )
                self.truncated += 1
                ids = ids[:room]
            rows.append([self.first_id, *ids, *self.end_ids])
        length = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for index, row in enumerate(rows):
            input_ids[index, : len(row)] = torch.tensor(row)
            attention_mask[index, : len(row)] = 1
        return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
