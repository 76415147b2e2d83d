from synground.extras import require

require("train", "synground.callbacks")

from synground.callbacks.data_issues import DataIssueCounts
from synground.callbacks.gallery import GradCamGallery
from synground.callbacks.map_metrics import GroundingMetrics, GroundingMetricsCallback
from synground.callbacks.random_state import RandomState
from synground.callbacks.requeue import Preempted, Requeue
from synground.callbacks.step_timer import StepTimer

__all__ = [
    "DataIssueCounts",
    "GradCamGallery",
    "GroundingMetrics",
    "GroundingMetricsCallback",
    "Preempted",
    "RandomState",
    "Requeue",
    "StepTimer",
]
