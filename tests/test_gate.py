"""The retraining gate's decisions, on figures made up to sit on each side of its thresholds, and on the
figures of stroke-like corrections measured by finetune.evaluate."""

import numpy as np
import pytest
import torch

from finetune import decoy_digits, expert
from finetune.evaluate import map_agreement, map_figures
from finetune.gate import GateConfig, fewest_samples, judge, paired_drop
from finetune.images import resize_map

IGNORE = "attention on ignore pixels of kept-back corrections"
ATTEND = "attention on attend pixels of kept-back corrections"


def figures(served: list[int], candidate: list[int], ignore=None, attend=None) -> dict:
    """ignore, attend: (served, candidate) per-correction mean attention; default 12 corrections unchanged."""
    ignore = ignore or ([0.5] * 12, [0.5] * 12)
    attend = attend or ([0.5] * 12, [0.5] * 12)

    def kept(i: int) -> dict:
        return {
            "accuracy": 1.0,
            "samples": len(ignore[i]),
            "ignore_attention": ignore[i],
            "attend_attention": attend[i],
        }

    return {
        "validation split": {"correct": {"served": served, "candidate": candidate}},
        "check_feedback": {"served": kept(0), "candidate": kept(1)},
    }


def criterion(verdict: dict, name: str) -> dict:
    return next(c for c in verdict["criteria"] if c["name"] == name)


def test_three_images_of_twelve_never_decide():
    d = paired_drop([1] * 12, [1] * 9 + [0] * 3, 0.95)
    assert d["drop"] == 0.25 and d["interval"][0] < 0
    assert judge(figures([1] * 12, [1] * 9 + [0] * 3), ["validation split"], GateConfig())["promote"]


def test_a_clear_fall_beyond_the_margin_refuses_and_says_which_criterion():
    verdict = judge(figures([1] * 180, [1] * 160 + [0] * 20), ["validation split"], GateConfig(max_drop=0.05))
    assert not verdict["promote"] and verdict["decided_by"] == "accuracy on validation split"
    assert "interval" in verdict["criteria"][0]["detail"]


def test_a_fall_within_the_margin_promotes_even_when_it_is_real():
    served, candidate = [1] * 180, [1] * 174 + [0] * 6  # 3.3 points, clearly not chance
    verdict = judge(figures(served, candidate), ["validation split"], GateConfig(max_drop=0.05))
    assert verdict["criteria"][0]["interval"][0] > 0 and verdict["promote"]


def test_every_criterion_says_how_many_it_saw():
    ignore = ([0.6, None, 0.4], [0.5, None, 0.3])  # the second correction decides no ignore pixel
    attend = ([0.2, 0.3, None], [0.4, 0.5, None])
    verdict = judge(figures([1] * 50, [1] * 50, ignore, attend), ["validation split"], GateConfig())
    seen = {c["name"]: c["samples"] for c in verdict["criteria"]}
    assert seen == {"accuracy on validation split": 50, IGNORE: 2, ATTEND: 2}
    assert "on 50 images" in verdict["criteria"][0]["detail"]
    assert all("on 2 corrections" in c["detail"] for c in verdict["criteria"][1:])
    nothing = judge(figures([1] * 50, [1] * 50, ([None], [None]), ([0.2], [0.9])), ["validation split"], GateConfig())
    assert nothing["promote"] and "on 0 corrections" in criterion(nothing, IGNORE)["detail"]


def failing(verdict: dict) -> list[str]:
    return [c["name"] for c in verdict["criteria"] if not c["passed"]]


def test_a_change_of_exactly_the_margin_passes_and_a_step_beyond_it_refuses():
    """Each criterion at its boundary, on figures that move every item alike (the interval is the change itself,
    wholly on the wrong side): a change equal to the margin promotes ("must not fall by more than"), a step
    beyond it refuses, and the verdict names that criterion alone."""
    served = [0.50 + 0.01 * k for k in range(12)]
    cfg = GateConfig(max_drop=0.05, attention_tolerance=0.01)
    for moved, promotes in ((0.01, True), (0.0101, False)):
        rose = judge(figures([1] * 50, [1] * 50, ignore=(served, [s + moved for s in served])), [], cfg)
        fell = judge(figures([1] * 50, [1] * 50, attend=(served, [s - moved for s in served])), [], cfg)
        for verdict, name, change in ((rose, IGNORE, moved), (fell, ATTEND, -moved)):
            c = criterion(verdict, name)
            assert c["change"] == pytest.approx(change, abs=1e-12) and c["samples"] == 12
            assert c["interval"] == pytest.approx([change, change], abs=1e-12)
            assert verdict["promote"] is promotes, (name, moved)
            assert verdict["decided_by"] == ("every criterion passed" if promotes else name)
            assert failing(verdict) == ([] if promotes else [name])
    for wrong, promotes in ((10, True), (11, False)):  # of 200 images: a fall of 0.050, then 0.055
        verdict = judge(figures([1] * 200, [1] * (200 - wrong) + [0] * wrong), ["validation split"], cfg)
        c = criterion(verdict, "accuracy on validation split")
        assert c["drop"] == wrong / 200 and c["interval"][0] > 0  # not chance: the margin alone decides
        assert verdict["promote"] is promotes and failing(verdict) == ([] if promotes else [c["name"]])
        assert verdict["decided_by"] == ("every criterion passed" if promotes else c["name"])


def test_the_first_failing_criterion_in_order_decides():
    served = [0.50 + 0.01 * k for k in range(12)]
    verdict = judge(
        figures([1] * 200, [1] * 160 + [0] * 40, ignore=(served, [s + 0.2 for s in served])),
        ["validation split"],
        GateConfig(),
    )
    assert failing(verdict) == ["accuracy on validation split", IGNORE]
    assert not verdict["promote"] and verdict["decided_by"] == "accuracy on validation split"


def test_the_reported_figures_never_decide():
    """Accuracy, attention IoU and share inside on the kept-back corrections are reported, never judged: all three
    collapse while the attention on decided pixels holds, and the run promotes."""
    check = figures([1] * 50, [1] * 50)["check_feedback"]
    check["served"].update(accuracy=1.0, map_iou=0.9, map_share=0.9, mapped_samples=12)
    check["candidate"].update(accuracy=0.0, map_iou=0.0, map_share=0.0, mapped_samples=12)
    verdict = judge({**figures([1] * 50, [1] * 50), "check_feedback": check}, ["validation split"], GateConfig())
    assert verdict["promote"] and verdict["decided_by"] == "every criterion passed"
    reported = verdict["reported"]
    assert reported["accuracy on kept-back corrections"] == [1.0, 0.0]
    assert reported["attention IoU on decided pixels of kept-back corrections"] == [0.9, 0.0]
    assert reported["attention share inside, on decided pixels of kept-back corrections"] == [0.9, 0.0]
    assert reported["kept-back corrections"] == 12


def test_each_attention_criterion_alone_refuses():
    rng = np.random.default_rng(0)
    served = list(0.3 + 0.2 * rng.random(12))
    worse = {IGNORE: (served, [s + 0.2 for s in served]), ATTEND: (served, [s - 0.2 for s in served])}
    for name, pair in worse.items():
        verdict = judge(
            figures([1] * 50, [1] * 50, **{"ignore" if name == IGNORE else "attend": pair}),
            ["validation split"],
            GateConfig(),
        )
        assert not verdict["promote"] and verdict["decided_by"] == name
        assert [c["passed"] for c in verdict["criteria"]] == [True, name != IGNORE, name != ATTEND]
        lo, hi = criterion(verdict, name)["interval"]
        assert (lo > 0) if name == IGNORE else (hi < 0)


def test_a_change_that_may_be_chance_does_not_refuse():
    # eleven corrections barely moved the right way, one far the wrong way: the mean rose, the interval spans 0
    served = [0.5] * 12
    verdict = judge(figures([1] * 50, [1] * 50, ignore=(served, [0.49] * 11 + [3.5])), [], GateConfig())
    c = criterion(verdict, IGNORE)
    assert c["change"] > 0.2 and c["interval"][0] < 0 < c["interval"][1] and verdict["promote"]
    again = judge(figures([1] * 50, [1] * 50, ignore=(served, [0.49] * 11 + [3.5])), [], GateConfig())
    assert criterion(again, IGNORE)["interval"] == c["interval"]  # seeded: the same figures, the same verdict


def test_a_handful_never_refuses_on_a_point_estimate():
    assert fewest_samples(0.95) == 6 and fewest_samples(0.99) == 8
    for n in range(1, fewest_samples(0.95)):  # every one of them moved far the wrong way
        bad = ([0.1 + 0.01 * k for k in range(n)], [0.9] * n)
        verdict = judge(figures([1] * n, [0] * n, ignore=bad, attend=bad[::-1]), ["validation split"], GateConfig())
        assert verdict["promote"], n
        assert all("too few" in c["detail"] for c in verdict["criteria"])
    six = ([0.1 + 0.01 * k for k in range(6)], [0.9] * 6)
    assert not judge(figures([1] * 6, [1] * 6, ignore=six), [], GateConfig())["promote"]


def issue_case() -> tuple[torch.Tensor, ...]:
    """Four decoy-digits training images, corrected as people paint (an Ignore stroke over the decoy, one to three
    Attend strokes on the digit, the rest untouched), with the served map (on the decoy, and warm over the middle
    of the canvas) and a candidate's (off the decoy, on the digit): served, candidate (4 x 1 x 16 x 16, a
    model's map size), maps, decided (4 x 1 x 32 x 32)."""
    split = decoy_digits.build("train")
    pick = [0, 1, 2, 3]
    middle = torch.zeros(32, 32)
    middle[4:28, 4:28] = 1
    served = 0.15 + 0.45 * middle + 0.75 * split.decoys[pick]  # 0.6 over the middle, 0.9 on the decoy
    candidate = 0.25 + 0.6 * split.masks[pick]  # 0.85 on the digit, 0.25 elsewhere
    maps, decided = zip(
        *(
            expert.strokes(split.masks[i, 0].numpy() > 0, split.decoys[i, 0].numpy() > 0, served[j, 0].numpy(), seed=i)
            for j, i in enumerate(pick)
        )
    )
    small = (16, 16)
    return (
        resize_map(served, small),
        resize_map(candidate, small),
        torch.from_numpy(np.stack(maps))[:, None],
        torch.from_numpy(np.stack(decided))[:, None].float(),
    )


def kept_back(attention: torch.Tensor, maps: torch.Tensor, decided: torch.Tensor) -> dict:
    """finetune.evaluate's figures (per_map) of a model that gives these maps and classifies every image right."""
    return {"accuracy": 1.0, "samples": len(maps), **map_figures(map_agreement(attention, maps, decided), True)}


def test_four_good_stroke_like_corrections_promote():
    """The case that refused: the candidate moved attention off the Ignore stroke and onto the Attend strokes of
    four kept-back corrections, while its IoU with the whole painted map fell."""
    served, candidate, maps, decided = issue_case()
    whole = torch.ones_like(decided)  # every pixel counted, as when the mask was not sent
    iou = [map_figures(map_agreement(m, maps, whole))["map_iou"] for m in (served, candidate)]
    assert iou[1] < iou[0] - 0.05  # the whole-map IoU fell
    check = {"served": kept_back(served, maps, decided), "candidate": kept_back(candidate, maps, decided)}
    verdict = judge({**figures([1] * 180, [1] * 180), "check_feedback": check}, ["validation split"], GateConfig())
    assert verdict["promote"], verdict
    ignore, attend = criterion(verdict, IGNORE), criterion(verdict, ATTEND)
    assert ignore["samples"] == attend["samples"] == 4
    assert ignore["change"] < -0.3 and ignore["interval"][1] < 0  # fell, and not by chance
    assert attend["change"] > 0.1 and attend["interval"][0] > 0  # rose, and not by chance
    reported = verdict["reported"]["attention IoU on decided pixels of kept-back corrections"]
    assert reported[1] > reported[0]  # on the decided pixels the IoU rose
