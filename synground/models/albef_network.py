"""ALBEF's network (Li et al., NeurIPS 2021): a ViT-B/16 image encoder and a BERT text encoder whose upper layers
cross-attend to the image, with module names as in the released checkpoints so their state dicts load unchanged.
The grounding model around it (ITM head, ITC projections, Grad-CAM, loading the released files) is albef.py.

Attention is fused (`scaled_dot_product_attention`) in the vision encoder and the text layers up to the Grad-CAM
layer. The cross-attention Grad-CAM reads and every attention above it run eagerly: the first returns its
probabilities, and the AMC loss differentiates through the backward of the layers above it (create_graph), which
the fused kernels (flash, memory-efficient, the CPU flash kernel) cannot do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from synground.models.checkpoints import CheckpointError, resize_position_embedding


@dataclass
class AlbefConfig:
    image_size: int = 256
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_mlp_width: int = 3072
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_intermediate_width: int = 3072
    fusion_layer: int = 6  # layers before it read text only; it and later ones cross-attend to the image
    vocab_size: int = 30522
    max_positions: int = 512
    embed_dim: int = 256  # of the contrastive projections
    dropout: float = 0.1  # BERT's hidden and attention dropout (the ViT has none)
    initializer_range: float = 0.02

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], name: str = "the state dict", **settings) -> AlbefConfig:
        """Every size a released state dict (our key style) determines; heads are width / 64, as in ViT and BERT."""

        def shape(key: str) -> torch.Size:
            if key not in state_dict:
                raise CheckpointError(f"{name} is not an ALBEF state dict: it has no {key}")
            return state_dict[key].shape

        def count(prefix: str) -> int:
            return len({key[len(prefix) :].split(".")[0] for key in state_dict if key.startswith(prefix)})

        vision_width = shape("visual_encoder.cls_token")[-1]
        vocab_size, text_width = shape("text_encoder.embeddings.word_embeddings.weight")
        text_layers = count("text_encoder.encoder.layer.")
        fusion_layer = next(
            (i for i in range(text_layers) if f"text_encoder.encoder.layer.{i}.crossattention.self.query.weight" in state_dict),
            text_layers,
        )
        sizes = dict(
            patch_size=shape("visual_encoder.patch_embed.proj.weight")[-1],
            vision_width=vision_width,
            vision_layers=count("visual_encoder.blocks."),
            vision_heads=vision_width // 64,
            vision_mlp_width=shape("visual_encoder.blocks.0.mlp.fc1.weight")[0],
            text_width=text_width,
            text_layers=text_layers,
            text_heads=text_width // 64,
            fusion_layer=fusion_layer,
            text_intermediate_width=shape("text_encoder.encoder.layer.0.intermediate.dense.weight")[0],
            vocab_size=vocab_size,
            max_positions=shape("text_encoder.embeddings.position_embeddings.weight")[0],
            embed_dim=shape("vision_proj.weight")[0],
        )
        return cls(**{**sizes, **settings})


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, L] 1/0 -> [B, 1, 1, L] with 0 for real keys and the most negative number for padding."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)  # [B, L, D] -> [B, heads, L, D / heads]


class MultiHeadAttention(nn.Module):
    """BERT's query/key/value attention, fused unless `eager`.

    Eager attention (matmul, softmax, matmul) returns its probabilities, for Grad-CAM, and has a double backward,
    for the layers the AMC loss differentiates through; the fused kernels have neither.
    """

    def __init__(self, width: int, heads: int, key_width: int, dropout: float):
        super().__init__()
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(key_width, width)
        self.value = nn.Linear(key_width, width)
        self.heads, self.dropout = heads, dropout
        self.eager = False

    def forward(
        self, hidden: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k, v = (split_heads(x, self.heads) for x in (self.query(hidden), self.key(context), self.value(context)))
        dropout = self.dropout if self.training else 0.0
        if not self.eager:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
            return out.transpose(1, 2).flatten(2), None
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        probs = (scores if mask is None else scores + mask).softmax(dim=-1)
        out = F.dropout(probs, dropout, self.training) @ v
        return out.transpose(1, 2).flatten(2), probs


class ResidualOutput(nn.Module):
    """LayerNorm(dropout(dense(x)) + residual), BERT's output of every sub-layer."""

    def __init__(self, in_width: int, width: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(in_width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, width: int, heads: int, key_width: int, dropout: float):
        super().__init__()
        self.self = MultiHeadAttention(width, heads, key_width, dropout)
        self.output = ResidualOutput(width, width, dropout)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out, _ = self.self(hidden, context, mask)  # a forward hook on .self can read the probabilities
        return self.output(out, hidden)


class Intermediate(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.dense = nn.Linear(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, config: AlbefConfig, cross_attention: bool):
        super().__init__()
        width, heads, dropout = config.text_width, config.text_heads, config.dropout
        self.attention = BertAttention(width, heads, width, dropout)
        self.crossattention = BertAttention(width, heads, config.vision_width, dropout) if cross_attention else None
        self.intermediate = Intermediate(width, config.text_intermediate_width)
        self.output = ResidualOutput(config.text_intermediate_width, width, dropout)

    def forward(self, hidden: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.attention(hidden, hidden, text_mask)
        if self.crossattention is not None:
            hidden = self.crossattention(hidden, image, None)  # every image token is real
        return self.output(self.intermediate(hidden), hidden)


class BertEmbeddings(nn.Module):
    def __init__(self, config: AlbefConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.text_width)
        self.position_embeddings = nn.Embedding(config.max_positions, config.text_width)
        self.token_type_embeddings = nn.Embedding(2, config.text_width)
        self.LayerNorm = nn.LayerNorm(config.text_width, eps=1e-12)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x))


class BertEncoder(nn.Module):
    def __init__(self, config: AlbefConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config, cross_attention=i >= config.fusion_layer) for i in range(config.text_layers))


class FusionBert(nn.Module):
    """BERT whose first `fusion_layer` layers encode the text alone and whose later layers cross-attend to the image."""

    def __init__(self, config: AlbefConfig):
        super().__init__()
        self.fusion_layer = config.fusion_layer
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embeddings(input_ids)
        mask = additive_mask(attention_mask, hidden.dtype)
        for layer in self.encoder.layer[: self.fusion_layer]:
            hidden = layer(hidden, mask)
        return hidden

    def fuse(self, text_embeds: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        hidden, mask = text_embeds, additive_mask(attention_mask, text_embeds.dtype)
        for layer in self.encoder.layer[self.fusion_layer :]:
            hidden = layer(hidden, mask, image_embeds)
        return hidden


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class VisionAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = VisionAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, mlp_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, config: AlbefConfig):
        super().__init__()
        width = config.vision_width
        self.grid = config.image_size // config.patch_size
        self.patch_embed = PatchEmbed(config.patch_size, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, width))
        self.blocks = nn.ModuleList(
            Block(width, config.vision_heads, config.vision_mlp_width) for _ in range(config.vision_layers)
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        grid = math.isqrt(x.shape[1])  # other input sizes than the trained one: positions resized as when loading
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + resize_position_embedding(self.pos_embed, grid)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
