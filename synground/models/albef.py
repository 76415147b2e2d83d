"""ALBEF (Li et al., NeurIPS 2021) for grounding: ViT-B/16 + BERT fused from layer 6 (albef_network.py), the ITM head,
ITC projections and Grad-CAM, and the loading of the released checkpoints (`ALBEF.pth`, `refcoco.pth`), whose sizes
are read from the file.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertTokenizer, PreTrainedTokenizerBase

from synground.models.albef_network import AlbefConfig, FusionBert, MultiHeadAttention, VisionTransformer
from synground.models.base import GroundingModel, check_tiny_architecture
from synground.models.checkpoints import CheckpointError, check_state_dict, read_state_dict, resize_position_embedding
from synground.models.encoders import load_vision_weights
from synground.models.text import TextTokenizer, Tokens, wordpiece_tokenizer

log = logging.getLogger(__name__)

CHECKPOINT_HELP = (
    "ALBEF's weights are not on the Hugging Face Hub: download ALBEF.pth (14M), ALBEF_4M.pth or refcoco.pth "
    "from the links in github.com/salesforce/ALBEF's README and pass the local path as checkpoint=..."
)
# in the released files but not used for grounding: momentum encoders, ITC queues, the MLM head, BERT's id buffer
IGNORED_PREFIXES = (
    "visual_encoder_m.",
    "text_encoder_m.",
    "vision_proj_m.",
    "text_proj_m.",
    "image_queue",
    "text_queue",
    "idx_queue",
    "queue_ptr",
    "text_encoder.cls.",
    "text_encoder.pooler.",
    "text_encoder.embeddings.position_ids",
)


def our_key_style(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ALBEF.pth names the text encoder text_encoder.bert.* (BertForMaskedLM), refcoco.pth text_encoder.*: use the latter."""
    return {key.replace("text_encoder.bert.", "text_encoder.", 1): value for key, value in state_dict.items()}


def bert_tokenizer(source: str) -> BertTokenizer:
    """bert-base-uncased's WordPiece vocabulary from a hub id, a local tokenizer directory or a vocab.txt file."""
    how_to_get = (
        f"download it once with network access (hf download {source} vocab.txt) and pass the directory or "
        "the vocab.txt file as text_encoder=..."
    )
    if Path(source).is_file():  # transformers 5 ignores BertTokenizer(vocab_file=...): read the words ourselves
        tokens = Path(source).read_text(encoding="utf-8").splitlines()
        tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(tokens)}, do_lower_case=True)
        if len(tokenizer) != len(tokens) or len(set(tokens)) != len(tokens):
            raise OSError(
                f"{source} gives a vocabulary of {len(tokenizer)} tokens from {len(tokens)} lines: expected one "
                "distinct token per line, as in bert-base-uncased's vocab.txt"
            )
        return tokenizer
    try:
        tokenizer = BertTokenizer.from_pretrained(source)
    except OSError as error:
        raise OSError(f"cannot load the BERT vocabulary {source!r}: {how_to_get}") from error
    if len(tokenizer) <= len(tokenizer.all_special_tokens):  # transformers may return an empty vocabulary when offline
        raise OSError(f"cannot load the BERT vocabulary {source!r} (found no words): {how_to_get}")
    return tokenizer


class AlbefGroundingModel(GroundingModel):
    """ALBEF's ITM with Grad-CAM on the cross-attention of text layer `gradcam_layer` (8, the third fusion layer).

    Texts are tokenized the ALBEF way, "[CLS] text" with no [SEP], at most `max_text_length` tokens. The Grad-CAM
    map averages the per-token maps over every token as AMC's code does (`token_average="all"`); "phrase" leaves
    out [CLS].
    """

    architecture = "albef"

    def __init__(
        self,
        config: AlbefConfig,
        tokenizer: PreTrainedTokenizerBase,
        gradcam_layer: int = 8,
        max_text_length: int = 30,
        token_average: str = "all",
    ):
        super().__init__()
        if not config.fusion_layer <= gradcam_layer < config.text_layers:
            raise ValueError(
                f"gradcam_layer {gradcam_layer} has no cross-attention: use one of layers "
                f"{config.fusion_layer}..{config.text_layers - 1}"
            )
        self.config = config
        self.visual_encoder = VisionTransformer(config)
        self.text_encoder = FusionBert(config)
        self.vision_proj = nn.Linear(config.vision_width, config.embed_dim)
        self.text_proj = nn.Linear(config.text_width, config.embed_dim)
        self.itm_head = nn.Linear(config.text_width, 2)
        self.temp = nn.Parameter(torch.tensor(0.07))
        self.initialise(config.initializer_range)
        self.gradcam_layer = gradcam_layer
        self.token_average = self.check_token_average(token_average)
        self.gradcam_attention.eager = True
        for layer in self.text_encoder.encoder.layer[gradcam_layer + 1 :]:  # the AMC loss differentiates their backward
            layer.attention.self.eager = layer.crossattention.self.eager = True
        self.image_size, self.max_text_length = config.image_size, max_text_length
        self.tokenizer = tokenizer
        self.text_tokenizer = TextTokenizer(tokenizer, max_text_length, first_token="[CLS]", end_with_sep=False)

    def initialise(self, std: float) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.visual_encoder.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.visual_encoder.cls_token, std=0.02)

    @property
    def gradcam_attention(self) -> MultiHeadAttention:
        return self.text_encoder.encoder.layer[self.gradcam_layer].crossattention.self

    @property
    def temperature(self) -> torch.Tensor:
        return self.temp.clamp(0.001, 0.5)  # ALBEF's bounds on the learnt temperature

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str,
        text_encoder: str = "bert-base-uncased",
        image_size: int = 256,
        gradcam_layer: int = 8,
        max_text_length: int = 30,
        dropout: float | None = None,
        token_average: str = "all",
    ) -> AlbefGroundingModel:
        """An ALBEF-family model (ViT-B/16 + BERT-base for the released files) from a checkpoint: a local file, an
        http(s) URL or hf://owner/repo/file. Widths, depths, the fusion layer and the vocabulary size are read from it.
        `dropout` replaces BERT's 0.1 (e.g. 0 to fine-tune without it)."""
        state_dict = our_key_style(read_state_dict(checkpoint, how_to_get=CHECKPOINT_HELP))
        tokenizer = bert_tokenizer(text_encoder)
        words = state_dict.get("text_encoder.embeddings.word_embeddings.weight")
        if words is not None and len(words) != len(tokenizer):
            raise CheckpointError(
                f"the vocabulary {text_encoder!r} has {len(tokenizer)} tokens but {checkpoint}'s word embeddings "
                f"have {len(words)} rows: ALBEF uses bert-base-uncased's vocabulary"
            )
        config = AlbefConfig.from_state_dict(
            state_dict, name=checkpoint, image_size=image_size, **({} if dropout is None else {"dropout": dropout})
        )
        with torch.device("meta"):  # no time spent initialising weights that the file replaces
            model = cls(config, tokenizer, gradcam_layer, max_text_length, token_average)
        model.load_albef_state_dict(state_dict, name=checkpoint)
        return model

    @classmethod
    def tiny(
        cls,
        vocabulary: list[str] | None = None,
        image_size: int = 128,
        patch_size: int = 16,
        vision_width: int = 64,
        vision_layers: int = 3,
        text_width: int = 64,
        text_layers: int = 4,
        fusion_layer: int = 1,
        heads: int = 4,
        gradcam_layer: int = 2,
        max_text_length: int = 16,
        embed_dim: int = 64,
        dropout: float = 0.1,
        initializer_range: float = 0.1,
        vision_weights: str | None = None,
        token_average: str = "all",
    ) -> AlbefGroundingModel:
        """A randomly initialised ALBEF of the same architecture, small enough to train on a CPU.

        As in the released model, the Grad-CAM layer is a fusion layer with fusion layers above it (8 of 12 there,
        2 of 4 here), so the eager attention above it, which the AMC loss differentiates through, is exercised.
        `vision_weights` (a file, or "synground:<name>" for a packaged one) replaces the random vision encoder with
        a pretrained one (synground.shapes.pretraining).
        """
        check_tiny_architecture(image_size, patch_size, vision_width, text_width, heads, dropout, max_text_length)
        tokenizer = wordpiece_tokenizer(vocabulary or [])
        config = AlbefConfig(
            image_size=image_size,
            patch_size=patch_size,
            vision_width=vision_width,
            vision_layers=vision_layers,
            vision_heads=heads,
            vision_mlp_width=4 * vision_width,
            text_width=text_width,
            text_layers=text_layers,
            text_heads=heads,
            text_intermediate_width=4 * text_width,
            fusion_layer=fusion_layer,
            vocab_size=len(tokenizer),
            max_positions=max(64, max_text_length),
            embed_dim=embed_dim,
            dropout=dropout,
            initializer_range=initializer_range,
        )
        net = cls(config, tokenizer, gradcam_layer, max_text_length, token_average)
        if vision_weights:
            load_vision_weights(net, vision_weights)
        return net

    @property
    def vision_encoder(self) -> nn.Module:
        return self.visual_encoder

    def load_albef_state_dict(self, state_dict: dict[str, torch.Tensor], name: str) -> None:
        """Load a released ALBEF state dict (either key style); fail on a missing or misshapen weight."""
        state_dict = our_key_style(state_dict)
        ignored = [key for key in state_dict if key.startswith(IGNORED_PREFIXES)]
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith(IGNORED_PREFIXES)}
        if "visual_encoder.pos_embed" in state_dict:
            state_dict["visual_encoder.pos_embed"] = resize_position_embedding(
                state_dict["visual_encoder.pos_embed"], self.visual_encoder.grid
            )
        unexpected = check_state_dict(self, state_dict, name)
        self.load_state_dict({key: value for key, value in state_dict.items() if key not in unexpected}, assign=True)
        log.info(
            "loaded %s: %d weights, %d training-only entries ignored (momentum encoders, queues, MLM head)",
            name,
            len(state_dict) - len(unexpected),
            len(ignored),
        )
        if unexpected:
            log.warning("%s has %d weights this model does not use: %s", name, len(unexpected), ", ".join(unexpected[:8]))

    def save_export(self, directory: Path) -> dict[str, Any]:
        """The weights in the released key layout (refcoco.pth's: text_encoder.* is BertModel) twice: model.safetensors,
        and albef.pth as {"model": state dict}, which the original ALBEF code reads (torch.load(...)["model"], then
        load_state_dict(strict=False): the momentum encoders and queues are not included, they stay as that code
        initialises them), plus the WordPiece vocabulary (vocab.txt); returns the settings `from_export` needs."""
        from safetensors.torch import save_file

        state = {key: value.detach().contiguous().cpu() for key, value in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        torch.save({"model": state}, directory / "albef.pth")
        tokens = [token for token, _ in sorted(self.tokenizer.get_vocab().items(), key=lambda item: item[1])]
        (directory / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
        return {
            "config": asdict(self.config),
            "gradcam_layer": self.gradcam_layer,
            "max_text_length": self.max_text_length,
            "token_average": self.token_average,
        }

    @classmethod
    def from_export(cls, directory: Path, settings: dict[str, Any]) -> AlbefGroundingModel:
        state_dict = read_state_dict(str(directory / "model.safetensors"))
        tokenizer = bert_tokenizer(str(directory / "vocab.txt"))
        rows = settings["config"]["vocab_size"]
        if len(tokenizer) != rows:
            raise CheckpointError(
                f"{directory / 'vocab.txt'} has {len(tokenizer)} tokens for the model's {rows} word embeddings: "
                "the export is damaged; export it again"
            )
        with torch.device("meta"):  # the file replaces every weight
            model = cls(
                AlbefConfig(**settings["config"]),
                tokenizer,
                settings["gradcam_layer"],
                settings["max_text_length"],
                settings.get("token_average", "all"),  # exports written before the option averaged all tokens
            )
        model.load_albef_state_dict(state_dict, name=str(directory / "model.safetensors"))
        return model

    def contrastive_parameters(self) -> list[nn.Parameter]:
        return [*self.vision_proj.parameters(), *self.text_proj.parameters(), self.temp]

    def tokenize(self, texts: list[str]) -> Tokens:
        return self.text_tokenizer(texts, self.itm_head.weight.device)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual_encoder(images)

    def encode_texts(self, tokens: Tokens) -> Tokens:
        return {**tokens, "text_embeds": self.text_encoder.encode_text(tokens["input_ids"], tokens["attention_mask"])}

    def with_text_embeds(self, texts: Tokens) -> Tokens:
        """Raw tokens are encoded here; what encode_texts returned passes through."""
        return texts if "text_embeds" in texts else self.encode_texts(texts)

    def itm_logits(self, image_embeds: torch.Tensor, texts: Tokens) -> torch.Tensor:
        texts = self.with_text_embeds(texts)
        fused = self.text_encoder.fuse(texts["text_embeds"], texts["attention_mask"], image_embeds)
        return self.itm_head(fused[:, 0])

    def contrastive_features(self, image_embeds: torch.Tensor, texts: Tokens) -> tuple[torch.Tensor, torch.Tensor]:
        texts = self.with_text_embeds(texts)
        image_features = F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)
        text_features = F.normalize(self.text_proj(texts["text_embeds"][:, 0]), dim=-1)
        return image_features, text_features
