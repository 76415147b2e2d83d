"""BLIP image-text matching (transformers' BlipForImageTextRetrieval) behind the GroundingModel interface."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, BlipConfig, BlipForImageTextRetrieval, PreTrainedTokenizerBase

from synground.models.base import GroundingModel, check_tiny_architecture
from synground.models.checkpoints import CheckpointError
from synground.models.encoders import load_vision_weights
from synground.models.text import TextTokenizer, Tokens, wordpiece_tokenizer

# BLIP's ViT (salesforce/BLIP models/vit.py) normalises with LayerNorm(eps=1e-6)
VISION_LAYER_NORM_EPS = 1e-6


class FusedVisionAttention(nn.Module):
    """BLIP's vision self-attention through `scaled_dot_product_attention`, on the same weights.

    transformers computes it eagerly, keeping a [B, heads, 577, 577] probability tensor per layer at 384 px;
    Grad-CAM never reads those, so the fused kernel (faster, far less memory in training) gives the same result.
    """

    def __init__(self, eager: nn.Module):
        super().__init__()
        self.qkv, self.projection = eager.qkv, eager.projection
        self.num_heads, self.scale, self.dropout = eager.num_heads, eager.scale, eager.dropout.p

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, None]:
        q, k, v = self.qkv(hidden_states).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, scale=self.scale)
        return self.projection(out.transpose(1, 2).flatten(2)), None


class BlipGroundingModel(GroundingModel):
    """BLIP ITM with Grad-CAM on the cross-attention of text-encoder layer `gradcam_layer`.

    transformers' forward does not expose cross-attentions, so the vision model, the text encoder and the ITM
    head are run here, with the attention of one layer captured by a forward hook.

    The defaults compute what BLIP's authors compute (salesforce/BLIP's BLIP_ITM, LAVIS's BlipITM.compute_gradcam):
    `first_token="enc"` puts [ENC] where the text's [CLS] was, as BLIP's ITM was trained (transformers' port keeps
    [CLS]: "cls"); `token_average="phrase"` averages the per-token maps over the phrase's own tokens, without the
    first token and [SEP] ("all": every real token, AMC's ALBEF recipe).
    """

    architecture = "blip"

    def __init__(
        self,
        model: BlipForImageTextRetrieval,
        tokenizer: PreTrainedTokenizerBase,
        gradcam_layer: int = 6,
        max_text_length: int = 35,
        first_token: str = "enc",
        token_average: str = "phrase",
        temperature: float = 0.07,
    ):
        super().__init__()
        layers = model.config.text_config.num_hidden_layers
        if not 0 <= gradcam_layer < layers:
            raise ValueError(f"gradcam_layer {gradcam_layer} is outside the text encoder's {layers} layers")
        if first_token not in ("cls", "enc"):
            raise ValueError(f"first_token must be 'cls' or 'enc', got {first_token!r}")
        vision = model.config.vision_config
        for layer in model.vision_model.encoder.layers:
            if not isinstance(layer.self_attn, FusedVisionAttention):
                layer.self_attn = FusedVisionAttention(layer.self_attn)
        self.model = model
        self.tokenizer = tokenizer
        self.text_tokenizer = TextTokenizer(tokenizer, max_text_length, first_token=f"[{first_token.upper()}]", end_with_sep=True)
        self.gradcam_layer, self.first_token, self.max_text_length = gradcam_layer, first_token, max_text_length
        self.token_average = self.check_token_average(token_average)
        self.temperature = temperature
        self.image_size = vision.image_size

    @property
    def gradcam_attention(self) -> nn.Module:
        return self.model.text_encoder.encoder.layer[self.gradcam_layer].crossattention.self

    @classmethod
    def from_pretrained(
        cls,
        model_id: str = "Salesforce/blip-itm-base-coco",
        dropout: float | None = None,
        vision_layer_norm_eps: float | None = VISION_LAYER_NORM_EPS,
        **kwargs,
    ) -> BlipGroundingModel:
        """Weights and tokenizer from a hub id or a local directory (safetensors when the repository has them).

        `dropout` replaces the text encoder's hidden and attention dropout and the vision attention dropout (0 turns
        dropout off in training); None keeps the checkpoint's. `vision_layer_norm_eps` sets the vision tower's
        LayerNorm eps: BLIP's ViT was trained with 1e-6, the hub's BLIP configs do not say, and transformers'
        BlipVisionConfig then gives 1e-5; None keeps the config's.
        """
        try:
            config = BlipConfig.from_pretrained(model_id)
            if vision_layer_norm_eps is not None:
                config.vision_config.layer_norm_eps = vision_layer_norm_eps
            if dropout is not None:
                config.text_config.hidden_dropout_prob = config.text_config.attention_probs_dropout_prob = dropout
                config.vision_config.attention_dropout = dropout
            model, info = BlipForImageTextRetrieval.from_pretrained(model_id, config=config, output_loading_info=True)
            tokenizer = AutoTokenizer.from_pretrained(model_id)
        except OSError as error:
            raise OSError(
                f"cannot load BLIP weights {model_id!r}: download them once with network access "
                f"(hf download {model_id}) or pass a local directory as model_id"
            ) from error
        except RuntimeError as error:  # transformers' report of weights of another shape
            raise CheckpointError(f"{model_id} does not fit BlipForImageTextRetrieval: {error}") from error
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])
            raise CheckpointError(
                f"{model_id} is not a BLIP image-text matching checkpoint: it lacks {len(missing)} weights, "
                f"e.g. {', '.join(missing[:8])} (use a Salesforce/blip-itm-* model)"
            )
        rows = model.config.text_config.vocab_size
        if not len(tokenizer.all_special_tokens) < len(tokenizer) <= rows:  # transformers may build an empty one offline
            raise CheckpointError(
                f"the tokenizer of {model_id} has {len(tokenizer)} tokens for {rows} word embeddings: "
                "it did not load whole (BLIP's has bert-base-uncased's 30,522 plus [DEC] and [ENC])"
            )
        return cls(model, tokenizer, **kwargs)

    @classmethod
    def tiny(
        cls,
        vocabulary: list[str] | None = None,
        image_size: int = 128,
        patch_size: int = 16,
        vision_width: int = 64,
        vision_layers: int = 3,
        text_width: int = 64,
        text_layers: int = 3,
        heads: int = 4,
        gradcam_layer: int = 1,
        max_text_length: int = 16,
        dropout: float = 0.0,
        initializer_range: float = 0.1,
        vision_weights: str | None = None,
        **kwargs,
    ) -> BlipGroundingModel:
        """A randomly initialised BLIP of the same architecture, small enough to train on a CPU.

        As in the released model (layer 6 of 12), the Grad-CAM layer has layers above it, which the AMC loss
        differentiates through.

        At BERT's initializer_range of 0.02 and width 64, queries and keys start so small that cross-attention is
        uniform and image-text matching stays at chance for hundreds of steps; 0.1 lets it learn from the start.
        `vision_weights` (a file, or "synground:<name>" for a packaged one) replaces the random vision encoder with
        a pretrained one (synground.shapes.pretraining).
        """
        check_tiny_architecture(image_size, patch_size, vision_width, text_width, heads, dropout, max_text_length)
        tokenizer = wordpiece_tokenizer(vocabulary or [])
        special = {
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.cls_token_id,
            "eos_token_id": tokenizer.sep_token_id,
            "sep_token_id": tokenizer.sep_token_id,
        }
        config = BlipConfig(
            text_config=dict(
                vocab_size=len(tokenizer),
                hidden_size=text_width,
                encoder_hidden_size=vision_width,
                intermediate_size=4 * text_width,
                num_hidden_layers=text_layers,
                num_attention_heads=heads,
                max_position_embeddings=max(64, max_text_length),
                initializer_range=initializer_range,
                hidden_dropout_prob=dropout,
                attention_probs_dropout_prob=dropout,
                **special,
            ),
            vision_config=dict(
                hidden_size=vision_width,
                intermediate_size=4 * vision_width,
                num_hidden_layers=vision_layers,
                num_attention_heads=heads,
                image_size=image_size,
                patch_size=patch_size,
                attention_dropout=dropout,
                initializer_range=initializer_range,
                layer_norm_eps=VISION_LAYER_NORM_EPS,
            ),
            image_text_hidden_size=min(64, text_width),
        )
        net = cls(
            BlipForImageTextRetrieval(config), tokenizer, gradcam_layer=gradcam_layer, max_text_length=max_text_length, **kwargs
        )
        if vision_weights:
            load_vision_weights(net, vision_weights)
        return net

    @property
    def vision_encoder(self) -> nn.Module:
        return self.model.vision_model

    def save_export(self, directory: Path) -> dict[str, Any]:
        """Weights (model.safetensors), config and tokenizer in the transformers format, which
        `BlipForImageTextRetrieval.from_pretrained(directory)` and `AutoTokenizer.from_pretrained(directory)` load;
        returns the settings `from_export` needs besides them."""
        self.model.save_pretrained(directory)  # the fused vision attention keeps BLIP's parameter names
        self.tokenizer.save_pretrained(directory)
        return {
            "gradcam_layer": self.gradcam_layer,
            "first_token": self.first_token,
            "token_average": self.token_average,
            "max_text_length": self.max_text_length,
            "temperature": float(self.temperature),
        }

    @classmethod
    def from_export(cls, directory: Path, settings: dict[str, Any]) -> BlipGroundingModel:
        return cls.from_pretrained(
            str(directory),
            gradcam_layer=settings["gradcam_layer"],
            first_token=settings["first_token"],
            token_average=settings.get("token_average", "all"),  # exports written before the option averaged all tokens
            max_text_length=settings["max_text_length"],
            temperature=settings["temperature"],
            vision_layer_norm_eps=None,  # the exported config.json's, written whenever it differs from transformers' default
        )

    def contrastive_parameters(self) -> list[nn.Parameter]:
        return [*self.model.vision_proj.parameters(), *self.model.text_proj.parameters()]

    def tokenize(self, texts: list[str]) -> Tokens:
        return self.text_tokenizer(texts, self.model.itm_head.weight.device)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        # other input sizes work too: transformers resizes the position embeddings (bicubic)
        resize = images.shape[-1] != self.image_size or images.shape[-2] != self.image_size
        return self.model.vision_model(pixel_values=images, interpolate_pos_encoding=resize).last_hidden_state

    def itm_logits(self, image_embeds: torch.Tensor, texts: Tokens) -> torch.Tensor:
        image_mask = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=image_embeds.device)
        fused = self.model.text_encoder(
            input_ids=texts["input_ids"],
            attention_mask=texts["attention_mask"],
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
        )
        return self.model.itm_head(fused.last_hidden_state[:, 0])

    def contrastive_features(self, image_embeds: torch.Tensor, texts: Tokens) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids = texts["input_ids"].clone()
        input_ids[:, 0] = self.tokenizer.cls_token_id  # BLIP's unimodal text encoder reads [CLS], even when ITM uses [ENC]
        text = self.model.text_encoder(input_ids=input_ids, attention_mask=texts["attention_mask"])
        image_features = F.normalize(self.model.vision_proj(image_embeds[:, 0]), dim=-1)
        text_features = F.normalize(self.model.text_proj(text.last_hidden_state[:, 0]), dim=-1)
        return image_features, text_features
