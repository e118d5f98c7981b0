"""The retraining gate's decisions, on figures made up to sit on each side of its thresholds."""

from finetune.gate import GateConfig, judge, paired_drop


def figures(served: list[int], candidate: list[int], iou=(0.3, 0.6), share=(0.4, 0.7)) -> dict:
    def kept(i: int) -> dict:
        return {"map_iou": iou[i], "map_share": share[i], "accuracy": 1.0, "samples": 10}

    return {
        "validation split": {"correct": {"served": served, "candidate": candidate}},
        "check_feedback": {"served": kept(0), "candidate": kept(1)},
    }


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


def test_attention_that_falls_on_the_kept_back_corrections_refuses():
    verdict = judge(figures([1] * 50, [1] * 50, iou=(0.6, 0.4)), ["validation split"], GateConfig())
    assert not verdict["promote"] and verdict["decided_by"] == "attention IoU on kept-back corrections"
    assert verdict["reported"]["accuracy on kept-back corrections"] == [1.0, 1.0]  # reported, not decisive
