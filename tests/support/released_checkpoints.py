"""Weight files in the released models' own formats, written by tests and by the dry run of the paper.

ALBEF's key layout is spelled out here from salesforce/ALBEF's module names, not taken from our model, so a test
that loads it checks our names against theirs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from synground.models.albef_network import AlbefConfig


def released_albef_shapes(c: AlbefConfig, grid: int, bert: str = "text_encoder.bert.", queue: int = 8) -> dict[str, tuple]:
    """Every entry of a released ALBEF state dict, named as salesforce/ALBEF's modules name them (not by our code).

    `bert` is "text_encoder.bert." in ALBEF.pth (BertForMaskedLM) and "text_encoder." in refcoco.pth (BertModel).
    """
    shapes: dict[str, tuple] = {}
    v, t, e = c.vision_width, c.text_width, c.embed_dim

    def linear(name, out, inp):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (out, inp), (out,)

    def norm(name, width):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (width,), (width,)

    shapes["visual_encoder.cls_token"] = (1, 1, v)
    shapes["visual_encoder.pos_embed"] = (1, 1 + grid * grid, v)
    shapes["visual_encoder.patch_embed.proj.weight"] = (v, 3, c.patch_size, c.patch_size)
    shapes["visual_encoder.patch_embed.proj.bias"] = (v,)
    for i in range(c.vision_layers):
        block = f"visual_encoder.blocks.{i}"
        norm(f"{block}.norm1", v), linear(f"{block}.attn.qkv", 3 * v, v), linear(f"{block}.attn.proj", v, v)
        (
            norm(f"{block}.norm2", v),
            linear(f"{block}.mlp.fc1", c.vision_mlp_width, v),
            linear(f"{block}.mlp.fc2", v, c.vision_mlp_width),
        )
    norm("visual_encoder.norm", v)
    shapes[f"{bert}embeddings.position_ids"] = (1, c.max_positions)
    shapes[f"{bert}embeddings.word_embeddings.weight"] = (c.vocab_size, t)
    shapes[f"{bert}embeddings.position_embeddings.weight"] = (c.max_positions, t)
    shapes[f"{bert}embeddings.token_type_embeddings.weight"] = (2, t)
    norm(f"{bert}embeddings.LayerNorm", t)
    for i in range(c.text_layers):
        layer = f"{bert}encoder.layer.{i}"
        for part, key_width in [("attention", t)] + ([("crossattention", v)] if i >= c.fusion_layer else []):
            linear(f"{layer}.{part}.self.query", t, t), linear(f"{layer}.{part}.self.key", t, key_width)
            linear(f"{layer}.{part}.self.value", t, key_width), linear(f"{layer}.{part}.output.dense", t, t)
            norm(f"{layer}.{part}.output.LayerNorm", t)
        ffn = c.text_intermediate_width
        (
            linear(f"{layer}.intermediate.dense", ffn, t),
            linear(f"{layer}.output.dense", t, ffn),
            norm(f"{layer}.output.LayerNorm", t),
        )
    linear("vision_proj", e, v), linear("text_proj", e, t), linear("itm_head", 2, t)
    shapes["temp"] = ()
    if bert == "text_encoder.bert.":  # the pretraining checkpoint keeps its masked-language-model head
        linear("text_encoder.cls.predictions.transform.dense", t, t), norm("text_encoder.cls.predictions.transform.LayerNorm", t)
        shapes["text_encoder.cls.predictions.decoder.weight"], shapes["text_encoder.cls.predictions.bias"] = (
            (c.vocab_size, t),
            (c.vocab_size,),
        )
    for key in list(shapes):  # momentum encoders and projections
        module, _, rest = key.partition(".")
        if module in ("visual_encoder", "text_encoder", "vision_proj", "text_proj"):
            shapes[f"{module}_m.{rest}"] = shapes[key]
    shapes.update({"image_queue": (e, queue), "text_queue": (e, queue), "idx_queue": (1, queue), "queue_ptr": (1,)})
    return shapes


def random_state_dict(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        key: torch.zeros(shape, dtype=torch.long)
        if key.endswith(("position_ids", "queue_ptr", "idx_queue"))
        else torch.randn(shape, generator=generator)
        for key, shape in shapes.items()
    }


def bert_vocabulary(words: list[str], size: int = 30522) -> list[str]:
    """A vocabulary laid out like bert-base-uncased's ([PAD], [unused0-98], [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103,
    then words), holding `words`, every letter and digit alone and as a ##continuation, padded to `size` tokens."""
    pieces = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,;:!?'\"-()")
    tokens = ["[PAD]", *[f"[unused{i}]" for i in range(99)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [t for t in dict.fromkeys([*pieces, *(f"##{p}" for p in pieces), *(w.lower() for w in words)]) if t not in tokens]
    if len(tokens) > size:
        raise ValueError(f"{len(tokens)} tokens do not fit a vocabulary of {size}")
    return tokens + [f"[unused{i}]" for i in range(99, 99 + size - len(tokens))]


def save_released_albef(model, path: Path, queue: int = 65536) -> None:
    """Our ALBEF's weights as ALBEF's pretraining saved them (ALBEF.pth): {"model", "config", "epoch"}, the text encoder
    under text_encoder.bert.*, with momentum copies, queues and the masked-language-model head."""
    ours = model.state_dict()
    shapes = released_albef_shapes(model.config, grid=model.config.image_size // model.config.patch_size, queue=queue)
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes.items():
        module, dot, rest = key.partition(".")
        own = f"{module.removesuffix('_m')}{dot}{rest}".replace("text_encoder.bert.", "text_encoder.", 1)
        if own in ours:  # a momentum encoder starts as a copy of its encoder, as in ALBEF
            state[key] = ours[own].clone()
        elif key.endswith(("position_ids", "queue_ptr", "idx_queue")):
            state[key] = torch.zeros(shape, dtype=torch.long)
        else:
            state[key] = 0.02 * torch.randn(shape, generator=generator)
    missing = [key for key in ours if key.replace("text_encoder.", "text_encoder.bert.", 1) not in state]
    if missing:
        raise ValueError(f"ALBEF's released layout has no place for {missing[:8]}")
    config = {"image_res": model.config.image_size, "embed_dim": model.config.embed_dim, "queue_size": queue, "temp": 0.07}
    torch.save({"model": state, "config": config, "epoch": 29}, path)
