"""Evaluation of model inversion attacks: the evaluation model, privacy/utility metrics and the
feature-space analysis of the MIDRE paper (Sec. 3.2)."""

from midre.evaluation.eval_model import (
    EvalModelConfig,
    EvaluationModel,
    eval_model_key,
    evaluate_reconstructions,
    load_evaluation_model,
    train_evaluation_model,
)
from midre.evaluation.features import FeatureSpaceResult, convex_hull_2d, feature_space_analysis, pca_2d
from midre.evaluation.judges import (
    DEFAULT_JUDGE_ARCHS,
    JudgePanel,
    default_judge_configs,
    pixel_std,
    record_fields,
)
from midre.evaluation.metrics import (
    Accuracy,
    AttackAccuracy,
    KnnDistance,
    Metric,
    RunStats,
    accuracy,
    attack_accuracy,
    delta_feature,
    knn_distance,
    mean_std,
    nearest_identity_match,
    nearest_private_sq_dist,
    summarize,
    topk_hits,
    tradeoff_delta,
)

__all__ = [
    "DEFAULT_JUDGE_ARCHS",
    "Accuracy",
    "AttackAccuracy",
    "EvalModelConfig",
    "EvaluationModel",
    "FeatureSpaceResult",
    "JudgePanel",
    "KnnDistance",
    "Metric",
    "RunStats",
    "accuracy",
    "attack_accuracy",
    "convex_hull_2d",
    "default_judge_configs",
    "delta_feature",
    "eval_model_key",
    "evaluate_reconstructions",
    "feature_space_analysis",
    "knn_distance",
    "load_evaluation_model",
    "mean_std",
    "nearest_identity_match",
    "nearest_private_sq_dist",
    "pca_2d",
    "pixel_std",
    "record_fields",
    "summarize",
    "topk_hits",
    "train_evaluation_model",
    "tradeoff_delta",
]
