"""A tiny run of the whole graph, raw DICOM to evaluation report, then the slice filter on its models."""

import json
from pathlib import Path

import duckdb
import pytest

from cmr_assets.domain import REGISTERED_MODEL_NAMES
from cmr_assets.evaluation.report import validate_report
from cmr_assets.inference.slice_filter import run_filter_cli
from cmr_assets.synthetic.cohort import IDENTIFIER_MARKER
from cmr_assets_tests.conftest import pipeline_environment

SUNNYBROOK = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sunnybrook"
TINY_RUN = {"ops": {
    "synthetic_cohort": {"config": {"n_scans": 6, "workers": 1}},
    "model_single": {"config": {"epochs": 1, "max_minutes": 0.5}},
    "model_ranking": {"config": {"epochs": 1, "max_minutes": 0.5, "soft_labels": True}},
    "strategy_repeats": {"config": {"epochs": 1, "max_minutes": 0.5, "repeats": 2}},
    "learning_curves": {"config": {"epochs": 1, "max_minutes": 0.5, "hours_per_expert": [0.02, 5.0]}},
}}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    with pipeline_environment(root):
        from cmr_assets.pipeline_runs import run_job

        result = run_job("cmr_pipeline", TINY_RUN)
        failures = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert result.success, f"failed steps: {failures}"
        yield root, run_job


def _count(root: Path, table: str) -> int:
    with duckdb.connect(str(root / "data" / "cmr.duckdb"), read_only=True) as con:
        return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]


def test_report_has_the_contract_keys_and_both_models_are_champions(pipeline):
    root, _ = pipeline
    report = json.loads((root / "data" / "reports" / "evaluation.json").read_text())
    validate_report(report)
    assert report["n_test_images"] > 0
    assert (root / "data" / "reports" / "evaluation.md").read_text().count("Paper") >= 1
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    for name in REGISTERED_MODEL_NAMES.values():
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"


def test_report_repeats_the_comparison_with_intervals_and_draws_learning_curves(pipeline):
    root, _ = pipeline
    reports = root / "data" / "reports"
    report = json.loads((reports / "evaluation.json").read_text())
    comparison = report["comparison"]
    assert comparison["repeats"] == 2 and [r["repeat"] for r in comparison["per_repeat"]] == [0, 1]
    low, high = comparison["accuracy_diff_ci95"]
    assert -1.0 <= low <= high <= 1.0 and isinstance(comparison["accuracy_diff_mean"], float)
    for strategy in ("ranking", "single"):
        low, high = report["strategies"][strategy]["test_accuracy_ci95"]
        assert 0.0 <= low <= report["strategies"][strategy]["test_accuracy_mean"] <= high <= 1.0
    assert {"kappa_intra_ci95", "kappa_inter_ci95"} <= set(report["agreement"])
    points = report["learning_curves"]["points"]
    assert sorted((p["strategy"], p["hours_per_expert"]) for p in points) == [
        ("ranking", 0.02), ("ranking", 5.0), ("single", 0.02), ("single", 5.0)]
    by_budget = {(p["strategy"], p["hours_per_expert"]): p for p in points}
    for strategy in ("ranking", "single"):  # a tiny budget labels fewer images than the whole campaign
        assert by_budget[(strategy, 0.02)]["images_labelled"] < by_budget[(strategy, 5.0)]["images_labelled"]
    assert (reports / "learning_curves.png").stat().st_size > 0 and (reports / "strategy_repeats.png").exists()
    markdown = (reports / "evaluation.md").read_text()
    assert "Repeated comparison (2 repeats" in markdown and "Learning curves" in markdown
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    repeat_runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                     filter_string="tags.kind = 'strategy_repeat'")
    assert sorted(r.data.params["strategy"] for r in repeat_runs) == ["ranking", "single"]


def test_a_recorded_run_renders_its_readme_table(pipeline, tmp_path):
    from cmr_assets.evaluation.results_record import readme_block, record_results, write_record

    root, _ = pipeline
    document = record_results(root / "data" / "reports", "tiny-run", note="test")
    stored = json.loads(write_record(document, tmp_path).read_text())
    assert stored["evaluation"]["provenance"]["training"]["ranking"]["epochs"] == "1"
    block = readme_block(stored)
    assert block.startswith("<!-- results: tiny-run -->") and block.endswith("<!-- /results -->")
    assert "mean of 2 repeats" in block and "docs/results/tiny-run.json" in block
    with pytest.raises(ValueError, match="name"):
        record_results(root / "data" / "reports", "Bad Name")
    with pytest.raises(FileNotFoundError, match="no evaluation report"):
        record_results(tmp_path, "empty")


def test_champions_carry_provenance_and_face_the_real_image_check(pipeline):
    root, _ = pipeline
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    for name in REGISTERED_MODEL_NAMES.values():
        tags = client.get_model_version_by_alias(name, "champion").tags
        assert tags["cmr.training_data"] == "synthetic" and tags["cmr.label_source"] == "simulated_experts"
        assert int(tags["cmr.n_scans"]) >= 2
    report = json.loads((root / "data" / "reports" / "evaluation.json").read_text())
    check = report["real_image_check"]
    for strategy in ("ranking", "single"):
        summary = check["strategies"][strategy]["summary"]
        assert summary["n_lv"] == 18 and summary["n_slices"] == 25
        assert 0.0 <= summary["lv_recall_model"] <= 1.0
        assert check["strategies"][strategy]["model"]["training_data"] == "synthetic"
    assert "Real-image check" in (root / "data" / "reports" / "evaluation.md").read_text()


def test_filter_warns_about_a_synthetic_only_model_and_scores_ood(pipeline, capsys):
    root, _ = pipeline
    series = root / "data" / "scans" / "synthetic" / "scan_0001"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        assert run_filter_cli(series, model="ranking", as_json=True) == 0
    captured = capsys.readouterr()
    assert "synthetic" in captured.err
    decisions = json.loads(captured.out)
    assert all(isinstance(d["ood"], bool) and isinstance(d["ood_score"], float) for d in decisions)
    assert all(d["keep"] for d in decisions if d["ood"])


def test_tables_are_filled(pipeline):
    root, _ = pipeline
    n_slices = _count(root, "slices")
    assert 6 * 10 <= n_slices <= 6 * 14
    for table in ("labels_single", "labels_ranking", "agreement", "dataset_split", "reference_labels"):
        assert _count(root, table) > 0, table


def test_no_identifier_leaves_ingestion(pipeline):
    root, _ = pipeline
    marker = IDENTIFIER_MARKER.encode()
    inputs = {root / "data" / "scans", root / "data" / "reference"}
    leaks = [p for p in root.rglob("*") if p.is_file() and not any(d in p.parents for d in inputs)
             and marker in p.read_bytes()]
    assert leaks == []


def test_rerun_ingests_nothing_new(pipeline):
    root, run_job = pipeline
    before = _count(root, "slices"), _count(root, "rejected_files")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CMR_DATA_DIR", str(root / "data"))
        mp.setenv("DAGSTER_HOME", str(root / "dagster_home"))
        assert run_job("ingest_new_scans").success
    assert (_count(root, "slices"), _count(root, "rejected_files")) == before


def _filter_json(root: Path, series: Path, capsys, model: str = "ranking") -> list[dict]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        assert run_filter_cli(series, model=model, as_json=True) == 0
    return json.loads(capsys.readouterr().out)


def test_filter_on_a_synthetic_series(pipeline, capsys, tmp_path):
    root, _ = pipeline
    series = root / "data" / "scans" / "synthetic" / "scan_0000"
    decisions = _filter_json(root, series, capsys)
    assert [d["slice_from_base"] for d in decisions] == list(range(len(decisions)))
    assert {"slice_from_base", "predicted_class", "probabilities", "keep", "files"} <= set(decisions[0])
    assert sorted(f for d in decisions for f in d["files"]) == sorted(p.name for p in series.iterdir())
    for d in decisions:
        assert d["predicted_class"] in ("too_basal", "lv", "too_apical")
        assert abs(sum(d["probabilities"].values()) - 1) < 1e-3


def test_filter_on_real_sunnybrook_series(pipeline, capsys, tmp_path):
    if not SUNNYBROOK.exists():
        pytest.skip(f"Sunnybrook data not found at {SUNNYBROOK}")
    root, _ = pipeline
    decisions = _filter_json(root, SUNNYBROOK / "SCD0000101", capsys, model="single")
    assert len(decisions) == 12
    for k, d in enumerate(decisions):  # base first: slice k holds instances 20k+1 .. 20k+20
        assert sorted(int(f.removesuffix(".dcm")) for f in d["files"]) == list(range(20 * k + 1, 20 * k + 21))


def test_filter_without_a_registered_model_says_how_to_train_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    assert run_filter_cli(tmp_path, model="ranking") == 1
    assert "cmr-assets demo" in capsys.readouterr().err


def test_adaptive_ranking_batches_append_a_wave(pipeline):
    import dagster as dg

    root, _ = pipeline
    before = _count(root, "tasks_ranking")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CMR_DATA_DIR", str(root / "data"))
        from cmr_assets.definitions import build_definitions

        defs = build_definitions()
        assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
        result = dg.materialize(assets, selection=["labelling_tasks_ranking"], resources=dict(defs.resources),
                                run_config={"ops": {"labelling_tasks_ranking": {"config": {"adaptive_batches": 5}}}},
                                instance=dg.DagsterInstance.ephemeral())
    assert result.success
    with duckdb.connect(str(root / "data" / "cmr.duckdb"), read_only=True) as con:
        ids = [row[0] for row in con.execute("SELECT batch_id FROM tasks_ranking").fetchall()]
    assert len(ids) == before + 5 and sum(i.startswith("r2-") for i in ids) == 5


def test_evaluate_models_on_the_pipelines_tables_reports_a_missing_real_folder_and_refuses_no_reference(
        pipeline, tmp_path):
    """The asset's computation, called directly: same tables and models, no Dagster."""
    import mlflow

    from cmr_assets.evaluation.comparison import (
        EvaluationInputError,
        EvaluationTables,
        ModelUnderTest,
        evaluate_models,
    )
    from cmr_assets.labelling.annotation_ingest import read_raw_annotations

    root, _ = pipeline
    with duckdb.connect(str(root / "data" / "cmr.duckdb")) as con:  # read_raw_annotations ensures its tables
        raw_single, raw_ranking = read_raw_annotations(con)
        frames = {t: con.execute(f"SELECT * FROM {t}").df()
                  for t in ("slices", "dataset_split", "reference_labels", "labels_single", "labels_ranking",
                            "agreement")}
    tables = EvaluationTables(slices=frames["slices"], split=frames["dataset_split"],
                              reference=frames["reference_labels"], raw={"single": raw_single, "ranking": raw_ranking},
                              labels={s: frames[f"labels_{s}"] for s in ("single", "ranking")},
                              agreement=frames["agreement"])
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    models = {}
    for strategy, name in REGISTERED_MODEL_NAMES.items():
        version = client.get_model_version_by_alias(name, "champion")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
            model = mlflow.pytorch.load_model(f"models:/{name}/{version.version}")
        models[strategy] = ModelUnderTest(name, version.version, version.run_id, model)
    evaluation = evaluate_models(tables, root / "data", root / "data" / "reports", models, models,
                                 provenance={}, real_data_dir=tmp_path / "no_real_data")
    validate_report(evaluation.report)
    assert evaluation.report["real_image_check"]["strategies"] == {}
    assert any("real-image check skipped" in w for w in evaluation.warnings)
    assert {"confusion_ranking.png", "roc_curves.png", "strategy_repeats.png"} <= set(evaluation.figures)
    assert "real_image_check_ranking.png" not in evaluation.figures
    reported = json.loads((root / "data" / "reports" / "evaluation.json").read_text())
    assert evaluation.n_test_images == reported["n_test_images"]
    for strategy in REGISTERED_MODEL_NAMES:
        assert evaluation.report["strategies"][strategy]["test_accuracy"] == pytest.approx(
            reported["strategies"][strategy]["test_accuracy"])
    with pytest.raises(EvaluationInputError, match="reference labels"):
        evaluate_models(EvaluationTables(**{**tables.__dict__, "reference": frames["reference_labels"].iloc[0:0]}),
                        root / "data", root / "data" / "reports", models, models, provenance={})


def test_archive_filter_decides_every_slice_with_the_champion_and_then_only_what_changed(pipeline):
    import dagster as dg
    import mlflow

    from cmr_assets.definitions import build_definitions
    from cmr_assets.inference.assets import archive_filter
    from cmr_assets.ingest.assets import ALL_BUCKETS_TAGS

    root, _ = pipeline
    with duckdb.connect(str(root / "data" / "cmr.duckdb"), read_only=True) as con:
        n_slices = con.execute("SELECT count(*) FROM slices").fetchall()[0][0]
        decided = con.execute("""SELECT count(*), count(DISTINCT model_version), any_value(model_version),
                                        sum(CASE WHEN keep = (filter_class = 'lv' OR ood) THEN 1 ELSE 0 END)
                                 FROM slice_decisions JOIN slices USING (slice_id)""").fetchall()[0]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    champion = client.get_model_version_by_alias(REGISTERED_MODEL_NAMES["ranking"], "champion").version
    assert decided == (n_slices, 1, str(champion), n_slices)
    with pipeline_environment(root):
        result = dg.materialize([archive_filter], resources=build_definitions().resources,
                                instance=dg.DagsterInstance.get(), tags=ALL_BUCKETS_TAGS)
    assert result.success
    metadata = result.asset_materializations_for_node("archive_filter")[0].metadata
    assert metadata["scans_decided_now"].value == 0 and metadata["slices"].value == n_slices
