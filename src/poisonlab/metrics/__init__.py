"""Metrics: CA, ASR/asr_all, RA, DER, R@K, Hit@K and MinRank, linear probes."""

from poisonlab.metrics.classification import accuracy, attack_success_rate
from poisonlab.metrics.der import defense_effectiveness
from poisonlab.metrics.evaluator import ClipEvaluator
from poisonlab.metrics.frontier import best_asr_within, pareto_front
from poisonlab.metrics.retrieval import best_target_rank, hit_and_min_rank, recall_at_k
from poisonlab.metrics.zero_shot import zero_shot_predict, zero_shot_weights

__all__ = ["ClipEvaluator", "accuracy", "attack_success_rate", "best_asr_within", "defense_effectiveness", "best_target_rank",
           "hit_and_min_rank", "pareto_front", "recall_at_k", "zero_shot_predict", "zero_shot_weights"]
