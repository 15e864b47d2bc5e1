"""The demo's choice of recipe variant and layout from measured timings (pure functions, given timings)."""

from __future__ import annotations

import math

import pytest

from simdino.fmnist import adapt, report

SLOW, FAST = adapt.Layout(2, 1, False), adapt.Layout(1, 1, False)
STANDARD = adapt.Variant("standard", {}, ((200, 4.0), (400, 5.0), (800, 6.0), (1600, 7.5)))
LEAN = adapt.Variant("lean", {"batch_size_per_gpu": 64}, ((400, 4.5), (1600, 7.0)))


def test_predicted_gain_follows_the_measured_points_and_never_extrapolates_upwards():
    assert adapt.predicted_gain(STANDARD, 400) == 5.0
    assert adapt.predicted_gain(STANDARD, math.sqrt(400 * 800)) == pytest.approx(5.5)  # linear in log(its)
    assert adapt.predicted_gain(STANDARD, 5000) == 7.5
    assert adapt.predicted_gain(STANDARD, 100) == pytest.approx(2.0)  # in proportion below the first point


def test_a_slow_machine_gets_the_variant_that_learns_most_in_its_steps():
    # 540 s: at 0.6 s per step standard fits 900 iterations (+6.25), lean at 0.35 s fits 1542 (+6.9)
    choice = adapt.choose_variant({"standard": (FAST, 0.6), "lean": (FAST, 0.35)}, 540.0, (STANDARD, LEAN))
    assert choice.variant is LEAN and choice.iterations == 1542 and choice.predicted_gain > 6.8
    line = choice.reason(540.0)
    assert (
        "'lean'" in line and "0.35 s per step" in line and "~1542 iterations" in line and "standard:" in line
    )
    # a fast machine: standard runs to its last point, lean's extra steps are worth less
    fast = adapt.choose_variant({"standard": (FAST, 0.2), "lean": (FAST, 0.15)}, 540.0, (STANDARD, LEAN))
    assert fast.variant is STANDARD and fast.iterations == 2700


def test_unmeasured_variants_are_only_run_when_asked_for():
    unmeasured = adapt.Variant("new", {"depth": 4}, ())
    choice = adapt.choose_variant(
        {"standard": (FAST, 1.0), "new": (FAST, 0.1)}, 540.0, (STANDARD, unmeasured)
    )
    assert choice.variant is STANDARD and "new: 0.10 s/step, ~5400 its, gain not measured" in choice.reason(
        540.0
    )
    asked = adapt.choose_variant({"new": (FAST, 0.1)}, 540.0, (unmeasured,))
    assert (
        asked.variant is unmeasured and math.isnan(asked.predicted_gain) and "as asked" in asked.reason(540.0)
    )


def test_layout_weighs_threads_against_the_loader():
    # 2 cores: 2 threads share the cores with the worker; 1 thread leaves the worker a core of its own
    compute = {
        adapt.Layout(2, 1, False): 1.0,
        adapt.Layout(1, 1, False): 1.35,
        adapt.Layout(2, 0, False): 1.0,
    }
    assert adapt.best_layout(compute, loader_seconds=0.5, cores=2) == (adapt.Layout(2, 1, False), 1.25)
    # a heavy loader: the worker on its own core hides it behind a slower step
    assert adapt.best_layout(compute, loader_seconds=1.3, cores=2) == (adapt.Layout(1, 1, False), 1.35)
    assert adapt.candidate_layouts(2, bf16=True) == [
        adapt.Layout(2, 1, True),
        adapt.Layout(2, 0, True),
        adapt.Layout(1, 1, True),
        adapt.Layout(1, 0, True),
    ]
    assert adapt.candidate_layouts(4, bf16=False, threads=3, num_workers=2) == [adapt.Layout(3, 2, False)]


def test_evaluation_shrinks_to_what_the_machine_embeds_in_its_time():
    # 30 s for two networks at 2x the timed forward: 150k embeddable at 50 us per image, all 70k of them
    assert adapt.evaluation_sizes(5e-5, 30.0) == (None, None)
    assert adapt.evaluation_sizes(2e-3, 30.0) == (3000, 600)  # 3750 embeddable: 5 bank images per query
    assert adapt.evaluation_sizes(1.0, 30.0) == (1000, 200)  # never below


def test_printed_table_has_the_reference_run_and_says_when_a_subset_was_used():
    results = {
        "knn_top1": 72.0,
        "random_init_knn_top1": 64.5,
        "pixels_knn_top1": 83.0,
        "iterations": 900,
        "images_seen": 57600,
        "train_images": 60000,
        "test_images": 10000,
        "knn_train_images": 5000,
        "knn_test_images": 1000,
    }
    table = report.summary_table(results, adapt.README_REFERENCE)
    assert "+7.50" in table and "74.61%" in table and "+6.41" in table and "900 / 57600" in table
    assert adapt.README_REFERENCE.source in table
    lean = report.summary_table(results, adapt.LEAN_REFERENCE)  # its own bank and queries, not the user's
    assert "5000 / 1000" in lean and "15500 / 3100" in lean and "+11.84" in lean
    assert "not measured" in report.summary_table(results, None)
    assert "random 5000 of the 60000 training images and 1000 of the 10000 test" in report.subset_note(
        results
    )
    assert report.subset_note({**results, "knn_train_images": 60000, "knn_test_images": 10000}) is None


def test_plan_run_times_this_machine_and_chooses():
    from PIL import Image

    from simdino.fmnist import recipe

    images = [(Image.new("L", (28, 28), color=i * 10), i) for i in range(16)]
    base = {**recipe.DEMO_RECIPE, "depth": 1, "hidden_dim": 32, "z_dim": 16}
    variants = (STANDARD, adapt.Variant("lean", {"local_crops_number": 1}, ()))
    plan = adapt.plan_run(540.0, images, base, cores=1, bf16=False, variants=variants)
    assert plan.choice.variant is STANDARD and set(plan.choice.alternatives) == {"standard", "lean"}
    assert "lean: " in plan.choice.reason(540.0) and "gain not measured" in plan.choice.reason(540.0)
    assert plan.choice.layout in (adapt.Layout(1, 1, False), adapt.Layout(1, 0, False))
    assert plan.choice.step_seconds > 0 and plan.choice.iterations == int(540.0 / plan.choice.step_seconds)
    assert plan.eval_seconds_per_image > 0 and plan.probe_seconds > 0
    asked = adapt.plan_run(
        540.0, images, base, cores=1, bf16=False, threads=1, num_workers=0, variant="lean", variants=variants
    )
    assert asked.choice.variant.name == "lean" and asked.choice.layout == adapt.Layout(1, 0, False)
    record = adapt.plan_record(asked, 540.0)
    assert record["variant"] == "lean" and record["predicted_gain"] is None and "as asked" in record["reason"]
