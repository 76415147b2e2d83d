"""ALBEF: released checkpoints load by their own key names; bad files fail with errors that say what is wrong."""

import argparse
import logging

import pytest
import torch

from support.released_checkpoints import random_state_dict, released_albef_shapes
from synground.models import AlbefGroundingModel
from synground.models.albef import bert_tokenizer
from synground.models.albef_network import AlbefConfig
from synground.models.checkpoints import CheckpointError, read_state_dict


@pytest.mark.parametrize("bert", ["text_encoder.bert.", "text_encoder."])
def test_released_checkpoint_loads_every_weight_by_its_own_name(tiny_albef, tmp_path, bert):
    c = tiny_albef.config
    state = random_state_dict(released_albef_shapes(c, grid=c.image_size // c.patch_size, bert=bert))
    path = tmp_path / "ALBEF.pth"
    torch.save({"model": state, "config": {"image_res": 256, "queue_size": 8}, "epoch": 29}, path)
    tiny_albef.load_albef_state_dict(read_state_dict(str(path)), name=str(path))
    loaded = tiny_albef.state_dict()
    for key, value in loaded.items():  # nothing missing: every weight of the model equals the file's
        torch.testing.assert_close(value, state[key.replace("text_encoder.", bert, 1)], msg=key)
    assert len(loaded) == sum(
        1
        for key in state
        if not key.startswith(
            (
                "visual_encoder_m",
                "text_encoder_m",
                "vision_proj_m",
                "text_proj_m",
                "text_encoder.cls",
                "image_queue",
                "text_queue",
                "idx_queue",
                "queue_ptr",
            )
        )
        and "position_ids" not in key
    )


def test_position_embeddings_are_resized_for_another_resolution(tiny_albef):
    c = tiny_albef.config  # 64 px, patch 16: a 4x4 grid; the file was trained on a 2x2 grid
    state = {
        key.replace("text_encoder.bert.", "text_encoder.", 1): value
        for key, value in random_state_dict(released_albef_shapes(c, grid=2)).items()
    }
    tiny_albef.load_albef_state_dict(state, name="small-grid.pth")
    pos = tiny_albef.visual_encoder.pos_embed
    assert pos.shape == (1, 1 + 16, c.vision_width)
    torch.testing.assert_close(pos[:, 0], state["visual_encoder.pos_embed"][:, 0])  # [CLS] position kept


def test_a_missing_weight_is_an_error_naming_it(tiny_albef):
    c = tiny_albef.config
    state = random_state_dict(released_albef_shapes(c, grid=4))
    del state["itm_head.weight"]
    with pytest.raises(CheckpointError, match=r"itm_head\.weight"):
        tiny_albef.load_albef_state_dict(state, name="no-itm.pth")


def test_a_checkpoint_of_another_size_lists_the_mismatched_shapes(tiny_albef):
    wider = AlbefConfig(**{**tiny_albef.config.__dict__, "vision_width": 48})
    state = random_state_dict(released_albef_shapes(wider, grid=4))
    with pytest.raises(CheckpointError, match=r"visual_encoder\.cls_token: file \(1, 1, 48\) vs model \(1, 1, 32\)"):
        tiny_albef.load_albef_state_dict(state, name="wide.pth")


def test_unused_weights_are_reported(tiny_albef, caplog):
    state = random_state_dict(released_albef_shapes(tiny_albef.config, grid=4))
    state["box_head.weight"] = torch.zeros(4, 4)
    with caplog.at_level(logging.WARNING):
        tiny_albef.load_albef_state_dict(state, name="extra.pth")
    assert "box_head.weight" in caplog.text


def test_safetensors_and_pickled_objects(tmp_path, tiny_albef):
    from safetensors.torch import save_file

    state = {key: value.contiguous() for key, value in tiny_albef.state_dict().items()}
    save_file(state, tmp_path / "albef.safetensors")
    assert read_state_dict(str(tmp_path / "albef.safetensors")).keys() == state.keys()
    torch.save({"model": state, "args": argparse.Namespace(lr=1e-5)}, tmp_path / "objects.pth")
    with pytest.raises(CheckpointError, match=r"objects\.pth holds Python objects"):
        read_state_dict(str(tmp_path / "objects.pth"))


def test_offline_without_weights_the_error_says_how_to_get_them(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the"]))
    with pytest.raises(CheckpointError, match=r"checkpoint file not found: .*ALBEF.pth.*github.com/salesforce/ALBEF"):
        AlbefGroundingModel.from_checkpoint(str(tmp_path / "ALBEF.pth"), text_encoder=str(vocab))
    torch.save({"model": {"temp": torch.tensor(0.07)}}, tmp_path / "ALBEF.pth")
    with pytest.raises(OSError, match="cannot load the BERT vocabulary 'no-such-user/bert'"):
        AlbefGroundingModel.from_checkpoint(str(tmp_path / "ALBEF.pth"), text_encoder="no-such-user/bert")


def test_texts_are_cls_then_words_without_sep_and_long_ones_are_cut_once_warned(tiny_albef, caplog):
    tokens = tiny_albef.tokenize(["the red circle", "the"])
    cls_id, sep_id = tiny_albef.tokenizer.cls_token_id, tiny_albef.tokenizer.sep_token_id
    assert tokens["input_ids"][:, 0].tolist() == [cls_id, cls_id]
    assert sep_id not in tokens["input_ids"].tolist()[0]
    assert tokens["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    with caplog.at_level(logging.WARNING):
        long = tiny_albef.tokenize(["the red circle " * 20, "the blue square " * 20])
    assert long["input_ids"].shape[1] == 16  # max_text_length of the tiny model
    assert caplog.text.count("cut to the model's limit") == 1
    assert tiny_albef.text_tokenizer.truncated == 2


def test_a_vocabulary_that_does_not_fit_the_checkpoint_is_an_error(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the"]))
    torch.save({"model": {"text_encoder.bert.embeddings.word_embeddings.weight": torch.zeros(30522, 8)}}, tmp_path / "ALBEF.pth")
    with pytest.raises(CheckpointError, match=r"has \d+ tokens but .*ALBEF.pth's word embeddings have 30522 rows"):
        AlbefGroundingModel.from_checkpoint(str(tmp_path / "ALBEF.pth"), text_encoder=str(vocab))


def write_vocabulary(path, words: list[str]) -> list[str]:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    path.write_text("\n".join(tokens) + "\n")
    return tokens


def test_a_vocab_txt_file_gives_every_word_its_line_number(tmp_path):
    tokens = write_vocabulary(tmp_path / "vocab.txt", ["the", "red", "circle", "##s"])
    tokenizer = bert_tokenizer(str(tmp_path / "vocab.txt"))  # transformers 5 ignores BertTokenizer(vocab_file=...)
    assert len(tokenizer) == len(tokens)
    assert tokenizer.encode("The red circles", add_special_tokens=False) == [5, 6, 7, 8]
    assert tokenizer.cls_token_id == 2 and tokenizer.pad_token_id == 0


def test_a_vocab_txt_with_a_repeated_line_is_refused(tmp_path):
    write_vocabulary(tmp_path / "vocab.txt", ["the", "red", "the"])
    with pytest.raises(OSError, match=r"vocab\.txt gives a vocabulary of 7 tokens from 8 lines"):
        bert_tokenizer(str(tmp_path / "vocab.txt"))


def test_a_checkpoint_of_other_sizes_loads_with_every_size_read_from_the_file(tmp_path):
    """An ALBEF-family file narrower and shallower than ViT-B + BERT-base, with other feed-forward and projection widths."""
    tokens = write_vocabulary(tmp_path / "vocab.txt", ["the", "red", "circle"])
    sizes = dict(
        patch_size=16,
        vision_width=64,
        vision_layers=2,
        vision_heads=1,
        vision_mlp_width=96,
        text_width=128,
        text_layers=4,
        text_heads=2,
        text_intermediate_width=192,
        fusion_layer=2,
        vocab_size=len(tokens),
        max_positions=40,
        embed_dim=48,
    )
    state = random_state_dict(released_albef_shapes(AlbefConfig(**sizes), grid=4))
    torch.save({"model": state, "epoch": 0}, tmp_path / "small.pth")
    model = AlbefGroundingModel.from_checkpoint(
        str(tmp_path / "small.pth"), text_encoder=str(tmp_path / "vocab.txt"), image_size=64, gradcam_layer=2, dropout=0.0
    )
    assert {key: getattr(model.config, key) for key in sizes} == sizes  # heads: width / 64, as in ViT and BERT
    assert model.config.dropout == 0.0
    torch.testing.assert_close(
        model.state_dict()["text_encoder.encoder.layer.3.intermediate.dense.weight"],
        state["text_encoder.bert.encoder.layer.3.intermediate.dense.weight"],
    )
    out = model.eval().gradcam(
        model.encode_images(torch.randn(2, 3, 64, 64)), model.tokenize(["the red circle", "the"]), create_graph=False
    )
    assert out.maps.shape == (2, 4, 4) and torch.isfinite(out.maps).all()


def test_weights_saved_in_the_released_layout_load_back_into_the_same_model(tmp_path):
    """The path of the dry run's ALBEF.pth: momentum copies, queues and MLM head written, then from_checkpoint."""
    from support.released_checkpoints import save_released_albef

    torch.manual_seed(0)
    model = AlbefGroundingModel.tiny(["the", "red", "circle"], image_size=64, vision_width=64, text_width=64, heads=1).eval()
    vocabulary = model.tokenizer.get_vocab()
    (tmp_path / "vocab.txt").write_text("\n".join(sorted(vocabulary, key=vocabulary.get)) + "\n")
    save_released_albef(model, tmp_path / "ALBEF.pth", queue=16)
    saved = torch.load(tmp_path / "ALBEF.pth", weights_only=True)["model"]
    assert "text_encoder_m.bert.encoder.layer.3.output.dense.weight" in saved and saved["image_queue"].shape == (64, 16)
    loaded = AlbefGroundingModel.from_checkpoint(
        str(tmp_path / "ALBEF.pth"), text_encoder=str(tmp_path / "vocab.txt"), image_size=64, gradcam_layer=2
    ).eval()
    assert all(parameter.requires_grad and not parameter.is_meta for parameter in loaded.parameters())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)
    images, texts = torch.randn(2, 3, 64, 64), ["the red circle", "circle"]
    torch.testing.assert_close(
        loaded.itm_logits(loaded.encode_images(images), loaded.tokenize(texts)),
        model.itm_logits(model.encode_images(images), model.tokenize(texts)),
    )
