"""Training: one generic loop and the objectives it optimises."""

from poisonlab.train.data import PairTensors, dataset_images, pair_tensors
from poisonlab.train.dist import DistInfo, init_from_env
from poisonlab.train.fit import fit, train_classifier, train_clip, train_ssl
from poisonlab.train.loop import Objective, TrainConfig, Trainer, TrainResult
from poisonlab.train.objectives import ClipObjective

__all__ = ["ClipObjective", "DistInfo", "Objective", "PairTensors", "TrainConfig", "TrainResult", "Trainer",
           "dataset_images", "fit", "init_from_env", "pair_tensors", "train_classifier", "train_clip", "train_ssl"]
