import torch
import torch.nn.functional as F

COLOURS = {"red": (1.0, 0.0, 0.0), "blue": (0.0, 0.0, 1.0)}


def test_tiny_models_learn_image_text_matching_from_scratch(tiny_model):
    """A colour word against a plain image: the tiny model's default init must let ITM learn within 80 steps."""
    generator = torch.Generator().manual_seed(0)
    names = list(COLOURS)
    optimizer = torch.optim.AdamW(tiny_model.parameters(), lr=1e-3)

    def batch(size=16):
        colour = torch.randint(0, 2, (size,), generator=generator)
        images = torch.stack([torch.tensor(COLOURS[names[i]])[:, None, None].expand(3, 64, 64) for i in colour])
        images = images + 0.1 * torch.randn(images.shape, generator=generator)
        texts = [f"the {names[i]} circle" for i in colour] + [f"the {names[1 - i]} circle" for i in colour]
        labels = torch.cat([torch.ones(size), torch.zeros(size)]).long()
        return torch.cat([images, images]), texts, labels

    for _ in range(80):
        images, texts, labels = batch()
        loss = F.cross_entropy(tiny_model.itm_logits(tiny_model.encode_images(images), tiny_model.tokenize(texts)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, texts, labels = batch(64)
    with torch.no_grad():
        logits = tiny_model.itm_logits(tiny_model.encode_images(images), tiny_model.tokenize(texts))
    assert (logits.argmax(1) == labels).float().mean() > 0.9
