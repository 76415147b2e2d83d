import torch

from synground.models.gradcam import attention_gradcam, normalise_cam
from synground.models.losses import amc_loss


def inputs(model, batch=3):
    torch.manual_seed(1)
    images = torch.randn(batch, 3, model.image_size, model.image_size)
    tokens = model.tokenize(["the red circle", "the blue square on the left", "the circle"][:batch])
    return images, tokens


def test_gradcam_gives_one_map_per_item_on_the_patch_grid(tiny_blip):
    images, tokens = inputs(tiny_blip)
    out = tiny_blip.gradcam(tiny_blip.encode_images(images), tokens, create_graph=False)
    assert out.maps.shape == (3, 4, 4)  # 64 px / patch 16
    assert out.itm_logits.shape == (3, 2)
    assert out.maps.abs().sum() > 0


def test_amc_gradient_reaches_vision_and_text_parameters_through_the_map(tiny_blip):
    images, tokens = inputs(tiny_blip)
    cam = tiny_blip.gradcam(tiny_blip.encode_images(images), tokens, create_graph=True)
    masks = torch.zeros(3, 64, 64)
    masks[:, :32, :32] = 1
    # the AMC loss alone (no ITM term): any gradient it gives flows through the Grad-CAM map
    amc_loss(normalise_cam(cam.maps, 64), masks).backward()
    patch = tiny_blip.model.vision_model.embeddings.patch_embedding.weight.grad
    query = tiny_blip.model.text_encoder.encoder.layer[1].crossattention.self.query.weight.grad
    assert patch is not None and patch.abs().sum() > 0
    assert query is not None and query.abs().sum() > 0


def test_evaluation_maps_leave_no_gradient_on_parameters(tiny_blip):
    images, tokens = inputs(tiny_blip)
    tiny_blip.gradcam(tiny_blip.encode_images(images), tokens, create_graph=False)
    assert all(p.grad is None for p in tiny_blip.parameters())


def test_batched_maps_equal_per_sample_maps(tiny_blip):
    tiny_blip.eval()
    images, tokens = inputs(tiny_blip)
    batched = tiny_blip.gradcam(tiny_blip.encode_images(images), tokens, create_graph=False).maps
    for i in range(3):
        single_tokens = tiny_blip.tokenize([["the red circle", "the blue square on the left", "the circle"][i]])
        single = tiny_blip.gradcam(tiny_blip.encode_images(images[i : i + 1]), single_tokens, create_graph=False).maps
        torch.testing.assert_close(single[0], batched[i], rtol=1e-4, atol=1e-4 * batched[i].abs().max().item())


def test_attention_gradcam_ignores_the_image_cls_column_and_padded_text():
    attention = torch.zeros(1, 1, 2, 5)
    grad = torch.ones(1, 1, 2, 5)
    attention[0, 0, 0] = torch.tensor([9.0, 1.0, 0.0, 0.0, 2.0])  # column 0 is the image [CLS]
    attention[0, 0, 1] = torch.tensor([0.0, 0.0, 7.0, 0.0, 0.0])  # a padded text token
    grad[0, 0, 0, 4] = -1.0  # negative gradients are clamped to zero
    cam = attention_gradcam(attention, grad, torch.tensor([[1, 0]]), grid=(2, 2))
    torch.testing.assert_close(cam, torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))  # the padded row does not count


def test_normalised_training_map_spans_zero_to_one():
    cam = normalise_cam(torch.tensor([[[-1.0, 0.5], [1.0, 2.0]]]), size=8)
    assert cam.shape == (1, 8, 8)
    assert cam.min().item() >= 0.0 and abs(cam.max().item() - 1.0) < 1e-5
