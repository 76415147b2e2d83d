"""GroundingModule's training step with every loss switched on, for each model."""

import pytest
import torch

from synground.models import GroundingModule


def batch(size=4, image_size=64):
    torch.manual_seed(0)
    masks = torch.zeros(size, 32, 32)
    masks[:, 8:24, 8:24] = 1
    return {
        "images": torch.randn(size, 3, image_size, image_size),
        "masks": masks,
        "texts": ["the red circle", "the blue square", "the red circle", "the square on the left"][:size],
    }


@pytest.mark.parametrize("itc_weight, hard_negatives", [(1.0, True), (0.0, True), (0.0, False)])
def test_training_step_combines_itm_itc_and_amc_into_one_finite_loss(tiny_model, itc_weight, hard_negatives):
    module = GroundingModule(tiny_model, amc_weight=1.0, itc_weight=itc_weight, hard_negatives=hard_negatives)
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    module.log_dict = lambda values, **kwargs: logged.update(values)
    loss = module.training_step(batch(), 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert ("train/itc" in logged) == (itc_weight > 0)
    expected = logged["train/itm"] + itc_weight * logged.get("train/itc", 0.0) + logged["train/amc"]
    torch.testing.assert_close(loss, expected)
    assert sum(p.grad.abs().sum() for p in tiny_model.parameters() if p.grad is not None) > 0


@pytest.mark.parametrize(
    "amc_weight, itc_weight, hard_negatives", [(1.0, 0.0, False), (1.0, 0.0, True), (1.0, 1.0, True), (0.0, 0.0, True)]
)
def test_every_trainable_parameter_takes_part_in_the_loss_with_dropout_off(tiny_model, amc_weight, itc_weight, hard_negatives):
    """What DDP needs without find_unused_parameters (the projections are frozen when ITC is off). With dropout off
    the attention above the Grad-CAM layer could take a fused kernel, which has no double backward for the AMC loss."""
    module = GroundingModule(tiny_model, amc_weight=amc_weight, itc_weight=itc_weight, hard_negatives=hard_negatives).eval()
    module.log = module.log_dict = lambda *args, **kwargs: None
    module.training_step(batch(), 0).backward()
    trainable = {name: p for name, p in module.named_parameters() if p.requires_grad}
    assert [name for name, p in trainable.items() if p.grad is None] == []
    frozen = {id(p) for p in tiny_model.contrastive_parameters()}
    assert bool(frozen) and all((id(p) in frozen) == (itc_weight == 0) for p in module.parameters() if not p.requires_grad)


def test_a_model_without_contrastive_features_asks_to_switch_them_off(tiny_blip):
    tiny_blip.contrastive_features = lambda image_embeds, texts: None
    module = GroundingModule(tiny_blip, itc_weight=0.0, hard_negatives=True)
    module.log = module.log_dict = lambda *args, **kwargs: None
    with pytest.raises(ValueError, match="hard_negatives=false"):
        module.training_step(batch(), 0)


def test_evaluation_encodes_each_image_once_and_gives_the_same_maps(tiny_model):
    module = GroundingModule(tiny_model).eval()
    data = batch()
    shared = {**data, "images": data["images"][[0, 1, 3]], "image_index": torch.tensor([0, 1, 0, 2])}  # items 0, 2: one image
    separate = {**data, "images": data["images"][[0, 1, 0, 3]]}  # the same image copied for each of its phrases
    calls = []
    encode = tiny_model.encode_images
    tiny_model.encode_images = lambda images: calls.append(len(images)) or encode(images)
    maps = module.evaluation_maps(shared)["maps"]
    assert calls == [3]
    torch.testing.assert_close(maps, module.evaluation_maps(separate)["maps"], rtol=1e-4, atol=1e-6)


def test_a_collated_evaluation_batch_holds_each_image_once(tiny_model):
    from synground.data.transforms import collate

    pixels = [torch.full((64, 64, 3), value, dtype=torch.uint8) for value in (10, 20)]
    items = [
        {
            "image": pixels[i],
            "image_key": f"img{i}",
            "text": text,
            "boxes": torch.zeros(1, 4),
            "mask": torch.zeros(8, 8),
            "original_size": torch.tensor([64, 64]),
            "original_boxes": torch.zeros(1, 4),
            "key": f"img{i}-{j}",
        }
        for j, (i, text) in enumerate([(0, "the red circle"), (1, "the square"), (0, "the circle")])
    ]
    collated = collate(items)
    assert collated["images"].shape == (2, 3, 64, 64) and collated["image_index"].tolist() == [0, 1, 0]
    training = collate([{k: v for k, v in item.items() if k != "image_key"} for item in items])  # flips may differ
    assert training["images"].shape == (3, 3, 64, 64) and training["image_index"].tolist() == [0, 1, 2]


def test_uint8_images_straight_from_a_dataloader_are_refused_with_what_to_do(tiny_blip):
    data = batch()
    data["images"] = torch.zeros(4, 3, 64, 64, dtype=torch.uint8)
    with pytest.raises(TypeError, match="on_after_batch_transfer"):
        GroundingModule(tiny_blip).evaluation_maps(data)


PARAPHRASES = ["the red circle on the left", None, "the red square", "the square on the right"]


def paired_batch():
    return {**batch(), "paraphrases": list(PARAPHRASES)}


def recording(module: GroundingModule) -> dict:
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    module.log_dict = lambda values, **kwargs: logged.update(values)
    return logged


def test_selfeq_trains_the_usual_losses_on_the_paraphrases_and_compares_each_with_its_phrase(tiny_model):
    """Items with a paraphrase take ITM on it; L_selfeq compares the phrase's and the paraphrase's training maps on
    the same image, at the Grad-CAM grid, as maps computed here one by one give them."""
    from synground.models.gradcam import normalise_cam
    from synground.models.losses import selfeq_loss

    module = GroundingModule(tiny_model, amc_weight=0.0, selfeq_weight=1.0, hard_negatives=False).eval()  # dropout off
    logged = recording(module)
    data = paired_batch()
    loss = module.training_step(data, 0)
    loss.backward()
    torch.testing.assert_close(loss, logged["train/itm"] + logged["train/selfeq"])
    assert "train/amc" not in logged and logged["train/selfeq_pairs"] == 3 and logged["train/selfeq_batches_without_pairs"] == 0
    rows = [0, 2, 3]
    embeds = tiny_model.encode_images(data["images"])[rows]
    maps = {}
    for name, texts in (("phrases", [data["texts"][i] for i in rows]), ("paraphrases", [PARAPHRASES[i] for i in rows])):
        cam = tiny_model.gradcam(embeds, tiny_model.encode_texts(tiny_model.tokenize(texts)), create_graph=False)
        maps[name] = normalise_cam(cam.maps, cam.maps.shape[-1])
    expected = selfeq_loss(maps["phrases"], maps["paraphrases"])
    torch.testing.assert_close(logged["train/selfeq"].detach(), expected["total"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logged["train/selfeq_sim"].detach(), expected["sim"], rtol=1e-4, atol=1e-6)
    trainable = {name: p for name, p in module.named_parameters() if p.requires_grad}
    assert [name for name, p in trainable.items() if p.grad is None] == []  # DDP needs every one used


def test_selfeq_acts_in_its_first_epochs_and_a_batch_without_paraphrases_is_counted(tiny_model, monkeypatch):
    module = GroundingModule(tiny_model, amc_weight=0.0, selfeq_weight=1.0, hard_negatives=False).eval()
    logged = recording(module)
    module.training_step(batch(), 0)  # epoch 0, no paraphrase in the batch: ITM only, counted
    assert "train/selfeq" not in logged and logged["train/selfeq_batches_without_pairs"] == 1
    monkeypatch.setattr(GroundingModule, "current_epoch", property(lambda self: 1))
    logged.clear()
    loss = module.training_step(paired_batch(), 0)  # the released code's schedule: the later epochs train ITM alone
    assert "train/selfeq" not in logged and "train/selfeq_pairs" not in logged
    torch.testing.assert_close(loss, logged["train/itm"])
    every_epoch = GroundingModule(tiny_model, amc_weight=0.0, selfeq_weight=1.0, selfeq_epochs=None).eval()
    logged = recording(every_epoch)
    every_epoch.training_step(paired_batch(), 0)
    assert logged["train/selfeq_pairs"] == 3


def test_amc_and_selfeq_together_sum_with_their_weights(tiny_model):
    module = GroundingModule(tiny_model, amc_weight=0.5, selfeq_weight=2.0, hard_negatives=False).eval()
    logged = recording(module)
    loss = module.training_step(paired_batch(), 0)
    torch.testing.assert_close(loss, logged["train/itm"] + 0.5 * logged["train/amc"] + 2.0 * logged["train/selfeq"])


@pytest.mark.parametrize("setting, value", [("selfeq_epochs", 0), ("selfeq_weight", -1.0), ("selfeq_tau", 0.0)])
def test_bad_selfeq_settings_are_named(tiny_blip, setting, value):
    with pytest.raises(ValueError, match=rf"model.{setting}={value!r}"):
        GroundingModule(tiny_blip, **{setting: value})
