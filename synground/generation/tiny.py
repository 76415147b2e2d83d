"""Tiny random-weight stand-ins for every model of the generation pipeline, saved the way the hub stores them.

They let the pipeline's real loading code (`from_pretrained` on a directory, open_clip checkpoints) run offline in
tests, benchmarks and CPU smoke runs. Their outputs are noise-like images, random words and random boxes: they
exercise the code, not the science.

    synground-tiny-models data/tiny   # then: python generate.py generation=synground_tiny
"""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path

import open_clip
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionGLIGENPipeline, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import (
    BertConfig,
    BertTokenizer,
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Owlv2Config,
    Owlv2ForObjectDetection,
    Owlv2ImageProcessor,
    Owlv2Processor,
    PreTrainedTokenizerFast,
    SwinConfig,
)

WORDS = [
    "a",
    "an",
    "the",
    "red",
    "blue",
    "green",
    "yellow",
    "white",
    "black",
    "small",
    "large",
    "dog",
    "cat",
    "car",
    "tree",
    "house",
    "person",
    "man",
    "woman",
    "ball",
    "table",
    "chair",
    "grass",
    "sky",
    "street",
    "road",
    "window",
    "door",
    "hat",
    "bike",
    "on",
    "in",
    "with",
    "and",
    "of",
    "near",
    "under",
    "next",
    "to",
    "left",
    "right",
    "photo",
    "picture",
    "sitting",
    "standing",
    "running",
    "park",
    "water",
    "boat",
    "bird",
]
PUNCTUATION = [",", ";", ".", ":", "-", "1", "2", "3"]
CLIP_MODEL = "synground-tiny-clip"


def _clip_tokenizer(max_length: int) -> CLIPTokenizer:
    """Character-level BPE (no merges): every word is spelled out, which is all a random model needs."""
    symbols = list(string.ascii_lowercase + string.digits + ".,;:-!?'\"()")
    # start and end last, as in CLIP: OWLv2 takes a query whose first id is 0 for padding
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(tokens)}, merges=[], model_max_length=max_length)


def _clip_ids(tokenizer: CLIPTokenizer) -> dict[str, int]:
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return {"bos_token_id": tokenizer.convert_tokens_to_ids("<|startoftext|>"), "eos_token_id": end, "pad_token_id": end}


def _word_tokenizer(extra_special: list[str] = ()) -> PreTrainedTokenizerFast:
    """Whole words from WORDS: a random language model still writes readable (if senseless) text."""
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {token: i for i, token in enumerate(specials + WORDS + PUNCTUATION + ["USER", "ASSISTANT"])}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in [*specials, *extra_special]])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left"
    )


def _llama_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _diffusion_parts(gated: bool) -> dict:
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(4, 8),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=4,
        attention_head_dim=2,
        attention_type="gated" if gated else "default",
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(4, 8),
        latent_channels=4,
        norm_num_groups=2,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=64,
    )
    tokenizer = _clip_tokenizer(77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            **_clip_ids(tokenizer),
        )
    )
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def _stable_diffusion(path: Path) -> None:
    StableDiffusionPipeline(**_diffusion_parts(gated=False)).save_pretrained(path)


def _gligen(path: Path) -> None:
    StableDiffusionGLIGENPipeline(**_diffusion_parts(gated=True)).save_pretrained(path)


def _llm(path: Path) -> None:
    tokenizer = _word_tokenizer()
    LlamaForCausalLM(_llama_config(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)


def _llava(path: Path) -> None:
    tokenizer = _word_tokenizer(extra_special=["<image>"])
    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=16
    )
    config = LlavaConfig(
        vision_config=vision, text_config=_llama_config(tokenizer), image_token_index=tokenizer.convert_tokens_to_ids("<image>")
    )
    LlavaForConditionalGeneration(config).save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=16,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    ).save_pretrained(path)


def _owlv2(path: Path) -> None:
    tokenizer = _clip_tokenizer(64)
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
        **_clip_ids(tokenizer),
    }
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 64,
        "patch_size": 16,
    }
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=16))
    with torch.no_grad():  # random box offsets collapse boxes to slivers; without them each patch proposes its own cell
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(path)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer).save_pretrained(
        path
    )


def _grounding_dino(path: Path) -> None:
    # a vocab dict, not vocab_file: transformers 5 ignores vocab_file and keeps only the five special tokens
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *PUNCTUATION]
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(tokens)})
    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1],
        num_heads=[1, 2],
        window_size=4,
        out_features=["stage1", "stage2"],
    )
    text = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone=None,
        text_config=text,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=20,
        num_feature_levels=2,
        encoder_n_points=2,
        decoder_n_points=2,
    )
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 64})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)


def _open_clip(root: Path) -> dict[str, str]:
    config = root / f"{CLIP_MODEL}.json"
    config.write_text(
        json.dumps(
            {
                "embed_dim": 16,
                "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
            }
        )
    )
    open_clip.add_model_config(config)
    checkpoint = root / "open_clip_model.safetensors"
    save_file(open_clip.create_model(CLIP_MODEL).state_dict(), checkpoint)
    return {"open_clip_model": CLIP_MODEL, "open_clip_config": str(config), "open_clip_checkpoint": str(checkpoint)}


def write_tiny_components(root: str | Path, seed: int = 0) -> dict[str, str]:
    """Write every tiny component under `root`; the same seed writes the same weights. Returns their paths."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, build in [
        ("stable_diffusion", _stable_diffusion),
        ("gligen", _gligen),
        ("llm", _llm),
        ("llava", _llava),
        ("owlv2", _owlv2),
        ("grounding_dino", _grounding_dino),
    ]:
        torch.manual_seed(seed)
        build(root / name)
        paths[name] = str(root / name)
    torch.manual_seed(seed)
    return {**paths, **_open_clip(root)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write random-weight tiny generation components, saved like hub checkpoints.")
    parser.add_argument("output_dir")
    print(json.dumps(write_tiny_components(parser.parse_args(argv).output_dir), indent=2))


if __name__ == "__main__":
    main()
