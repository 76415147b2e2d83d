"""What many tests share: the repository's root, the tiny models, running the entry points as a user does."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
