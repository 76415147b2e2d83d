"""Which of pyproject.toml's extras each part of synground needs, and the error that names the one to install.

`pip install synground` installs the core: what `synground.data` needs (the sample format, shards, streams, the shapes
world and the datamodule). Everything else sits in an extra, by use:

    models       synground.models, synground.inference (the Grounder), synground.runs
    train        the commands (synground.cli, training, evaluation), synground.callbacks, synground.results,
                 encoder pretraining, overlays; includes models
    generation   synground.generation; includes train
    app          the web demo; includes train
    s3, gcs      s3:// and gs:// shard sets

A package or module that needs an extra calls `require` before its imports, so a missing stack fails at once with the
extra to install instead of a ModuleNotFoundError from deep inside, e.g.

    MissingExtra: synground.models needs transformers, safetensors, which synground's 'models' extra installs:
    pip install 'synground[models]'
"""

from __future__ import annotations

import importlib.util

# extra -> (the extras it includes, the modules it installs that synground imports); tests/test_extras.py checks this
# table against pyproject.toml's optional dependencies and against every import in synground/
EXTRAS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "models": ((), ("transformers", "tokenizers", "safetensors", "huggingface_hub", "omegaconf")),
    "train": (("models",), ("hydra", "hydra_plugins.hydra_submitit_launcher", "wandb", "torchmetrics", "matplotlib")),
    "generation": (("train",), ("diffusers", "open_clip", "torchvision")),
    "app": (("train",), ("gradio",)),
    "s3": ((), ("s3fs",)),
    "gcs": ((), ("gcsfs",)),
}


class MissingExtra(ModuleNotFoundError):
    """An optional stack is not installed; the message names the extra that installs it."""


def modules_of(extra: str) -> tuple[str, ...]:
    """The modules `extra` provides, with those of the extras it includes."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; synground's extras are {', '.join(EXTRAS)}")
    included, modules = EXTRAS[extra]
    return tuple(module for name in included for module in modules_of(name)) + modules


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False


def require(extra: str, user: str) -> None:
    """Raise MissingExtra, naming `user` (what needs it) and the extra, when a module of `extra` is not installed.

    Only looks the modules up (no import), so a package that calls this on import pays microseconds."""
    missing = [module for module in modules_of(extra) if not installed(module)]
    if missing:
        raise MissingExtra(
            f"{user} needs {', '.join(missing)}, which synground's '{extra}' extra installs: pip install 'synground[{extra}]'",
            name=missing[0],
        )
