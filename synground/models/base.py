"""The interface every grounding model implements, so losses, Grad-CAM and the pointing game work with any."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from synground.models.gradcam import attention_gradcam, capture_attention
from synground.models.text import TextTokenizer, Tokens

# which text tokens' maps the Grad-CAM map averages: "all" real tokens (AMC's ALBEF recipe), or the "phrase" tokens
# only, without the first token and a closing [SEP] (LAVIS's BlipITM.compute_gradcam, the BLIP authors' recipe)
TOKEN_AVERAGES = ("all", "phrase")


@dataclass
class GradCamOutput:
    maps: torch.Tensor  # [B, h, w] raw Grad-CAM on the patch grid (no ReLU, no normalisation)
    itm_logits: torch.Tensor  # [B, 2] of the same forward pass: (no match, match)


class GroundingModel(nn.Module, ABC):
    """An image-text matching model whose cross-attention yields Grad-CAM maps."""

    image_size: int
    temperature: float | torch.Tensor  # of the contrastive similarities (ALBEF learns it)

    architecture: str  # "blip", "albef": names the packaged files made for it (synground.shapes.pretraining)
    token_average: str  # one of TOKEN_AVERAGES
    text_tokenizer: TextTokenizer

    @abstractmethod
    def tokenize(self, texts: list[str]) -> Tokens: ...

    @property
    @abstractmethod
    def vision_encoder(self) -> nn.Module:
        """The image encoder whose output `encode_images` returns (what synground.shapes.pretraining trains)."""

    @abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised pixels -> [B, 1 + N, D] patch embeddings ([CLS] first)."""

    def encode_texts(self, tokens: Tokens) -> Tokens:
        """The text-only part of the model, run once per batch and reused by ITC and every ITM pair.

        Returns `tokens` with any extra per-row tensors ([B, ...]) the model needs; rows can be re-indexed
        together to pair a text with another image. Models whose fusion reads raw tokens return them unchanged.
        """
        return tokens

    @abstractmethod
    def itm_logits(self, image_embeds: torch.Tensor, texts: Tokens) -> torch.Tensor:
        """[B, 2] image-text matching logits for aligned rows of images and encoded texts."""

    @property
    @abstractmethod
    def gradcam_attention(self) -> nn.Module:
        """The cross-attention module whose probabilities (its second output) Grad-CAM reads."""

    def gradcam(self, image_embeds: torch.Tensor, texts: Tokens, create_graph: bool) -> GradCamOutput:
        """Grad-CAM of the match logit on the captured cross-attention layer, for the whole batch at once.

        create_graph=True keeps the graph so a loss on the map trains the model (the AMC loss);
        False gives the evaluation map without building second-order graphs.
        """
        with capture_attention(self.gradcam_attention) as captured:
            logits = self.itm_logits(image_embeds, texts)
        (grad,) = torch.autograd.grad(logits[:, 1].sum(), captured.value, create_graph=create_graph)
        maps = attention_gradcam(captured.value, grad, self.gradcam_tokens(texts["attention_mask"]))
        return GradCamOutput(maps=maps, itm_logits=logits)

    @staticmethod
    def check_token_average(token_average: str) -> str:
        if token_average not in TOKEN_AVERAGES:
            raise ValueError(f"token_average must be one of {TOKEN_AVERAGES}, got {token_average!r}")
        return token_average

    def gradcam_tokens(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L] 0/1: the text tokens whose maps the Grad-CAM map averages (`token_average`).

        "phrase" drops the first token ([CLS] or [ENC]) and, where the tokenizer closes a text with [SEP], the last
        real token; a text with no phrase token left gets an all-zero map.
        """
        if self.token_average == "all":
            return attention_mask
        phrase = attention_mask.clone()
        phrase[:, 0] = 0
        if self.text_tokenizer.end_ids:  # the closing [SEP] is each row's last real token
            last = (attention_mask.sum(dim=1) - 1).clamp(min=0)
            phrase[torch.arange(len(phrase), device=phrase.device), last] = 0
        return phrase

    def evaluation_gradcam(
        self, images: torch.Tensor, texts: list[str], image_index: torch.Tensor | None = None
    ) -> GradCamOutput:
        """Evaluation maps (detached) for `texts` on `images` [U, 3, H, W]; row i pairs texts[i] with
        images[image_index[i]] (each image is encoded once for all its phrases), or with images[i] without an index.

        Only the Grad-CAM layer and the layers above it build a graph. Run it outside `torch.inference_mode`: the
        map is a gradient.
        """
        with torch.no_grad():
            image_embeds = self.encode_images(images)
            if image_index is not None:
                image_embeds = image_embeds[image_index]
            encoded = self.encode_texts(self.tokenize(texts))
        with torch.enable_grad():
            cam = self.gradcam(image_embeds, encoded, create_graph=False)
        return GradCamOutput(maps=cam.maps.detach(), itm_logits=cam.itm_logits.detach())

    def contrastive_features(self, image_embeds: torch.Tensor, texts: Tokens) -> tuple[torch.Tensor, torch.Tensor] | None:
        """L2-normalised image and text features for ITC and hard-negative mining; None if the model has none."""
        return None

    def contrastive_parameters(self) -> list[nn.Parameter]:
        """The parameters only the contrastive loss trains (projections, a learnt temperature)."""
        return []


def check_tiny_architecture(
    image_size: int, patch_size: int, vision_width: int, text_width: int, heads: int, dropout: float, max_text_length: int
) -> None:
    """The sizes of a tiny model's config, refused before torch fails on them with a message that names no key."""
    problems = []
    if image_size < 1 or patch_size < 1 or image_size % patch_size:
        problems.append(f"image_size {image_size} is not a whole number of patch_size {patch_size} patches")
    for name, width in (("vision_width", vision_width), ("text_width", text_width)):
        if heads < 1 or width % heads:
            problems.append(f"{name} {width} does not split into heads={heads} attention heads")
    if not 0.0 <= dropout < 1.0:
        problems.append(f"dropout {dropout} is not a probability in [0, 1)")
    if max_text_length < 3:
        problems.append(f"max_text_length {max_text_length} leaves no room for a word between [CLS] and [SEP]")
    if problems:
        raise ValueError("model.net: " + "; ".join(problems))
