"""synground: learning visual grounding from synthetic data (SynGround) with PyTorch Lightning."""

__all__ = ["Grounder", "Grounding"]


def __getattr__(name: str):
    # imported on first use: `import synground.data` (as in every data worker) need not load the models
    if name in __all__:
        from synground.inference import grounder

        return getattr(grounder, name)
    raise AttributeError(f"module 'synground' has no attribute {name!r}")
