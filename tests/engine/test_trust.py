"""Trust on kshot trials and in predict: class scores against a literal loop, unknown queries from
outside the trial, per-class results against the confusion matrix, the contract keys of kshot's
JSON, the checkpoint's temperature and unknown threshold in kshot and predict."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch

from helpers import synthetic_bank, tiny_config
from helpers.images import make_image_folder
from fewshot_mann.cli import main as cli
from fewshot_mann.config import EpisodeConfig
from fewshot_mann.engine.checkpoint import save_checkpoint
from fewshot_mann.engine.kshot import support_query_episodes
from fewshot_mann.engine.trainer import new_model
from fewshot_mann.engine import trust
from fewshot_mann.reporting import calibration as cal


def test_class_scores_sum_the_logits_of_each_labels_symbols():
    torch.manual_seed(0)
    groups, size, ways = 3, 4, 5
    logits = torch.randn(2, groups * size)
    digits = np.random.default_rng(0).integers(0, size, (2, ways, groups))
    got = trust.class_scores(logits, digits, size)
    for b in range(2):
        for label in range(ways):
            want = sum(float(logits[b, g * size + digits[b, label, g]]) for g in range(groups))
            assert float(got[b, label]) == pytest.approx(want, abs=1e-5)


def test_unknown_queries_come_from_outside_the_trial_after_its_own_support():
    bank = synthetic_bank(classes=9, per_class=8)
    cfg = EpisodeConfig(ways=4, instances=10)
    seq = trust.unknown_sequences(bank, cfg, shots=2, seed=3, start=0, count=5, queries=2, unknown=3)
    known = support_query_episodes(bank, cfg, shots=2, seed=3, start=0, count=5, queries=2)
    class_of = {bank.images[i].tobytes(): c for c in range(9)
                for i in range(bank.offsets[c], bank.offsets[c] + bank.counts[c])}
    assert seq.images.shape[:2] == (15, 9)
    for e in range(5):
        for r in range(3 * e, 3 * e + 3):
            assert np.array_equal(seq.images[r, :-1], known.images[8 * e, :-1])  # the same support set
            assert class_of[seq.images[r, -1].tobytes()] not in set(seq.classes[r])
    again = trust.unknown_sequences(bank, cfg, shots=2, seed=3, start=2, count=1, queries=2, unknown=3)
    assert np.array_equal(again.images, seq.images[6:9])  # trial i is a function of (seed, i)


def test_per_class_accuracy_is_the_confusion_diagonal_over_its_row():
    scores = np.array([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [0.0, 1.0]])
    known = trust.QueryScores(scores, np.array([0, 0, 1, 1]), np.array([[0, 1], [0, 1], [2, 1], [2, 1]]))
    table, confusion = trust.per_class(known, ["a", "b", "c"])
    # answers: a (right), b (wrong, truth a), c (wrong, truth b), b (right)
    assert confusion["counts"] == [[1, 1, 0], [0, 1, 1], [0, 0, 0]]
    assert table == {"a": {"accuracy": 0.5, "queries": 2}, "b": {"accuracy": 0.5, "queries": 2},
                     "c": {"accuracy": None, "queries": 0}}


def folder_checkpoint(path, calibration: dict | None = None, ways: int = 2):
    cfg = tiny_config()
    cfg.data.dataset, cfg.data.image_size, cfg.data.channels, cfg.data.test_classes = "folder", 8, 3, "all"
    cfg.episodes.ways, cfg.episodes.instances = ways, 4
    cfg.validate()
    torch.manual_seed(0)
    payload = {"config": cfg.to_dict(), "command": None, "model": new_model(cfg).state_dict(), "optimizer": None,
               "step": 0, "episodes_done": 0}
    if calibration is not None:
        payload["calibration"] = calibration
    save_checkpoint(path, payload)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("trust") / "data", classes=5, per_class=6, seed=7)


def kshot_json(ckpt, folder, tmp_path, *extra) -> dict:
    out = tmp_path / "k.json"
    assert cli.main(["kshot", "--checkpoint", str(ckpt), "--dataset", "folder", "--data-root", str(folder["root"]),
                     "--test-classes", "all", "--ways", "2", "--shots", "1", "2", "--queries", "2", "--episodes", "4",
                     "--json", str(out), "--no-progress", "--allow-trained-classes", *extra]) == 0
    return json.loads(out.read_text())


def test_kshot_json_holds_per_class_confusion_calibration_and_open_set(folder, tmp_path, capsys):
    plot = tmp_path / "k.png"
    res = kshot_json(folder_checkpoint(tmp_path / "c.pt"), folder, tmp_path, "--unknown-queries", "3",
                     "--plot", str(plot))
    assert res["baselines"] and plot.stat().st_size > 0
    for row in res["results"]:
        counts = np.array(row["confusion"]["counts"])
        assert row["confusion"]["classes"] == res["class_names"] == sorted(folder["classes"])
        assert counts.sum() == 4 * 2 * 2
        assert np.trace(counts) / counts.sum() == pytest.approx(row["accuracy"])  # the same answers
        for i, name in enumerate(res["class_names"]):
            per = row["per_class"][name]
            assert per["queries"] == counts[i].sum()
            assert per["accuracy"] == (pytest.approx(counts[i, i] / counts[i].sum()) if per["queries"] else None)
        c = row["calibration"]
        assert len(c["bins"]) == 15 and 0 <= c["ece"] <= 1 and c["temperature"] == 1.0
        assert c["ece"] == pytest.approx(c["before"]["ece"])  # no record: temperature 1
        assert "no calibration record" in c["fitted_on"]
        o = row["open_set"]
        assert 0 <= o["auroc"] <= 1 and o["unknown_queries"] == 4 * 3 and o["known_queries"] == 4 * 2 * 2
    assert "AUROC" in capsys.readouterr().out


def test_kshot_reports_after_the_checkpoints_temperature_and_threshold(folder, tmp_path):
    record = cal.Calibration("unit test", 2, (cal.ShotsCalibration(1, 0.25, 1e9), cal.ShotsCalibration(2, 4.0, -1e9)))
    res = kshot_json(folder_checkpoint(tmp_path / "c.pt", record.to_dict()), folder, tmp_path, "--unknown-queries", "2")
    one, two = res["results"]
    assert (one["calibration"]["temperature"], two["calibration"]["temperature"]) == (0.25, 4.0)
    assert one["calibration"]["fitted_on"] == "unit test"
    assert one["calibration"]["ece"] != pytest.approx(one["calibration"]["before"]["ece"])
    # threshold +inf at 1 shot: everything is called unknown; -inf at 2 shots: nothing is
    assert one["open_set"]["known_called_unknown"] == 1.0 and one["open_set"]["unknown_called_unknown"] == 1.0
    assert two["open_set"]["known_called_unknown"] == 0.0 and two["open_set"]["unknown_called_unknown"] == 0.0


def test_fit_calibration_writes_a_record_that_kshot_reads(folder, tmp_path):
    from fewshot_mann.data.folder import load_folder
    from fewshot_mann.engine.calibrate import fit_calibration

    bank = load_folder(folder["root"], 8, 3, progress=False, cache=False).bank
    ckpt_path = folder_checkpoint(tmp_path / "c.pt")
    from fewshot_mann.engine.checkpoint import load_checkpoint, load_model_from_checkpoint
    ckpt = load_checkpoint(ckpt_path)
    model = load_model_from_checkpoint(ckpt, "cpu")
    record = fit_calibration(model, {"data": bank}, EpisodeConfig(ways=2, instances=4), [1], 6, 9, 2, 2,
                             log=lambda *_: None)
    fit = record.for_shots(1)
    assert record.fitted and "data (5 classes)" in record.fitted_on and fit.unknown_threshold is not None
    assert 0 < fit.temperature and 0 <= fit.auroc <= 1


def predict_run(ckpt, tmp_path, capsys, orders: int = 2):
    support = make_image_folder(tmp_path / "support", classes=3, per_class=3, seed=21)
    queries = make_image_folder(tmp_path / "queries", classes=4, per_class=2, seed=22)  # class 4: not in support
    out, table = tmp_path / "p.json", tmp_path / "p.csv"
    summary = tmp_path / "s.json"
    assert cli.main(["predict", "--checkpoint", str(ckpt), "--support", str(support["root"]), "--query",
                     str(queries["root"]), "--orders", str(orders), "--json", str(out), "--csv", str(table),
                     "--summary-json", str(summary)]) == 0
    return (json.loads(out.read_text()), list(csv.DictReader(io.StringIO(table.read_text()))),
            json.loads(summary.read_text()), capsys.readouterr().out, support, queries)


def test_predict_marks_unknown_and_prints_the_summary(tmp_path, capsys):
    record = cal.Calibration("unit test", 3, (cal.ShotsCalibration(3, 2.0, 1e9, 0.8, 0.5, 0.3, 0.7),))
    rows, table, summary, out, support, queries = predict_run(folder_checkpoint(tmp_path / "c.pt", record.to_dict(),
                                                                                ways=3), tmp_path, capsys)
    assert all(r["unknown"] is True for r in rows) and all(t["unknown"] == "true" for t in table)
    assert "UNKNOWN" in out and "8 queries:" in out and "8 unknown" in out
    assert summary["summary"]["unknown"] == 8 and summary["summary"]["queries"] == 8
    assert "right 80 % of the time" in out and "caught 30 %" in out  # what the flags were worth on validation
    # truth from the query sub-folders: 3 support classes plus one outside them (truth "unknown")
    assert set(summary["per_class"]) == set(support["classes"]) | {"unknown"}
    assert summary["per_class"]["unknown"] == {"accuracy": 1.0, "queries": 2}  # called unknown: right
    assert np.array(summary["confusion"]["counts"]).sum() == 8
    assert summary["confusion"]["answers"][-1] == "unknown"


def test_calibration_notes_say_when_fine_tuning_left_the_record_unchecked():
    from fewshot_mann.engine.predict_trust import calibration_notes

    record = cal.Calibration("unit test", 3, (cal.ShotsCalibration(3, 2.0, 1e9, 0.8, 0.5, 0.3, 0.7),))
    fit = record.for_shots(3)
    frozen = calibration_notes(record, fit)
    tuned = calibration_notes(record, fit, finetune=40)
    assert tuned[:-1] == frozen and "right 80 % of the time" in frozen[1]
    assert "--finetune 40" in tuned[-1] and "uncalibrated" in tuned[-1]
    none = cal.checkpoint_calibration({})
    assert calibration_notes(none, none.for_shots(3), finetune=40) == calibration_notes(none, none.for_shots(3))


def test_predict_temperature_changes_probabilities_not_answers(tmp_path, capsys):
    plain, *_ = predict_run(folder_checkpoint(tmp_path / "a.pt", ways=3), tmp_path / "a", capsys, orders=1)
    record = cal.Calibration("unit test", 3, (cal.ShotsCalibration(3, 0.5, -1e9),))
    hot, *_ = predict_run(folder_checkpoint(tmp_path / "b.pt", record.to_dict(), ways=3), tmp_path / "b", capsys, orders=1)
    for p, h in zip(plain, hot):
        assert p["prediction"] == h["prediction"] and p["unknown"] is None and h["unknown"] is False
        names = list(p["probabilities"])
        # one order: softmax(s / 0.5) = p^2 renormalised
        squared = np.array([p["probabilities"][n] for n in names]) ** 2
        assert np.allclose(squared / squared.sum(), [h["probabilities"][n] for n in names], atol=2e-4)


def test_agree_column_is_dropped_when_it_is_the_same_for_every_query():
    from fewshot_mann.engine.predict import format_results

    row = {"query": "q", "prediction": "a", "confidence": 0.9, "low_confidence": False, "order_agreement": 1.0,
           "probabilities": {"a": 0.9, "b": 0.1}}
    assert "agree" not in format_results([row, {**row, "query": "r"}])
    assert "agree" in format_results([row, {**row, "query": "r", "order_agreement": 0.5}])


def test_inspect_for_kshot_or_predict_has_no_training_only_failure(folder, tmp_path, capsys):
    args = ["inspect", str(folder["root"]), "--ways", "5", "--instances", "5", "--test-classes", "0.2", "--no-progress"]
    assert cli.main(args) == 1  # training: 1 held-out class of 5 cannot make a 5-way episode
    assert "training would stop" in capsys.readouterr().out
    assert cli.main(args + ["--for", "kshot", "--shots", "5", "--queries", "1"]) == 0  # 6 images in each of 5 classes
    assert "checked for kshot" in capsys.readouterr().out
    assert cli.main(args + ["--for", "kshot", "--shots", "5", "--queries", "2"]) == 1  # 7 needed
    assert "kshot would stop" in capsys.readouterr().out
    assert cli.main(args + ["--for", "predict"]) == 0


def test_inspect_with_a_checkpoint_reads_at_the_models_resolution(folder, tmp_path, capsys):
    ckpt = folder_checkpoint(tmp_path / "c.pt")  # 8 px, 3 channels
    report = tmp_path / "r.json"
    assert cli.main(["inspect", str(folder["root"]), "--checkpoint", str(ckpt), "--ways", "2", "--shots", "1",
                     "--no-progress", "--json", str(report)]) == 0
    got = json.loads(report.read_text())
    assert got["use"] == "kshot" and got["image_size"] == 8 and got["instances"] == 2


def test_evaluate_on_a_folder_writes_per_class_confusion_calibration_and_a_like_for_like_plot(folder, tmp_path,
                                                                                               monkeypatch):
    import fewshot_mann.reporting.trust_plots as trust_plots

    drawn = {}
    monkeypatch.setattr(trust_plots, "plot_by_instance_folder", lambda out, path, label: drawn.update(out=out, path=path))
    out = tmp_path / "e.json"
    assert cli.main(["evaluate", "--checkpoint", str(folder_checkpoint(tmp_path / "c.pt")), "--dataset", "folder",
                     "--data-root", str(folder["root"]), "--test-classes", "all", "--episodes", "5", "--json", str(out),
                     "--plot", str(tmp_path / "e.png"), "--no-progress", "--allow-trained-classes"]) == 0
    res = json.loads(out.read_text())
    counts = np.array(res["confusion"]["counts"])
    assert counts.sum() == 5 * 2 * (4 - 1)  # every step from the 2nd presentation on: 2 classes x 3 steps
    assert len(res["calibration"]["bins"]) == 15 and set(res["per_class"]) == set(res["class_names"])
    assert drawn["out"]["baselines"] and drawn["out"]["per_class"]  # the folder plot, not the paper's


def test_the_folder_plot_draws_model_baselines_and_chance_only(tmp_path):
    from fewshot_mann.reporting.trust_plots import plot_by_instance_folder
    import matplotlib.pyplot as plt

    seen = {}
    real_close = plt.close

    def keep(fig):
        seen["labels"] = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        real_close(fig)

    out = {"episodes": 3, "ways": 4, "accuracy_by_instance": [0.2, 0.5], "ci95": [0.1, 0.1],
           "baselines": [{"name": "nearest-centroid-raw-pixels", "accuracy_by_instance": [0.25, 0.4], "ci95": [0, 0]}]}
    plt.close = keep
    try:
        plot_by_instance_folder(out, tmp_path / "p.png", "mann")
    finally:
        plt.close = real_close
    assert (tmp_path / "p.png").stat().st_size > 0
    assert any("chance" in t for t in seen["labels"]) and any("nearest-centroid" in t for t in seen["labels"])
    assert not any("paper" in t or "Human" in t for t in seen["labels"])


def test_a_confusion_of_hundreds_of_classes_keeps_only_the_pairs_that_occurred(monkeypatch):
    monkeypatch.setattr(trust, "DENSE_CONFUSION", 2)
    scores = np.array([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [0.0, 1.0]])
    known = trust.QueryScores(scores, np.array([0, 0, 1, 1]), np.array([[0, 1], [0, 1], [2, 1], [2, 1]]))
    _, confusion = trust.per_class(known, ["a", "b", "c"])
    assert "counts" not in confusion
    assert sorted(confusion["nonzero"]) == [[0, 0, 1], [0, 1, 1], [1, 1, 1], [1, 2, 1]]  # the dense matrix's entries


def tuned_record() -> cal.Calibration:
    frozen_fit = cal.ShotsCalibration(3, 2.0, 7.5, 0.8, 0.5, 0.3, 0.7)
    tuned_fit = cal.ShotsCalibration(3, 0.5, None, 0.9, 0.6)
    tuned = cal.Calibration("tuned trials", 3, (tuned_fit,), finetune_steps=40)
    return cal.Calibration("frozen trials", 3, (frozen_fit,), finetuned=tuned)


def test_a_fine_tuned_record_is_used_for_answers_tuned_as_many_steps_only():
    """``for_finetune``: the fine-tuned temperature and unflagged accuracy at its steps, each shots' unknown
    threshold from the frozen record (never fitted with fine-tuning); other steps or none: the frozen record.
    The record survives the checkpoint's plain dict and ``checkpoint_calibration`` picks it by steps."""
    record = cal.Calibration.from_dict(tuned_record().to_dict())
    assert record == tuned_record()
    used = cal.checkpoint_calibration({"calibration": record.to_dict()}, finetune=40)
    fit = used.for_shots(3)
    assert used.finetune_steps == 40 and used.fitted_on == "tuned trials" and used.finetuned is None
    assert (fit.temperature, fit.unflagged_accuracy) == (0.5, 0.9)
    assert (fit.unknown_threshold, fit.unknown_caught, fit.auroc) == (7.5, 0.3, 0.7)
    for steps in (0, 20):
        assert cal.checkpoint_calibration({"calibration": record.to_dict()}, finetune=steps) == record


def test_calibration_notes_say_what_a_fine_tuned_record_checked():
    from fewshot_mann.engine.predict_trust import calibration_notes, finetuned_checked

    used = tuned_record().for_finetune(40)
    lines = calibration_notes(used, used.for_shots(3), finetune=40)
    assert finetuned_checked(used, 40) and not finetuned_checked(tuned_record(), 40)
    assert "temperature 0.5" in lines[0] and "tuned trials" in lines[0]
    assert "fine-tuned 40 steps" in lines[-1] and "unknown threshold" in lines[-1] and "uncalibrated" not in lines[-1]
    assert "frozen answers' trials" in lines[-2] and "caught 30 %" in lines[-2]  # whose trials the unknown figures are


def test_fit_calibration_on_fine_tuned_answers_reads_the_tuned_features(folder, tmp_path):
    """``fit_calibration(finetuners=...)`` answers every validation trial through the finetuner (here a stand-in
    that returns the trial's features scaled 10x: a sharper model wants a hotter temperature) and records its
    steps; its outside-class queries are read through each trial's tuned backbone too, so it fits an unknown
    threshold of its own."""
    from fewshot_mann.data.folder import load_folder
    from fewshot_mann.engine.calibrate import fit_calibration
    from fewshot_mann.engine.checkpoint import load_checkpoint, load_model_from_checkpoint
    from fewshot_mann.fewshot.finetune import FinetuneSettings

    bank = load_folder(folder["root"], 8, 3, progress=False, cache=False).bank
    model = load_model_from_checkpoint(load_checkpoint(folder_checkpoint(tmp_path / "c.pt")), "cpu")
    calls = []

    class Scaled:
        settings = FinetuneSettings(steps=7)

        def __init__(self, images):
            self.images = images

        def subset(self, bank, keep):
            return Scaled(bank.subset(keep).images)

        def tune(self, support_rows, labels, query_rows, ways, seed=0):
            calls.append((len(support_rows), len(query_rows)))
            return 10 * self.images[support_rows], 10 * self.images[query_rows]

    args = (model, {"data": bank}, EpisodeConfig(ways=2, instances=4), [1], 6, 9, 2, 2)
    frozen = fit_calibration(*args, log=lambda *_: None)
    tuned = fit_calibration(*args, log=lambda *_: None, finetuners={"data": Scaled(bank.images)})
    # every trial tuned once, on its 2 support images, reading its 4 queries and its 2 outside-class queries
    assert len(calls) == 6 and set(calls) == {(2, 6)}
    assert tuned.finetune_steps == 7 and "fine-tuned 7 steps" in tuned.fitted_on and frozen.finetune_steps == 0
    assert "2 unknown queries" in tuned.fitted_on
    assert tuned.for_shots(1).unknown_threshold is not None and frozen.for_shots(1).unknown_threshold is not None
    assert tuned.for_shots(1).temperature != frozen.for_shots(1).temperature


def test_a_fine_tuned_record_with_its_own_unknown_threshold_uses_it_and_says_so():
    """Fitted on fine-tuned unknown queries too (its thresholds are set): ``for_finetune`` keeps its own
    threshold, and ``predict``'s notes no longer call the threshold unchecked, whatever its ``fitted_on`` says."""
    from fewshot_mann.engine.predict_trust import calibration_notes, threshold_checked

    frozen_fit = cal.ShotsCalibration(3, 2.0, 7.5, 0.8, 0.5, 0.3, 0.7)
    tuned_fit = cal.ShotsCalibration(3, 0.5, 4.25, 0.9, 0.6, 0.4, 0.75)
    tuned = cal.Calibration("tuned trials, seed 1", 3, (tuned_fit,), finetune_steps=40)
    record = cal.Calibration("frozen trials, 15 unknown queries", 3, (frozen_fit,), finetuned=tuned)
    used = record.for_finetune(40)
    fit = used.for_shots(3)
    assert (fit.unknown_threshold, fit.unknown_caught, fit.auroc) == (4.25, 0.4, 0.75)
    assert threshold_checked(used, 40) and not threshold_checked(tuned_record().for_finetune(40), 40)
    lines = calibration_notes(used, fit, finetune=40)
    assert "temperature and unknown threshold fitted on answers fine-tuned 40 steps" in lines[-1]
    assert not any("unchecked" in line or "frozen answers' trials" in line for line in lines)
