"""synground: learning visual grounding from synthetic data (SynGround) with PyTorch Lightning."""
