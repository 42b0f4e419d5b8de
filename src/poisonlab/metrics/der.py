"""The defense effectiveness rating (DER), as BackdoorBench defines it.

Wu et al., "BackdoorBench: A Comprehensive Benchmark of Backdoor Learning" (NeurIPS 2022
Datasets and Benchmarks, arXiv:2206.12654): with the undefended model's clean accuracy and ASR
and the defended model's,

    DER = [max(0, ΔASR) − max(0, ΔCA) + 1] / 2,   ΔASR = ASR_before − ASR_after,
                                                  ΔCA = CA_before − CA_after,

all as shares in [0, 1]. DER is 1 for a defense that removes the whole ASR at no cost in
accuracy, 0.5 for one that changes nothing, and 0 for one that costs all accuracy and removes
nothing. A defense that *raises* ASR or accuracy is not rewarded or penalised for it.
"""

from __future__ import annotations

import math


def defense_effectiveness(ca_before: float, asr_before: float, ca_after: float, asr_after: float) -> float:
    """DER of a defense from the undefended model's CA / ASR to the defended one's (shares in
    [0, 1]); NaN when any input is NaN (an ASR without non-target images)."""
    values = (ca_before, asr_before, ca_after, asr_after)
    if any(v is None or math.isnan(v) for v in values):
        return math.nan
    return (max(0.0, asr_before - asr_after) - max(0.0, ca_before - ca_after) + 1.0) / 2.0
