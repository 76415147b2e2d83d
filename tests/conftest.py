import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest

import support
from support import generate_shapes, run_ok
from synground.generation.tiny import write_tiny_components
from synground.models import AlbefGroundingModel, BlipGroundingModel


@pytest.fixture
def tiny_blip() -> BlipGroundingModel:
    return support.tiny_blip()


@pytest.fixture
def tiny_albef() -> AlbefGroundingModel:
    return support.tiny_albef()


@pytest.fixture(params=["blip", "albef"])
def tiny_model(request):
    """Each tiny grounding model in turn: tests using it hold for every GroundingModel."""
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="session")
def tiny_components(tmp_path_factory) -> dict[str, str]:
    """Random-weight tiny stand-ins of every generation model (LLM, Stable Diffusion, GLIGEN, detectors, CLIP), saved
    the way the hub stores them, by name: written once per session."""
    return write_tiny_components(tmp_path_factory.mktemp("tiny_components"))


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> dict:
    """Two short train.py runs as a user makes them, shared by the Grounder, ground.py and export tests:
    "blip", blip_tiny on generated shard sets (its run keeps their manifests), tested on a held-out shard set; and
    "albef", albef_tiny (dropout 0.1, so evaluation must turn it off) on the shapes world. Each entry is
    (run directory, checkpoint of the weights the run tested)."""
    root = tmp_path_factory.mktemp("trained_runs")
    for style, count in (("clean", 16), ("textured", 8)):
        generate_shapes(root / style, style, count, 8, "report=false")
    small = [
        "data.image_size=64",
        "model.net.patch_size=8",
        "data.num_workers=0",
        "data.batches_per_epoch=2",
        "data.batch_size=4",
    ]
    run_ok(
        "train.py",
        "data=shards",
        f"data.train.synthetic=[{root}/clean]",
        f"+data.test.held_out={root}/textured",
        *small,
        "trainer.max_epochs=1",
        f"hydra.run.dir={root}/blip",
        cwd=root,
    )
    run_ok(
        "train.py",
        "experiment=shapes",
        "model=albef_tiny",
        *small,
        "trainer.max_epochs=1",
        "data.val.shapes_textured.num_samples=8",
        "data.test.shapes_clean.num_samples=12",
        "data.test.shapes_textured.num_samples=12",
        f"hydra.run.dir={root}/albef",
        cwd=root,
    )
    runs = {}
    for name in ("blip", "albef"):
        checkpoints = root / name / "checkpoints"
        best = sorted(checkpoints.glob("epoch*.ckpt"))
        runs[name] = (root / name, best[-1] if best else checkpoints / "last.ckpt")
    return runs
