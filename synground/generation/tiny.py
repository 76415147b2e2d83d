"""Tiny random-weight stand-ins for every model of the generation pipeline, saved the way the hub stores them.

They let the pipeline's real loading code (`from_pretrained` on a directory, open_clip checkpoints) run offline in
tests, benchmarks and CPU smoke runs. Their outputs are noise-like images, random words and random boxes: they
exercise the code, not the science.

    synground-tiny-models data/tiny   # then: python generate.py generation=synground_tiny

`write_full_size_components` writes the default pipeline's architectures at full size with random weights (Stable
Diffusion 1.5, Grounding DINO with its Swin-B backbone, a Vicuna-7B-shaped decoder), which measure speed and memory
offline (benchmarks/gpu_check.py); only their vocabularies are small, and the decoder's saved generation config
makes its random answers come out as lists of words, so that the later stages get phrases.
"""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path
from typing import Any

import open_clip
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    PNDMScheduler,
    StableDiffusionGLIGENPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
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


def _llama_config(tokenizer: PreTrainedTokenizerFast, **sizes: Any) -> LlamaConfig:
    """A Llama decoder over `tokenizer`'s vocabulary: tiny unless `sizes` say otherwise."""
    tiny = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
    }
    return LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**tiny, **sizes},
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


# Stable Diffusion 1.5's parameter counts (its model card's UNet, VAE and CLIP ViT-L/14 text encoder): what the
# full-size stand-ins must have, whatever the defaults of diffusers and transformers become
SD15_PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


def _stable_diffusion_15(path: Path, dtype: torch.dtype) -> None:
    """SD 1.5's UNet, VAE, text encoder and PNDM scheduler settings; the tokenizer is the tiny character-level one
    (prompts are padded to CLIP's 77 tokens either way, so the compute is SD's)."""
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # diffusers' defaults are SD 1.x's blocks
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    tokenizer = _clip_tokenizer(77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
            **_clip_ids(tokenizer),
        )
    )
    for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        count = sum(p.numel() for p in model.parameters())
        if count != SD15_PARAMETERS[name]:
            raise RuntimeError(
                f"the full-size {name} has {count:,} parameters, Stable Diffusion 1.5's has {SD15_PARAMETERS[name]:,}"
            )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.to(dtype).save_pretrained(path)


def _grounding_dino_base(path: Path) -> None:
    """IDEA-Research/grounding-dino-base's architecture (Swin-B at 384 px, window 12; BERT-base text; 900 queries)."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *PUNCTUATION]
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(tokens)})
    backbone = SwinConfig(
        image_size=384,
        embed_dim=128,
        depths=[2, 2, 18, 2],
        num_heads=[4, 8, 16, 32],
        window_size=12,
        out_features=["stage2", "stage3", "stage4"],
    )
    config = GroundingDinoConfig(backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False, backbone=None)
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=tokenizer).save_pretrained(path)


def _vicuna_7b(path: Path, layers: int, dtype: torch.dtype, device: str) -> None:
    """Vicuna-7B v1.5's decoder (Llama 2 7B: width 4096, 11008, 32 heads, `layers` of its 32 layers) with the tiny word
    vocabulary: its LM head is then 80 rows instead of 32,000 (under 2% of the 7B model's compute)."""
    tokenizer = _word_tokenizer()
    config = _llama_config(
        tokenizer,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its own dtype, on the GPU when there is one: 7B float32 weights are 27 GB
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.generation_config.sequence_bias = _list_answers(tokenizer)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _list_answers(tokenizer: PreTrainedTokenizerFast) -> list[list]:
    """A generation config bias (transformers' `sequence_bias`, saved with the model) that makes a random decoder answer
    as the trained one does, in comma-separated words, so the pipeline's later stages get phrases: ',' is favoured
    after a word and barred after itself, the other punctuation and the special tokens (the end of text among them) are
    barred, so every answer runs to max_new_tokens (the longest, costliest answer)."""
    comma = tokenizer.convert_tokens_to_ids(",")
    barred = [*PUNCTUATION[1:], "USER", "ASSISTANT", *tokenizer.all_special_tokens]  # the end of text among them
    return [
        *[[[word, comma], 4.0] for word in tokenizer.convert_tokens_to_ids(WORDS)],
        [[comma, comma], -100.0],
        *[[[token], -100.0] for token in tokenizer.convert_tokens_to_ids(barred)],
    ]


FULL_SIZE_COMPONENTS = ("stable_diffusion", "grounding_dino", "llm")


def write_full_size_components(
    root: str | Path,
    llm_layers: int = 32,
    dtype: torch.dtype = torch.float16,
    device: str = "cpu",
    seed: int = 0,
    names: tuple[str, ...] = FULL_SIZE_COMPONENTS,
) -> dict[str, str]:
    """The default pipeline's models at full size with random weights, saved in `dtype` under `root` with the names of
    `write_tiny_components` (stable_diffusion, grounding_dino, llm): Stable Diffusion 1.5, Grounding DINO base and a
    Vicuna-7B-shaped decoder of `llm_layers` layers (32 is the real depth), built on `device`; `names` picks some of
    them. The CLIP filter's ViT-B-32 needs no file: open_clip builds it with random weights when `pretrained` is null."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    builders = {
        "stable_diffusion": lambda path: _stable_diffusion_15(path, dtype),
        "grounding_dino": _grounding_dino_base,
        "llm": lambda path: _vicuna_7b(path, llm_layers, dtype, device),
    }
    unknown = set(names) - set(builders)
    if unknown:
        raise ValueError(f"unknown full-size components {sorted(unknown)}; choose from {FULL_SIZE_COMPONENTS}")
    for name in names:
        torch.manual_seed(seed)
        builders[name](root / name)
    return {name: str(root / name) for name in names}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write random-weight tiny generation components, saved like hub checkpoints.")
    parser.add_argument("output_dir")
    print(json.dumps(write_tiny_components(parser.parse_args(argv).output_dir), indent=2))


if __name__ == "__main__":
    main()
