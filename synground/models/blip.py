"""BLIP image-text matching (transformers' BlipForImageTextRetrieval) behind the GroundingModel interface."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, BertTokenizer, BlipConfig, BlipForImageTextRetrieval, PreTrainedTokenizerBase

from synground.models.base import GradCamOutput, GroundingModel, Tokens
from synground.models.gradcam import attention_gradcam, capture_attention

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[ENC]"]


def wordpiece_tokenizer(words: list[str]) -> BertTokenizer:
    """An in-memory BERT tokenizer over `words`, with single characters as the fallback for any other word."""
    pieces = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,;:!?'\"-()")
    vocabulary = list(dict.fromkeys(SPECIAL_TOKENS + [w.lower() for w in words] + pieces + [f"##{p}" for p in pieces]))
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(vocabulary)})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class BlipGroundingModel(GroundingModel):
    """BLIP ITM with Grad-CAM on the cross-attention of text-encoder layer `gradcam_layer`.

    transformers' forward does not expose cross-attentions, so the vision model, the text encoder and the ITM
    head are run here, with the attention of one layer captured by a forward hook.
    `first_token="enc"` replaces [CLS] by [ENC] as BLIP's own retrieval training does; transformers keeps [CLS].
    """

    def __init__(self, model: BlipForImageTextRetrieval, tokenizer: PreTrainedTokenizerBase, gradcam_layer: int = 6,
                 max_text_length: int = 35, first_token: str = "cls", temperature: float = 0.07):
        super().__init__()
        layers = model.config.text_config.num_hidden_layers
        if not 0 <= gradcam_layer < layers:
            raise ValueError(f"gradcam_layer {gradcam_layer} is outside the text encoder's {layers} layers")
        if first_token not in ("cls", "enc"):
            raise ValueError(f"first_token must be 'cls' or 'enc', got {first_token!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.gradcam_layer = gradcam_layer
        self.max_text_length = max_text_length
        self.first_token = first_token
        self.temperature = temperature
        vision = model.config.vision_config
        self.image_size = vision.image_size
        self.grid = (vision.image_size // vision.patch_size,) * 2
        self._enc_token_id = tokenizer.convert_tokens_to_ids("[ENC]") if first_token == "enc" else None
        self._warned_truncation = False

    @classmethod
    def from_pretrained(cls, model_id: str = "Salesforce/blip-itm-base-coco", **kwargs) -> "BlipGroundingModel":
        try:
            model = BlipForImageTextRetrieval.from_pretrained(model_id)
            tokenizer = AutoTokenizer.from_pretrained(model_id)
        except OSError as error:
            raise OSError(f"cannot load BLIP weights {model_id!r}: download them once with network access "
                          f"(huggingface-cli download {model_id}) or pass a local directory as model_id") from error
        return cls(model, tokenizer, **kwargs)

    @classmethod
    def tiny(cls, vocabulary: list[str] | None = None, image_size: int = 128, patch_size: int = 16,
             vision_width: int = 64, vision_layers: int = 3, text_width: int = 64, text_layers: int = 2,
             heads: int = 4, gradcam_layer: int = 1, max_text_length: int = 16, initializer_range: float = 0.1, **kwargs) -> "BlipGroundingModel":
        """A randomly initialised BLIP of the same architecture, small enough to train on a CPU.

        At BERT's initializer_range of 0.02 and width 64, queries and keys start so small that cross-attention is
        uniform and image-text matching stays at chance for hundreds of steps; 0.1 lets it learn from the start.
        """
        tokenizer = wordpiece_tokenizer(vocabulary or [])
        special = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.cls_token_id,
                   "eos_token_id": tokenizer.sep_token_id, "sep_token_id": tokenizer.sep_token_id}
        config = BlipConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=text_width, encoder_hidden_size=vision_width,
                             intermediate_size=4 * text_width, num_hidden_layers=text_layers, num_attention_heads=heads,
                             max_position_embeddings=max(64, max_text_length), initializer_range=initializer_range, **special),
            vision_config=dict(hidden_size=vision_width, intermediate_size=4 * vision_width, num_hidden_layers=vision_layers,
                               num_attention_heads=heads, image_size=image_size, patch_size=patch_size, initializer_range=initializer_range),
            image_text_hidden_size=min(64, text_width),
        )
        return cls(BlipForImageTextRetrieval(config), tokenizer, gradcam_layer=gradcam_layer, max_text_length=max_text_length, **kwargs)

    def tokenize(self, texts: list[str]) -> Tokens:
        tokens = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.max_text_length,
                                return_tensors="pt")
        if not self._warned_truncation and tokens["input_ids"].shape[1] == self.max_text_length and any(
                len(ids) > self.max_text_length for ids in self.tokenizer(list(texts))["input_ids"]):
            log.warning("texts longer than %d tokens are truncated (warned once per run)", self.max_text_length)
            self._warned_truncation = True
        input_ids = tokens["input_ids"]
        if self._enc_token_id is not None:
            input_ids = input_ids.clone()
            input_ids[:, 0] = self._enc_token_id
        device = self.model.itm_head.weight.device
        return {"input_ids": input_ids.to(device), "attention_mask": tokens["attention_mask"].to(device)}

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(pixel_values=images).last_hidden_state

    def itm_logits(self, image_embeds: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        image_mask = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=image_embeds.device)
        fused = self.model.text_encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                                        encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask)
        return self.model.itm_head(fused.last_hidden_state[:, 0])

    def gradcam(self, image_embeds: torch.Tensor, tokens: Tokens, create_graph: bool) -> GradCamOutput:
        attention_module = self.model.text_encoder.encoder.layer[self.gradcam_layer].crossattention.self
        with capture_attention(attention_module) as captured:
            logits = self.itm_logits(image_embeds, tokens)
        (grad,) = torch.autograd.grad(logits[:, 1].sum(), captured.value, create_graph=create_graph)
        maps = attention_gradcam(captured.value, grad, tokens["attention_mask"], self.grid)
        return GradCamOutput(maps=maps, itm_logits=logits)

    def contrastive_features(self, image_embeds: torch.Tensor, tokens: Tokens) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.model.text_encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        image_features = F.normalize(self.model.vision_proj(image_embeds[:, 0]), dim=-1)
        text_features = F.normalize(self.model.text_proj(text.last_hidden_state[:, 0]), dim=-1)
        return image_features, text_features
