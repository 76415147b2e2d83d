"""A trained model as a self-contained directory others can load, with a model card, and its upload to the Hub.

    synground-export logs/shapes/runs/<date>/checkpoints/epoch004.ckpt exports/shapes-blip-tiny
    synground-export <checkpoint> <directory> --push-to-hub <owner>/<name>

BLIP is written in the transformers format (`BlipForImageTextRetrieval.from_pretrained(directory)` loads it), ALBEF as
a state dict in the released key layout (model.safetensors, and albef.pth for the original ALBEF code). Beside the
weights: synground.json (what `Grounder.load(directory)` needs: Grad-CAM layer, input size, normalisation), the run's
metrics.json and training-data manifests, and README.md, the model card.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from synground import runs
from synground.inference.export_format import ARCHITECTURES, FORMAT, SETTINGS_FILE, checksums
from synground.inference.grounder import Grounder

log = logging.getLogger(__name__)


def export_model(checkpoint: str | Path, output_dir: str | Path, overwrite: bool = False) -> Path:
    """Write the model of a train.py checkpoint into `output_dir`. The directory is written beside it under another
    name and renamed at the end, so a failed export leaves neither a partial directory nor a changed old export."""
    checkpoint, output_dir = Path(checkpoint).expanduser(), Path(output_dir).expanduser()
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} exists: choose another directory or pass --overwrite")
    if output_dir.exists():
        check_replaceable(output_dir, checkpoint)
    grounder = Grounder.from_checkpoint(checkpoint, device="cpu")
    architecture = next((name for name, kind in ARCHITECTURES.items() if isinstance(grounder.net, kind)), None)
    if architecture is None:
        raise TypeError(f"cannot export {type(grounder.net).__name__}: only {sorted(ARCHITECTURES)} models")
    run_dir = runs.run_dir_of(checkpoint)
    partial = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)

    try:
        settings = {
            "format": FORMAT,
            "architecture": architecture,
            "image_size": grounder.image_size,
            "mean": list(grounder.mean),
            "std": list(grounder.std),
            **grounder.net.save_export(partial),
            "files": checksums(partial),
            "checkpoint": str(checkpoint),
            "global_step": grounder.global_step,
        }
        (partial / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
        if runs.metrics_path(run_dir).is_file():
            shutil.copy(runs.metrics_path(run_dir), runs.metrics_path(partial))
        if (run_dir / "data_manifests").is_dir():
            shutil.copytree(run_dir / "data_manifests", partial / "data_manifests")
        (partial / "README.md").write_text(model_card(partial, settings, run_dir, export_command(checkpoint, output_dir)))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if output_dir.exists():
        shutil.rmtree(output_dir)
    partial.rename(output_dir)
    return output_dir


def check_replaceable(output_dir: Path, checkpoint: Path) -> None:
    """--overwrite replaces an earlier export, nothing else: not a folder holding the checkpoint or its training run
    (exporting into the run directory would delete the run), not a folder that is not an export."""
    target, run_dir = output_dir.resolve(), runs.run_dir_of(checkpoint).resolve()
    if target == run_dir or target in run_dir.parents or target in checkpoint.resolve().parents:
        raise FileExistsError(
            f"--overwrite would replace {output_dir}, which holds the checkpoint's training run {run_dir}: "
            "export into another directory (e.g. exports/<name>)"
        )
    if not (output_dir / SETTINGS_FILE).is_file():
        raise FileExistsError(
            f"{output_dir} exists and is not a synground export (no {SETTINGS_FILE}); --overwrite only replaces an "
            "earlier export: choose another directory or remove it yourself"
        )


def export_command(checkpoint: Path, output_dir: Path) -> str:
    return shlex.join(["synground-export", str(checkpoint), str(output_dir)])


def train_command(run_dir: Path) -> str | None:
    overrides = runs.overrides_path(run_dir)
    if not overrides.is_file():
        return None
    return shlex.join(["python", "train.py", *OmegaConf.load(overrides)])


def model_card(directory: Path, settings: dict[str, Any], run_dir: Path, command: str) -> str:
    """README.md of an export: how to load it, what it was trained on (with the shard sets' lineage), its metrics and
    the commands that made it."""
    config = runs.run_config(Path(settings["checkpoint"]))
    architecture = settings["architecture"]
    lines = [
        "---",
        "library_name: synground",
        "tags: [visual-grounding, grad-cam, image-text-matching, synground]",
        "---",
        f"# {directory.name.removesuffix('.partial')}",
        "",
        (
            f"A {architecture.upper()} image-text matching model fine-tuned for visual grounding with "
            "synground (SynGround, arXiv 2403.13804): its Grad-CAM map on text layer "
            f"{settings['gradcam_layer']}'s cross-attention points at the phrase's region."
        ),
        "",
        "## Loading",
        "",
        "```python",
        "from synground import Grounder",
        "grounder = Grounder.load('<this directory>')",
        "[result] = grounder('photo.jpg', 'the red circle')  # result.point, result.score, result.heatmap",
        "```",
        "",
    ]
    if architecture == "blip":
        lines += [
            (
                "transformers alone: `BlipForImageTextRetrieval.from_pretrained('<this directory>')` and "
                "`AutoTokenizer.from_pretrained('<this directory>')`."
            ),
        ]
    else:
        lines += [
            (
                "The original ALBEF code (github.com/salesforce/ALBEF): `torch.load('albef.pth')['model']` in the released "
                "key layout, loaded with `load_state_dict(state_dict, strict=False)`; the momentum encoders and queues are "
                "not included (call `model.copy_params()` before fine-tuning with that code). The vocabulary is vocab.txt."
            ),
        ]
    lines += [
        "",
        (
            f"Inputs: square {settings['image_size']} px images (bicubic resize), normalised with mean "
            f"{settings['mean']} and std {settings['std']}."
        ),
        "",
        "## Training data",
        "",
        *training_data_lines(config, directory),
        "",
        "## Metrics",
        "",
        *metrics_lines(runs.metrics_path(directory)),
        "",
        "## How it was made",
        "",
        (
            f"- Training: `{train_command(run_dir) or 'unknown (the run directory has no .hydra/overrides.yaml)'}` "
            f"(run directory `{run_dir}`, checkpoint `{Path(settings['checkpoint']).name}`, step {settings['global_step']})"
        ),
        f"- Export: `{command}`",
        "",
    ]
    return "\n".join(lines)


def training_data_lines(config: Any, directory: Path) -> list[str]:
    data = config.get("data") or {}
    train = data.get("train") or {}
    lines = []
    if "synthetic_ratio" in data:
        lines.append(f"Synthetic share of each training batch: {data.synthetic_ratio}.")
    for domain in ("synthetic", "real"):
        sources = train.get(domain) or []
        for source in [sources] if isinstance(sources, str) else sources:
            if isinstance(source, str):
                lines.append(f"- {domain}: shards `{source}`")
            else:
                described = {key: value for key, value in source.items() if key != "_target_" and not isinstance(value, dict)}
                lines.append(f"- {domain}: generated on the fly by `{source.get('_target_')}` {described}")
    manifests = sorted((directory / "data_manifests").glob("*.json"))
    if manifests:
        lines += ["", "Shard sets (their manifests are in data_manifests/):", ""]
    for path in manifests:
        record = json.loads(path.read_text())
        totals = record.get("totals") or {}
        lines.append(
            f"- `{path.name}`: {totals.get('samples', '?')} samples in {len(record.get('shards', []))} shards, "
            f"{'complete' if record.get('complete') else 'INCOMPLETE'}; made by `{record.get('command') or 'unknown'}`"
        )
    return lines or ["Not recorded in the run's config."]


def metrics_lines(path: Path) -> list[str]:
    if not path.is_file():
        return ["No metrics.json in the run directory."]
    metrics = json.loads(path.read_text())
    rows = [(name, value) for name, value in sorted(metrics.items()) if "/pointing_game/" in name]
    lines = ["Pointing game (fraction of phrases whose map maximum lies inside a ground-truth box):", ""]
    lines += ["| split | pointing game |", "|---|---|"] + [f"| {name} | {value:.4f} |" for name, value in rows]
    return [*lines, "", "Every metric of the run is in metrics.json."]


def push_to_hub(directory: str | Path, repo_id: str, private: bool = False, token: str | None = None, api: Any = None) -> str:
    """Upload an export directory to the Hugging Face Hub (a model repository, created if missing); returns the commit
    URL. The login is huggingface_hub's (`hf auth login` or HF_TOKEN) unless `token` is given."""
    directory = Path(directory)
    if not (directory / SETTINGS_FILE).is_file():
        raise FileNotFoundError(f"{directory} is not a synground export (no {SETTINGS_FILE}): export it first")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, repo_type="model", folder_path=str(directory), commit_message=f"synground export {directory.name}"
    )
    return str(getattr(commit, "commit_url", commit))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a train.py checkpoint (<run dir>/checkpoints/*.ckpt)")
    parser.add_argument("output_dir", help="the export directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace output_dir if it exists")
    parser.add_argument("--push-to-hub", metavar="OWNER/NAME", help="then upload it to this Hugging Face Hub repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository private")
    args = parser.parse_args(argv)
    directory = export_model(args.checkpoint, args.output_dir, overwrite=args.overwrite)
    print(f"exported to {directory} (model card: {directory / 'README.md'})")
    if args.push_to_hub:
        print(f"uploaded: {push_to_hub(directory, args.push_to_hub, private=args.private)}")


if __name__ == "__main__":
    main()
