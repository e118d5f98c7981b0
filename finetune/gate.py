"""The retraining gate: does a candidate fix what the corrections are about, without breaking the rest?

Criteria, each judged on its own, in this order:
1. Accuracy on each trusted set (data feedback cannot touch: the model's own validation split, a gate
   folder) must not fall by more than max_drop. The fall is measured over the same images (served right
   and candidate wrong counts +1, the reverse -1) with a paired confidence interval: the candidate is
   refused when the fall exceeds max_drop and the interval lies above zero, i.e. when it fell by more than
   the margin and that is not chance; so a handful of images (3 of 12) never decides.
2. Attention on the kept-back corrections (IoU with the corrected regions, and the share of attention
   inside them) must not fall by more than attention_tolerance.
Accuracy on the kept-back corrections is reported but never decides: they are training images, where a
shortcut the corrections are meant to remove still works.
"""

import math
from dataclasses import dataclass
from statistics import NormalDist


@dataclass
class GateConfig:
    max_drop: float = 0.05  # largest fall of accuracy on a trusted set that still promotes
    confidence: float = 0.95  # of the interval the fall is judged by
    attention_tolerance: float = 0.01  # largest fall of IoU or share-inside on the kept-back corrections


def paired_drop(served: list[int], candidate: list[int], confidence: float) -> dict:
    """The accuracy fall served - candidate over the same images, with its confidence interval (normal
    approximation of the paired differences; exact when they are all equal)."""
    n = len(served)
    diffs = [s - c for s, c in zip(served, candidate)]
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * sd / math.sqrt(n)
    return {
        "served": sum(served) / n,
        "candidate": sum(candidate) / n,
        "drop": mean,
        "interval": [mean - half, mean + half],
        "images": n,
    }


def judge(figures: dict, trusted: list[str], cfg: GateConfig) -> dict:
    """{"promote", "decided_by", "criteria": [{"name", "passed", "detail"}]} from candidate.score's figures."""
    criteria = []
    for name in trusted:
        d = paired_drop(figures[name]["correct"]["served"], figures[name]["correct"]["candidate"], cfg.confidence)
        lo, hi = d["interval"]
        criteria.append(
            {
                "name": f"accuracy on {name}",
                "passed": not (d["drop"] > cfg.max_drop and lo > 0),
                "detail": f"{d['served']:.3f} -> {d['candidate']:.3f} on {d['images']} images; fall {d['drop']:+.3f}, "
                f"{cfg.confidence:.0%} interval [{lo:+.3f}, {hi:+.3f}]; refused above {cfg.max_drop} with the "
                "interval above 0",
                **d,
            }
        )
    kept = figures["check_feedback"]
    for metric, words in (("map_iou", "attention IoU"), ("map_share", "attention share inside")):
        before, after = kept["served"][metric], kept["candidate"][metric]
        criteria.append(
            {
                "name": f"{words} on kept-back corrections",
                "passed": after >= before - cfg.attention_tolerance,
                "detail": f"{before:.3f} -> {after:.3f} on {kept['served']['samples']} corrections, "
                f"refused below {before - cfg.attention_tolerance:.3f}",
                "served": before,
                "candidate": after,
            }
        )
    failed = [c for c in criteria if not c["passed"]]
    return {
        "promote": not failed,
        "decided_by": failed[0]["name"] if failed else "every criterion passed",
        "criteria": criteria,
        "reported": {"accuracy on kept-back corrections": [kept["served"]["accuracy"], kept["candidate"]["accuracy"]]},
    }
