"""BLIP through transformers: local directories load, wrong checkpoints and missing weights fail clearly."""

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


def test_first_token_enc_replaces_cls_for_itm_and_keeps_sep(tiny_blip):
    enc = BlipGroundingModel(tiny_blip.model, tiny_blip.tokenizer, gradcam_layer=1, first_token="enc")
    ids = enc.tokenize(["the red circle"])["input_ids"][0].tolist()
    assert ids[0] == tiny_blip.tokenizer.convert_tokens_to_ids("[ENC]")
    assert ids[-1] == tiny_blip.tokenizer.sep_token_id
    assert tiny_blip.tokenize(["the red circle"])["input_ids"][0, 0] == tiny_blip.tokenizer.cls_token_id


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
