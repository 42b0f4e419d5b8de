"""Training: one generic loop and the objectives it optimises."""

from poisonlab.train.clip_run import train_clip
from poisonlab.train.data import PairTensors, dataset_images, pair_tensors
from poisonlab.train.dist import DistInfo, init_from_env
from poisonlab.train.loop import Objective, TrainConfig, Trainer, TrainResult
from poisonlab.train.objectives import ClipObjective

__all__ = ["ClipObjective", "DistInfo", "Objective", "PairTensors", "TrainConfig", "TrainResult", "Trainer",
           "dataset_images", "init_from_env", "pair_tensors", "train_clip"]
