from synground.callbacks.data_issues import DataIssueCounts
from synground.callbacks.gallery import GradCamGallery
from synground.callbacks.pointing_game import PointingGame, PointingGameCallback, pointing_game_hits, predicted_points
from synground.callbacks.random_state import RandomState
from synground.callbacks.requeue import Preempted, Requeue
from synground.callbacks.step_timer import StepTimer

__all__ = [
    "DataIssueCounts",
    "GradCamGallery",
    "PointingGame",
    "PointingGameCallback",
    "Preempted",
    "RandomState",
    "Requeue",
    "StepTimer",
    "pointing_game_hits",
    "predicted_points",
]
