"""Losses: attention-mask consistency (AMC) and self-consistent explanations (SelfEQ) on Grad-CAM maps, ITM with hard
negatives, ITC."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def amc_loss(
    maps: torch.Tensor,
    masks: torch.Tensor,
    mean_margin: float = 0.1,
    max_margin: float = 0.5,
    mean_weight: float = 0.2,
    max_weight: float = 0.8,
) -> torch.Tensor:
    """Attention-mask consistency (Yang et al., CVPR 2023) on normalised maps G and box masks M, both [B, H, W].

    L_mean = relu(sum(G(1-M))/sum(1-M) - sum(GM)/sum(M) + 0.1), sums pooled over the batch;
    L_max  = mean_b relu(max(G_b(1-M_b)) - max(G_b M_b) + 0.5);  L = 0.2 L_mean + 0.8 L_max.
    """
    outside = 1.0 - masks
    mean_inside = (maps * masks).sum() / masks.sum().clamp(min=1.0)
    mean_outside = (maps * outside).sum() / outside.sum().clamp(min=1.0)
    loss_mean = F.relu(mean_outside - mean_inside + mean_margin)
    max_inside = (maps * masks).flatten(1).max(dim=1).values
    max_outside = (maps * outside).flatten(1).max(dim=1).values
    loss_max = F.relu(max_outside - max_inside + max_margin).mean()
    return mean_weight * loss_mean + max_weight * loss_max


def selfeq_loss(
    maps: torch.Tensor, paraphrase_maps: torch.Tensor, tau: float = 0.8, consistency_weight: float = 0.5
) -> dict[str, torch.Tensor]:
    """Self-consistent explanations (He et al., CVPR 2024) on the normalised maps G of phrases and G' of their
    paraphrases on the same images, both [B, h, w] (AMC's training maps at the Grad-CAM grid, 16 x 16 for ALBEF).

    L_sim = SmoothL1(G', G) (beta 1, the mean over every element); with M = 1[G + G' >= tau],
    L_cst = std(G'M) + std(GM) + relu(tau/2 - sum(G'M)/sum(M)) + relu(tau/2 - sum(GM)/sum(M)), each term pooled over
    the whole batch and std the unbiased one over every element, zeros outside M included, as the released code
    (uvavision/SelfEQ) computes them. When M is empty (G + G' < tau everywhere, as with all-zero maps) the reference
    divides by zero and gives NaN; here the two mean terms are then 0, so the loss stays finite (M carries no gradient
    either way). Returns {"sim", "cst", "total": L_sim + consistency_weight * L_cst}.
    """
    if maps.shape != paraphrase_maps.shape or maps.ndim != 3:
        raise ValueError(
            f"selfeq_loss needs two [B, h, w] maps of one shape, got {tuple(maps.shape)} and {tuple(paraphrase_maps.shape)}"
        )
    similarity = F.smooth_l1_loss(paraphrase_maps, maps)
    region = (maps + paraphrase_maps >= tau).to(maps.dtype)
    inside, paraphrase_inside = maps * region, paraphrase_maps * region
    count = region.sum()
    spread = paraphrase_inside.std() + inside.std()
    if count > 0:
        threshold = torch.as_tensor(tau / 2, dtype=maps.dtype, device=maps.device)
        concentration = F.relu(threshold - paraphrase_inside.sum() / count) + F.relu(threshold - inside.sum() / count)
    else:
        concentration = maps.new_zeros(())
    consistency = spread + concentration
    return {"sim": similarity, "cst": consistency, "total": similarity + consistency_weight * consistency}


def sample_hard_negatives(
    similarity: torch.Tensor, same_text: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """For each row i, one column j != i drawn from softmax(similarity[i]), never one whose text equals i's.

    Rows with no valid column fall back to any other column (a batch of one text repeated has no true negative).
    """
    size = similarity.shape[0]
    invalid = same_text | torch.eye(size, dtype=torch.bool, device=similarity.device)
    weights = similarity.float().softmax(dim=1).masked_fill(invalid, 0.0) + 1e-8 * ~invalid
    empty = weights.sum(dim=1) == 0
    if empty.any():
        weights[empty] = (~torch.eye(size, dtype=torch.bool, device=similarity.device))[empty].float()
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def itc_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, temperature: float, same_text: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE; identical texts in the batch all count as positives (soft targets)."""
    logits = image_features @ text_features.t() / temperature
    targets = same_text.float() / same_text.float().sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets.t())) / 2


def texts_equal(texts: list[str], device: torch.device | None = None) -> torch.Tensor:
    """[B, B] bool: texts[i] == texts[j] (the diagonal included)."""
    ids = {text: index for index, text in enumerate(dict.fromkeys(texts))}
    codes = torch.tensor([ids[t] for t in texts], device=device)
    return codes[:, None] == codes[None, :]
