from synground.callbacks.pointing_game import PointingGame, PointingGameCallback, pointing_game_hits

__all__ = ["PointingGame", "PointingGameCallback", "pointing_game_hits"]
