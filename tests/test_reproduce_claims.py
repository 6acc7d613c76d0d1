"""Claims judged over seeds: paired differences, a Student's t interval and a verdict, computed from known numbers."""
import json

import pytest

from pixelwise.reproduce import Claim, Experiment, Planned, summarise, verdict, write_overview


def test_verdict_from_known_per_seed_differences():
    # mean 0.02, sd 0.01, n 3: t(0.975, 2) = 4.302653, half-width 4.302653 * 0.01 / sqrt(3) = 0.024841
    v = verdict([0.01, 0.02, 0.03], lower=False)
    assert v["difference_mean"] == pytest.approx(0.02) and v["seeds"] == 3
    assert v["interval"] == pytest.approx([0.02 - 0.0248414, 0.02 + 0.0248414], abs=1e-6)
    assert v["verdict"] == "inconclusive"  # the interval contains 0
    assert verdict([0.05, 0.06, 0.07], lower=False)["verdict"] == "held"
    assert verdict([-0.05, -0.06, -0.07], lower=False)["verdict"] == "reversed"
    # Lower is better (an error): a negative difference is the paper's side.
    assert verdict([-0.05, -0.06, -0.07], lower=True)["verdict"] == "held"
    assert verdict([0.05, 0.06, 0.07], lower=True)["verdict"] == "reversed"
    one = verdict([0.3], lower=False)  # one seed: no interval, nothing concluded however large
    assert one["interval"] is None and one["verdict"] == "inconclusive" and one["difference_mean"] == 0.3
    assert verdict([0.01, 0.02, 0.03], lower=False, level=0.5)["verdict"] == "held"  # a narrower interval


def _results(tmp_path, values: dict[str, list[float]], metric="miou") -> dict:
    (tmp_path / "environment.json").write_text(json.dumps({"cpu": "test cpu", "amx": False, "cpu_count": 2,
                                                            "threads": 2, "torch": "2.x"}))
    return {(name, s): {"metrics": {metric: v, "eval_seconds_per_image": 1.0 + s}, "steps": 10 + s, "params": 5,
                        "folder": str(tmp_path)} for name, vals in values.items() for s, v in enumerate(vals)}


def test_summary_pairs_seeds_and_writes_what_the_issue_names(tmp_path):
    exp = Experiment("toy", "toy", "paper", "miou", 10, runs=(Planned("A", "r"), Planned("B", "r"), Planned("C", "r")),
                     claims=(Claim("A", "B", "A > B"), Claim("B", "C", "B > C"),
                             Claim("A", "C", "cheaper", metric="eval_seconds_per_image")))
    # A beats B on every seed by about 0.1, though the seeds themselves spread far more (pairing is what shows it).
    results = _results(tmp_path, {"A": [0.30, 0.60, 0.45], "B": [0.20, 0.51, 0.34], "C": [0.25, 0.40, 0.70]})
    summary = summarise(exp, 10, 3, results)
    a_b, b_c, cost = summary["claims"]
    assert {"better", "worse", "difference_mean", "interval", "seeds", "verdict"} <= set(a_b)
    assert a_b["differences"] == pytest.approx([0.10, 0.09, 0.11]) and a_b["verdict"] == "held"
    assert b_c["verdict"] == "inconclusive" and b_c["interval"][0] < 0 < b_c["interval"][1]
    assert cost["metric"] == "eval_seconds_per_image" and cost["lower_is_better"] and cost["differences"] == [0, 0, 0]
    assert summary["machine"].startswith("test cpu without AMX") and summary["level"] == 0.95
    assert [r["values"] for r in summary["runs"]][0] == [0.30, 0.60, 0.45]
    from pixelwise.reproduce import summary_markdown

    text = summary_markdown(summary)
    assert "| A better than B | A > B | +0.1000 [+0.0752, +0.1248] | 3 | held |" in text
    assert "A better than C (eval_seconds_per_image)" in text
    page = write_overview(tmp_path / "index.html", [summary])
    html = page.read_text()
    assert html.count('<a href="#exp-toy">toy</a>') == 3 and 'id="exp-toy"' in html
    assert '<td class="held">held</td>' in html and "1 of 3 claims held" in html


def test_seeds_that_took_far_fewer_steps_are_flagged(tmp_path):
    from pixelwise.reproduce import slow_seeds, summary_html, summary_markdown

    assert slow_seeds([557, 591, 564]) == [] and slow_seeds([562, 589, 68]) == [2] and slow_seeds([]) == []
    exp = Experiment("toy", "toy", "paper", "miou", 10, runs=(Planned("A", "r"), Planned("B", "r", evaluate="A")),
                     claims=(Claim("A", "B", "A > B"),))
    results = _results(tmp_path, {"A": [0.3, 0.4, 0.5], "B": [0.2, 0.3, 0.4]})
    results[("A", 1)]["steps"] = 5  # seed 1 of A: half the steps of seed 2 (12)
    results[("B", 1)]["steps"] = 5  # an evaluate run: its steps are its source's, never flagged itself
    summary = summarise(exp, 10, 3, results)
    assert [r["slow_seeds"] for r in summary["runs"]] == [[1], []]
    assert "**Warning:** A seed 1 (5 steps against 12) took fewer than 75%" in summary_markdown(summary)
    assert "A seed 1 (5 steps against 12)" in summary_html(summary)
    results[("A", 1)]["steps"] = 11
    assert "Warning" not in summary_markdown(summarise(exp, 10, 3, results))


def test_overview_refuses_to_overwrite_another_file(tmp_path):
    from pixelwise.errors import OutputError

    (tmp_path / "index.html").write_text("<p>mine</p>")
    with pytest.raises(OutputError, match="not a pixelwise report"):
        write_overview(tmp_path / "index.html", [])
    assert (tmp_path / "index.html").read_text() == "<p>mine</p>"
