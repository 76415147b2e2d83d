import torch

from synground.models import BlipGroundingModel
from synground.models.gradcam import attention_gradcam, normalise_cam
from synground.models.losses import amc_loss

TEXTS = ["the red circle", "the blue square on the left", "the circle"]


def inputs(model, batch=3):
    torch.manual_seed(1)
    images = torch.randn(batch, 3, model.image_size, model.image_size)
    return images, model.encode_texts(model.tokenize(TEXTS[:batch]))


def test_gradcam_gives_one_map_per_item_on_the_patch_grid(tiny_model):
    images, texts = inputs(tiny_model)
    out = tiny_model.gradcam(tiny_model.encode_images(images), texts, create_graph=False)
    assert out.maps.shape == (3, 4, 4)  # 64 px / patch 16
    assert out.itm_logits.shape == (3, 2)
    assert out.maps.abs().sum() > 0


def test_other_input_sizes_give_their_own_grid(tiny_model):
    images = torch.randn(2, 3, 96, 96)  # the model was built for 64 px: position embeddings are resized
    out = tiny_model.gradcam(tiny_model.encode_images(images), tiny_model.tokenize(TEXTS[:2]), create_graph=False)
    assert out.maps.shape == (2, 6, 6)


def patch_and_query_weights(model):
    patch = (
        model.model.vision_model.embeddings.patch_embedding
        if isinstance(model, BlipGroundingModel)
        else model.visual_encoder.patch_embed.proj
    )
    return patch.weight, model.gradcam_attention.query.weight


def test_amc_gradient_reaches_vision_and_text_parameters_through_the_map(tiny_model):
    images, texts = inputs(tiny_model)
    cam = tiny_model.gradcam(tiny_model.encode_images(images), texts, create_graph=True)
    masks = torch.zeros(3, 64, 64)
    masks[:, :32, :32] = 1
    # the AMC loss alone (no ITM term): any gradient it gives flows through the Grad-CAM map
    amc_loss(normalise_cam(cam.maps, 64), masks).backward()
    for weight in patch_and_query_weights(tiny_model):
        assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_evaluation_maps_leave_no_gradient_on_parameters(tiny_model):
    images, texts = inputs(tiny_model)
    tiny_model.gradcam(tiny_model.encode_images(images), texts, create_graph=False)
    assert all(p.grad is None for p in tiny_model.parameters())


def test_batched_maps_equal_per_sample_maps(tiny_model):
    tiny_model.eval()
    images, texts = inputs(tiny_model)
    batched = tiny_model.gradcam(tiny_model.encode_images(images), texts, create_graph=False)
    for i in range(3):
        single_texts = tiny_model.encode_texts(tiny_model.tokenize([TEXTS[i]]))
        single = tiny_model.gradcam(tiny_model.encode_images(images[i : i + 1]), single_texts, create_graph=False)
        torch.testing.assert_close(single.maps[0], batched.maps[i], rtol=1e-4, atol=1e-4 * batched.maps[i].abs().max().item())
        torch.testing.assert_close(single.itm_logits[0], batched.itm_logits[i], rtol=1e-4, atol=1e-5)


def test_attention_gradcam_ignores_the_image_cls_column_and_padded_text():
    attention = torch.zeros(1, 1, 2, 5)
    grad = torch.ones(1, 1, 2, 5)
    attention[0, 0, 0] = torch.tensor([9.0, 1.0, 0.0, 0.0, 2.0])  # column 0 is the image [CLS]
    attention[0, 0, 1] = torch.tensor([0.0, 0.0, 7.0, 0.0, 0.0])  # a padded text token
    grad[0, 0, 0, 4] = -1.0  # negative gradients are clamped to zero
    cam = attention_gradcam(attention, grad, torch.tensor([[1, 0]]))
    torch.testing.assert_close(cam, torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))  # the padded row does not count


def test_normalised_training_map_spans_zero_to_one():
    cam = normalise_cam(torch.tensor([[[-1.0, 0.5], [1.0, 2.0]]]), size=8)
    assert cam.shape == (1, 8, 8)
    assert cam.min().item() >= 0.0 and abs(cam.max().item() - 1.0) < 1e-5


def test_albef_amc_gradients_with_fused_attention_below_the_gradcam_layer_equal_all_eager(tiny_albef):
    """Fused kernels where only a first backward is needed, eager ones where the AMC loss needs a second: same gradients."""
    tiny_albef.eval()
    masks = torch.zeros(3, 64, 64)
    masks[:, :32, 16:48] = 1

    def amc_gradients():
        tiny_albef.zero_grad()
        images, texts = inputs(tiny_albef)
        cam = tiny_albef.gradcam(tiny_albef.encode_images(images), texts, create_graph=True)
        amc_loss(normalise_cam(cam.maps, 64), masks).backward()
        return {name: p.grad.clone() for name, p in tiny_albef.named_parameters() if p.grad is not None}

    fused = amc_gradients()
    attention = [m for m in tiny_albef.modules() if type(m).__name__ == "MultiHeadAttention"]
    assert sum(not m.eager for m in attention) >= 2  # the text layers below, and layer 2's self-attention, stay fused
    for module in attention:
        module.eager = True
    eager = amc_gradients()
    assert fused.keys() == eager.keys() and len(fused) > 20
    for name in fused:
        torch.testing.assert_close(fused[name], eager[name], rtol=1e-4, atol=1e-6, msg=name)
