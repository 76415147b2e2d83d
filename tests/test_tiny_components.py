"""The tiny components load with the calls the pipeline uses, and run."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from synground.generation.tiny import PUNCTUATION, WORDS, write_tiny_components

KEYS = {
    "stable_diffusion",
    "gligen",
    "llm",
    "llava",
    "owlv2",
    "grounding_dino",
    "open_clip_config",
    "open_clip_checkpoint",
    "open_clip_model",
}


def images(count: int, size: int = 64) -> list[Image.Image]:
    generator = np.random.default_rng(0)
    return [Image.fromarray(generator.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def test_every_component_is_written(tiny_components):
    assert set(tiny_components) == KEYS
    assert all(Path(path).exists() for key, path in tiny_components.items() if key != "open_clip_model")


def test_stable_diffusion_draws_a_batch(tiny_components):
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_components["stable_diffusion"])
    pipeline.set_progress_bar_config(disable=True)
    output = pipeline(["a red dog on the grass", "a tree"], num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert [image.size for image in output.images] == [(64, 64), (64, 64)]


def test_gligen_draws_a_batch_with_one_layout(tiny_components):
    from diffusers import StableDiffusionGLIGENPipeline

    pipeline = StableDiffusionGLIGENPipeline.from_pretrained(tiny_components["gligen"])
    pipeline.set_progress_bar_config(disable=True)
    output = pipeline(
        prompt=["a dog near a tree", "a dog near a tree"],
        gligen_phrases=["a dog", "a tree"],
        gligen_boxes=[[0.1, 0.2, 0.5, 0.9], [0.6, 0.0, 1.0, 1.0]],
        gligen_scheduled_sampling_beta=0.3,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert [image.size for image in output.images] == [(64, 64), (64, 64)]


def test_llm_writes_words_of_its_vocabulary(tiny_components):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_components["llm"])
    model = AutoModelForCausalLM.from_pretrained(tiny_components["llm"])
    tokenizer.padding_side = "left"
    inputs = tokenizer(
        ["USER: a photo of a dog in the park. ASSISTANT:", "USER: a tree ASSISTANT:"], return_tensors="pt", padding=True
    )
    assert tokenizer.unk_token_id not in inputs.input_ids[0].tolist()
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(output[:, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    assert len(texts) == 2
    vocabulary = set(WORDS + PUNCTUATION + ["USER", "ASSISTANT"])
    assert all(text.split() and set(text.split()) <= vocabulary for text in texts)


def test_llava_describes_a_batch_of_images(tiny_components):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_components["llava"])
    model = LlavaForConditionalGeneration.from_pretrained(tiny_components["llava"])
    processor.tokenizer.padding_side = "left"
    prompts = ["USER: <image>\nDescribe the image. ASSISTANT:", "USER: <image>\nDescribe the dog. ASSISTANT: a"]
    inputs = processor(images=images(2), text=prompts, return_tensors="pt", padding=True)
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert output.shape == (2, inputs.input_ids.shape[1] + 8)
    texts = processor.batch_decode(output[:, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    assert all(isinstance(text, str) for text in texts)


def test_owlv2_boxes_for_a_batch(tiny_components):
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_components["owlv2"])
    model = AutoModelForZeroShotObjectDetection.from_pretrained(tiny_components["owlv2"])
    text_labels = [["a red dog", "a tree"], ["a car", "a man"]]  # ragged lists are padded with " " queries the labels lack
    inputs = processor(text=text_labels, images=images(2), return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    results = processor.post_process_grounded_object_detection(
        outputs, threshold=0.0, target_sizes=[(64, 64), (64, 64)], text_labels=text_labels
    )
    assert len(results) == 2
    for result, labels in zip(results, text_labels):
        assert result["boxes"].shape == (len(result["scores"]), 4) and len(result["scores"]) > 0
        assert set(result["text_labels"]) <= set(labels)
        assert result["labels"].max() < len(labels)


def test_grounding_dino_boxes_for_a_batch(tiny_components):
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_components["grounding_dino"])
    model = AutoModelForZeroShotObjectDetection.from_pretrained(tiny_components["grounding_dino"])
    inputs = processor(images=images(2), text=["a red dog. a tree.", "a car."], return_tensors="pt", padding=True)
    assert processor.tokenizer.convert_ids_to_tokens(inputs.input_ids[0]) == [
        "[CLS]",
        "a",
        "red",
        "dog",
        ".",
        "a",
        "tree",
        ".",
        "[SEP]",
    ]
    with torch.no_grad():
        outputs = model(**inputs)
    results = processor.post_process_grounded_object_detection(
        outputs, inputs.input_ids, threshold=0.0, text_threshold=0.0, target_sizes=[(64, 64), (64, 64)]
    )
    assert len(results) == 2
    for result in results:
        assert result["boxes"].shape == (model.config.num_queries, 4)
        assert len(result["scores"]) == len(result["text_labels"]) == model.config.num_queries


def test_open_clip_embeds_images_and_texts(tiny_components):
    import open_clip

    open_clip.add_model_config(tiny_components["open_clip_config"])
    model, _, preprocess = open_clip.create_model_and_transforms(
        tiny_components["open_clip_model"], pretrained=tiny_components["open_clip_checkpoint"]
    )
    tokenizer = open_clip.get_tokenizer(tiny_components["open_clip_model"])
    with torch.no_grad():
        image_features = model.encode_image(torch.stack([preprocess(image) for image in images(2)]))
        text_features = model.encode_text(tokenizer(["a red dog", "a tree"]))
    assert image_features.shape == text_features.shape == (2, 16)
    saved = load_file(tiny_components["open_clip_checkpoint"])
    assert all(torch.equal(saved[name], value) for name, value in model.state_dict().items())


def test_the_same_seed_writes_the_same_weights(tiny_components, tmp_path):
    again = write_tiny_components(tmp_path, seed=0)
    for first, second in [
        (Path(tiny_components["llava"]) / "model.safetensors", Path(again["llava"]) / "model.safetensors"),
        (tiny_components["open_clip_checkpoint"], again["open_clip_checkpoint"]),
    ]:
        first, second = load_file(first), load_file(second)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[name], second[name]) for name in first)
