import numpy as np
import pytest

from synground.data import GenerationRequest, TripletGenerator
from synground.shapes import ShapesGenerator
from synground.shapes.world import COLOURS, SHAPES


def scenes(style, n=40, size=96):
    return ShapesGenerator(style, image_size=size).generate([GenerationRequest(f"k{i}", i) for i in range(n)])


def test_same_seed_same_scene_and_different_seeds_differ():
    a, b = ShapesGenerator("textured").scene("a", 7), ShapesGenerator("textured").scene("a", 7)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.regions == b.regions
    assert (
        a.caption != ShapesGenerator("textured").scene("a", 8).caption
        or a.regions != ShapesGenerator("textured").scene("a", 8).regions
    )


def test_scenes_have_two_to_five_shapes_with_unique_phrases_inside_the_image():
    for sample in scenes("clean"):
        assert 2 <= len(sample.regions) <= 5
        phrases = [r.phrase for r in sample.regions]
        assert len(set(phrases)) == len(phrases)
        assert all(p in sample.caption.replace("a ", "the ", 1) or p.split("the ", 1)[1] in sample.caption for p in phrases)
        for region in sample.regions:
            x0, y0, x1, y1 = region.boxes[0]
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96


def test_boxes_are_exact_the_named_colour_fills_the_box_centre():
    for sample in scenes("clean", n=20):
        pixels = np.asarray(sample.image)
        for region in sample.regions:
            colour = next(name for name in COLOURS if name in region.phrase.split())
            x0, y0, x1, y1 = region.boxes[0]
            centre = pixels[int((y0 + y1) / 2), int((x0 + x1) / 2)]
            assert np.abs(centre.astype(int) - COLOURS[colour]).max() < 10, region.phrase


def test_the_two_styles_are_different_domains():
    clean, textured = scenes("clean", n=5), scenes("textured", n=5)
    assert all(s.source == "shapes-clean" for s in clean) and all(s.source == "shapes-textured" for s in textured)
    # same seeds, same layout and text; different pixels: a background of plain grey against noise
    assert [s.regions for s in clean] == [s.regions for s in textured]
    assert np.asarray(clean[0].image)[0].std() < 1 and np.asarray(textured[0].image)[0].std() > 5


def test_it_is_a_triplet_generator_with_provenance():
    generator = ShapesGenerator()
    assert isinstance(generator, TripletGenerator)
    assert generator.scene("k", 3).provenance == {
        "generator": "shapes",
        "version": 1,
        "seed": 3,
        "style": "clean",
        "image_size": 128,
    }


def test_the_shared_colour_phrases_are_those_a_colour_alone_cannot_ground():
    """phrases="shared_colour" keeps, of the same scene, exactly the phrases whose colour a shape of another kind
    shares: read off the full scene's phrases, with the same image and boxes."""
    full, shared = ShapesGenerator("textured", image_size=64), ShapesGenerator("textured", image_size=64, phrases="shared_colour")
    kept = total = 0
    for seed in range(60):
        everything, subset = full.scene("k", seed), shared.scene("k", seed)
        assert np.array_equal(np.asarray(everything.image), np.asarray(subset.image))
        words = [region.phrase.split() for region in everything.regions]
        named = [(next(w for w in ws if w in COLOURS), ws[-1] if ws[-1] not in ("left", "right") else ws[-4]) for ws in words]
        expected = [
            region
            for region, (colour, kind) in zip(everything.regions, named)
            if any(c == colour and k != kind for c, k in named)
        ]
        assert subset.regions == expected
        kept, total = kept + len(expected), total + len(everything.regions)
    assert 0.1 < kept / total < 0.6  # both kinds of phrase are common


@pytest.mark.parametrize("words, changed", [("shape", {"shape"}), ("colour", {"colour"}), ("both", {"shape", "colour"})])
def test_paraphrases_replace_the_chosen_words_by_synonyms_and_leave_the_scene_as_it_was(words, changed):
    from synground.shapes.world import SYNONYMS

    for seed in range(20):
        plain, paired = ShapesGenerator().scene("k", seed), ShapesGenerator(paraphrases=words).scene("k", seed)
        assert np.array_equal(np.asarray(plain.image), np.asarray(paired.image))
        assert [r.phrase for r in plain.regions] == [r.phrase for r in paired.regions]
        for region in paired.regions:
            before, after = region.phrase.split(), region.paraphrase.split()
            swaps = [(a, b) for a, b in zip(before, after) if a != b]
            assert len(before) == len(after) and len(swaps) == len(changed)
            assert all(b in SYNONYMS[a] for a, b in swaps)
            assert {"shape" if a in SHAPES else "colour" for a, _ in swaps} == changed
    with pytest.raises(ValueError, match=r"unknown shapes paraphrases 'noun'; choose one of \('shape', 'colour', 'both'\)"):
        ShapesGenerator(paraphrases="noun")


def test_the_selfeq_experiment_s_vocabulary_holds_every_synonym():
    """A paraphrase word missing from a tiny model's vocabulary would be read as [UNK]."""
    from hydra import compose, initialize_config_dir

    from synground.conf import CONFIG_DIR
    from synground.shapes.world import SYNONYMS

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=shapes_selfeq"])
    words = set(cfg.model.net.vocabulary)
    assert {word for synonyms in SYNONYMS.values() for word in synonyms} <= words
    assert set(SYNONYMS) <= words and cfg.data.train.synthetic[0].paraphrases == "shape"
