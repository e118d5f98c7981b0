"""The retraining gate: does a candidate fix what the corrections are about, without breaking the rest?

Criteria, each judged on its own, in this order:
1. Accuracy on each trusted set (data feedback cannot touch: the model's own validation split, a gate
   folder) must not fall by more than max_drop. The fall is measured over the same images (served right
   and candidate wrong counts +1, the reverse -1) with a paired confidence interval (normal approximation).
2. Attention on the kept-back corrections, on the pixels their experts decided: the candidate's mean
   attention on a correction's Ignore pixels must not rise, and on its Attend pixels must not fall, by more
   than attention_tolerance. Each is measured over the corrections that have such pixels, paired (candidate
   minus served, per correction), with a bootstrap interval: the corrections resampled BOOTSTRAP_RESAMPLES
   times with a fixed seed, so the same figures always get the same verdict.
A criterion refuses only when the change goes the wrong way by more than its margin, its interval lies wholly
on the wrong side of zero (it is not chance), and it saw at least fewest_samples(confidence) images or
corrections: below that not even items that all moved the wrong way tell a change from chance (a sign test's
smallest p-value, 2 * 0.5**n, exceeds 1 - confidence), while the interval of a handful of items is too narrow
to say so (on two corrections that both moved, every resample moved). So a handful never refuses a run.

Reported, never deciding: accuracy on the kept-back corrections (they are training images, where a shortcut
the corrections are meant to remove still works), and the attention's IoU and share on their decided pixels
(a few strokes are a poor region to intersect a map with: a candidate that moved its attention off the Ignore
stroke and onto the Attend strokes can lose IoU with the whole painted map).
"""

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


@dataclass
class GateConfig:
    max_drop: float = 0.05  # largest fall of accuracy on a trusted set that still promotes
    confidence: float = 0.95  # of the interval each criterion is judged by
    attention_tolerance: float = 0.01  # largest wrong-way change of mean attention on decided pixels that promotes


BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
# a change equal to its margin passes: figures that differ from it by float rounding only count as equal
ROUNDING = 1e-9


def fewest_samples(confidence: float) -> int:
    """The fewest paired items on which any test could tell a change from chance at this confidence: n items
    that all moved the wrong way have a two-sided sign-test p-value of 2 * 0.5**n."""
    return math.ceil(math.log2(2 / (1 - confidence)) - ROUNDING)


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
        "samples": n,
    }


def paired_change(served: list[float | None], candidate: list[float | None], confidence: float) -> dict:
    """The mean change candidate - served over the items both have a figure for (None: the item has none), with
    a percentile bootstrap interval over those items (resampled in pairs)."""
    pairs = np.array([(s, c) for s, c in zip(served, candidate) if s is not None and c is not None], float)
    if len(pairs) == 0:
        return {"served": None, "candidate": None, "change": 0.0, "interval": [0.0, 0.0], "samples": 0}
    diffs = pairs[:, 1] - pairs[:, 0]
    draws = np.random.default_rng(BOOTSTRAP_SEED).integers(0, len(diffs), (BOOTSTRAP_RESAMPLES, len(diffs)))
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(diffs[draws].mean(1), [tail, 1 - tail])
    return {
        "served": float(pairs[:, 0].mean()),
        "candidate": float(pairs[:, 1].mean()),
        "change": float(diffs.mean()),
        "interval": [float(lo), float(hi)],
        "samples": len(diffs),
    }


def _refuses(worse: float, margin: float, wrong_side: bool, samples: int, confidence: float) -> bool:
    """worse: the change in its wrong direction (positive = worse); wrong_side: the interval lies wholly there."""
    return worse - margin > ROUNDING and wrong_side and samples >= fewest_samples(confidence)


def _few(samples: int, what: str, confidence: float) -> str:
    need = fewest_samples(confidence)
    return f"; too few {what} to refuse on ({need} needed at {confidence:.0%})" if samples < need else ""


ATTENTION = (
    # (figure, pixels, direction that is worse: +1 a rise, -1 a fall)
    ("ignore_attention", "ignore", +1),
    ("attend_attention", "attend", -1),
)


def _attention_criterion(kept: dict, figure: str, pixels: str, sign: int, cfg: GateConfig) -> dict:
    c = paired_change(kept["served"][figure], kept["candidate"][figure], cfg.confidence)
    n = c["samples"]
    lo, hi = c["interval"]
    name = f"attention on {pixels} pixels of kept-back corrections"
    if n == 0:
        detail = f"nothing to judge on 0 corrections: none of the kept-back corrections decides {pixels} pixels"
    else:
        bound, side = (f"+{cfg.attention_tolerance}", "above") if sign > 0 else (f"-{cfg.attention_tolerance}", "below")
        detail = (
            f"{c['served']:.3f} -> {c['candidate']:.3f} on {n} corrections; change {c['change']:+.3f}, "
            f"{cfg.confidence:.0%} bootstrap interval [{lo:+.3f}, {hi:+.3f}]; refused {side} {bound} with the "
            f"interval {side} 0{_few(n, 'corrections', cfg.confidence)}"
        )
    wrong_side = lo > 0 if sign > 0 else hi < 0
    return {
        "name": name,
        "passed": not _refuses(sign * c["change"], cfg.attention_tolerance, wrong_side, n, cfg.confidence),
        "detail": detail,
        **c,
    }


def change_of(criterion: dict) -> tuple[float, float, float]:
    """A criterion of judge's verdict as its change, candidate minus served, with its interval: accuracy is judged
    on its fall (served minus candidate), turned round here so that every criterion reads the same way."""
    low, high = criterion["interval"]
    if "drop" in criterion:
        return 0.0 - criterion["drop"], 0.0 - high, 0.0 - low  # 0.0 - x: no -0.0 for no change
    return criterion["change"], low, high


def judge(figures: dict, trusted: list[str], cfg: GateConfig) -> dict:
    """{"promote", "decided_by", "criteria": [{"name", "passed", "detail", "samples", ...}], "reported"} from
    candidate.score's figures."""
    criteria = []
    for name in trusted:
        d = paired_drop(figures[name]["correct"]["served"], figures[name]["correct"]["candidate"], cfg.confidence)
        lo, hi = d["interval"]
        criteria.append(
            {
                "name": f"accuracy on {name}",
                "passed": not _refuses(d["drop"], cfg.max_drop, lo > 0, d["samples"], cfg.confidence),
                "detail": f"{d['served']:.3f} -> {d['candidate']:.3f} on {d['images']} images; fall {d['drop']:+.3f}, "
                f"{cfg.confidence:.0%} interval [{lo:+.3f}, {hi:+.3f}]; refused above {cfg.max_drop} with the "
                f"interval above 0{_few(d['samples'], 'images', cfg.confidence)}",
                **d,
            }
        )
    kept = figures["check_feedback"]
    criteria += [_attention_criterion(kept, figure, pixels, sign, cfg) for figure, pixels, sign in ATTENTION]
    failed = [c for c in criteria if not c["passed"]]
    return {
        "promote": not failed,
        "decided_by": failed[0]["name"] if failed else "every criterion passed",
        "criteria": criteria,
        "reported": {
            "accuracy on kept-back corrections": [kept["served"]["accuracy"], kept["candidate"]["accuracy"]],
            "attention IoU on decided pixels of kept-back corrections": [
                kept["served"].get("map_iou"),
                kept["candidate"].get("map_iou"),
            ],
            "attention share inside, on decided pixels of kept-back corrections": [
                kept["served"].get("map_share"),
                kept["candidate"].get("map_share"),
            ],
            "kept-back corrections": kept["served"].get("mapped_samples", 0),
        },
    }
