"""The Hydra configs of every command (train, eval, generate, convert, ground, app) and their groups, inside the
package so that an installed synground finds them as a checkout does."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
