"""BLIP through transformers: local directories load, wrong checkpoints and missing weights fail clearly."""

import json

import pytest
import torch
from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

from synground.models import BlipGroundingModel
from synground.models.checkpoints import CheckpointError


def test_a_saved_model_directory_loads_with_the_same_outputs(tiny_blip, tmp_path):
    tiny_blip.model.save_pretrained(tmp_path)
    tiny_blip.tokenizer.save_pretrained(tmp_path)
    loaded = BlipGroundingModel.from_pretrained(str(tmp_path), gradcam_layer=1)
    images = torch.randn(2, 3, 64, 64)
    texts = ["the red circle", "the square on the left"]
    tiny_blip.eval(), loaded.eval()
    expected = tiny_blip.gradcam(tiny_blip.encode_images(images), tiny_blip.tokenize(texts), create_graph=False)
    actual = loaded.gradcam(loaded.encode_images(images), loaded.tokenize(texts), create_graph=False)
    torch.testing.assert_close(actual.maps, expected.maps)
    torch.testing.assert_close(actual.itm_logits, expected.itm_logits)


def test_a_captioning_checkpoint_is_refused_naming_the_missing_weights(tiny_blip, tmp_path):
    BlipForConditionalGeneration(tiny_blip.model.config).save_pretrained(tmp_path)
    tiny_blip.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"not a BLIP image-text matching checkpoint.*itm_head"):
        BlipGroundingModel.from_pretrained(str(tmp_path), gradcam_layer=1)


def test_offline_without_weights_the_error_names_the_model_and_how_to_get_it():
    with pytest.raises(OSError, match=r"cannot load BLIP weights 'Salesforce/blip-itm-base-coco'.*hf download"):
        BlipGroundingModel.from_pretrained("Salesforce/blip-itm-base-coco")


def lavis_itm_and_gradcam(blip: BlipGroundingModel, images, texts, first_token: str = "[ENC]"):
    """BLIP's ITM (salesforce/BLIP BLIP_ITM) and LAVIS's BlipITM.compute_gradcam, written from their formulas and
    run on transformers' modules directly, not through our tokenizer or Grad-CAM code.

    Texts are tokenized as "[CLS] words [SEP]", padded to the longest, and the first id is replaced by [ENC]; the ITM
    head reads the fused first token. Per-token maps are attention * relu(grad) (image [CLS] column dropped),
    averaged over heads; the phrase map is the sum of the maps of tokens 1..n over n, where n is the number of real
    tokens minus 2 ([ENC] and [SEP]). Returns (logits [B, 2], phrase maps [B, N], per-token maps [B, L, N]).
    """
    tokens = blip.tokenizer(texts, padding="longest", return_tensors="pt")
    input_ids = tokens.input_ids.clone()
    input_ids[:, 0] = blip.tokenizer.convert_tokens_to_ids(first_token)
    image_embeds = blip.model.vision_model(pixel_values=images).last_hidden_state
    out = blip.model.text_encoder(
        input_ids=input_ids,
        attention_mask=tokens.attention_mask,
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long),
        output_attentions=True,
    )
    attention = out.cross_attentions[blip.gradcam_layer]
    logits = blip.model.itm_head(out.last_hidden_state[:, 0])
    (grad,) = torch.autograd.grad(logits[:, 1].sum(), attention)
    per_token = (attention[..., 1:] * grad[..., 1:].clamp(min=0)).mean(dim=1)  # [B, L, N]
    phrase_maps = []
    for index in range(len(texts)):
        phrase_length = int(tokens.attention_mask[index].sum()) - 2
        phrase_maps.append(per_token[index, 1 : phrase_length + 1].sum(dim=0) / phrase_length)
    return logits.detach(), torch.stack(phrase_maps).detach(), per_token.detach()


def test_defaults_compute_blips_itm_logits_and_lavis_phrase_averaged_gradcam(tiny_blip):
    """The default tiny BLIP (first_token enc, token_average phrase, vision LayerNorm eps 1e-6) against BLIP's and
    LAVIS's computation: the evaluation maps (the pointing game and the Grounder), the training maps (AMC) and the
    ITM logits agree within 1e-5."""
    tiny_blip.eval()
    torch.manual_seed(3)
    images = torch.randn(3, 3, 64, 64)
    texts = ["the red circle", "the blue square on the left", "circle"]  # unequal lengths: padding and [SEP] positions
    logits, expected, per_token = lavis_itm_and_gradcam(tiny_blip, images, texts)

    evaluation = tiny_blip.evaluation_gradcam(images, texts)
    training = tiny_blip.gradcam(tiny_blip.encode_images(images), tiny_blip.tokenize(texts), create_graph=True)
    for maps in (evaluation.maps, training.maps.detach()):
        assert (maps.flatten(1) - expected).abs().max() < 1e-5
    assert (evaluation.itm_logits - logits).abs().max() < 1e-5
    assert {m.eps for m in tiny_blip.model.vision_model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-6}

    # the other conventions give other numbers on this model, so the comparison above can fail
    cls_logits, _, _ = lavis_itm_and_gradcam(tiny_blip, images, texts, first_token="[CLS]")
    assert (cls_logits - logits).abs().max() > 1e-3
    all_tokens = torch.stack([per_token[i, : len(tiny_blip.tokenizer.tokenize(t)) + 2].mean(0) for i, t in enumerate(texts)])
    assert (all_tokens - expected).abs().max() > 100 * (evaluation.maps.flatten(1) - expected).abs().max()


def test_the_other_conventions_stay_available_as_options(tiny_blip):
    tiny_blip.eval()
    torch.manual_seed(3)
    images, texts = torch.randn(2, 3, 64, 64), ["the red circle", "the blue square on the left"]
    cls_all = BlipGroundingModel(tiny_blip.model, tiny_blip.tokenizer, gradcam_layer=1, first_token="cls", token_average="all")
    assert cls_all.tokenize(texts)["input_ids"][0, 0] == tiny_blip.tokenizer.cls_token_id
    logits, _, per_token = lavis_itm_and_gradcam(tiny_blip, images, texts, first_token="[CLS]")
    lengths = [len(tiny_blip.tokenizer.tokenize(text)) + 2 for text in texts]  # [CLS] words [SEP]
    expected = torch.stack([per_token[i, :length].mean(0) for i, length in enumerate(lengths)])
    out = cls_all.evaluation_gradcam(images, texts)
    assert (out.maps.flatten(1) - expected).abs().max() < 1e-5
    assert (out.itm_logits - logits).abs().max() < 1e-5
    with pytest.raises(ValueError, match=r"token_average must be one of \('all', 'phrase'\), got 'words'"):
        BlipGroundingModel(tiny_blip.model, tiny_blip.tokenizer, gradcam_layer=1, token_average="words")


def test_hub_configs_without_a_vision_eps_load_with_blips_1e_6(tiny_blip, tmp_path):
    """The hub's BLIP config.json files do not set the vision LayerNorm eps: transformers would give 1e-5."""
    tiny_blip.model.save_pretrained(tmp_path)
    tiny_blip.tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["vision_config"]["layer_norm_eps"]  # as in Salesforce/blip-itm-base-coco's config.json
    (tmp_path / "config.json").write_text(json.dumps(config))

    def vision_eps(model):
        return {m.eps for m in model.model.vision_model.modules() if isinstance(m, torch.nn.LayerNorm)}

    assert vision_eps(BlipGroundingModel.from_pretrained(str(tmp_path), gradcam_layer=1)) == {1e-6}
    assert vision_eps(BlipGroundingModel.from_pretrained(str(tmp_path), gradcam_layer=1, vision_layer_norm_eps=None)) == {1e-5}


def test_fused_vision_attention_equals_transformers_eager_attention(tiny_blip):
    eager = BlipForImageTextRetrieval(tiny_blip.model.config).eval()
    eager.load_state_dict(tiny_blip.model.state_dict())  # same weights, transformers' own attention
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = eager.vision_model(pixel_values=images).last_hidden_state
        actual = tiny_blip.eval().encode_images(images)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_dropout_can_be_set_when_loading_and_reaches_every_dropout(tiny_blip, tmp_path):
    tiny_blip.model.save_pretrained(tmp_path)
    tiny_blip.tokenizer.save_pretrained(tmp_path)
    loaded = BlipGroundingModel.from_pretrained(str(tmp_path), dropout=0.25, gradcam_layer=1)
    text = [m.p for m in loaded.model.text_encoder.modules() if isinstance(m, torch.nn.Dropout)]
    vision = [layer.self_attn.dropout for layer in loaded.model.vision_model.encoder.layers]
    assert text and set(text) == {0.25} and set(vision) == {0.25}
    kept = BlipGroundingModel.from_pretrained(str(tmp_path), gradcam_layer=1)  # None keeps the checkpoint's (0 here)
    assert {m.p for m in kept.model.text_encoder.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}


def test_a_tokenizer_larger_than_the_word_embeddings_is_refused(tiny_blip, tmp_path):
    tiny_blip.model.save_pretrained(tmp_path)
    tokenizer = tiny_blip.tokenizer
    tokenizer.add_tokens([f"extra{i}" for i in range(tiny_blip.model.config.text_config.vocab_size)])
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"tokenizer of .* has \d+ tokens for \d+ word embeddings"):
        BlipGroundingModel.from_pretrained(str(tmp_path), gradcam_layer=1)
