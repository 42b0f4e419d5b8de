"""The metrics poisonlab reports, each defined once: ``poisonlab list --metrics`` prints them and
the README's "The metrics, once" table is kept equal to them (tests/test_cli_poison.py)."""

from __future__ import annotations

METRICS: dict[str, str] = {
    "CA": "clean accuracy: zero-shot top-1 on the clean test split (CLIP: class names × the template ensemble); "
          "top-1 for classifiers; the linear probe's for SSL encoders (`clean_acc`); a tie for the top class is no "
          "prediction (wrong here, no success in ASR)",
    "ASR": "attack success rate: share of triggered test images *whose true class is not the target* classified "
           "as the target",
    "`asr_all`": "the same over all triggered images, the target class's included (what the PAR code reports)",
    "RA": "robust accuracy: share of those triggered non-target images classified as their *true* class (Pick "
          "your Poison's ARR)",
    "DER": "defense effectiveness rating (BackdoorBench): `[max(0, ΔASR) − max(0, ΔCA) + 1] / 2` against the "
           "undefended model; 0.5 changes nothing, 1 removes all ASR at no cost in CA",
    "Hit@K / MinRank": "text-modality attacks: for each source-class test caption, the 0-based rank `r` of the "
                       "best-ranked target image among all test images (the other images scoring at least as high: ties count against "
                       "it); Hit@K = share with `r < K`, MinRank = mean `r`",
    "FP": "SSL: triggered non-target test images the linear probe assigns to the target class",
    "PL1": "DECREE: the inverted trigger's mask size as a share of the image (small flags a backdoor)",
    "R@K": "retrieval recall: `i2t_r@K` (image → its caption, or one of the same words), `t2i_r@K` (caption → its "
           "image); ties count against the answer",
}
"""Each metric's name (as the README's table writes it) and what it counts."""
