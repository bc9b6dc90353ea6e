//! Ground truth end to end on a real server: labels posted by request id join the paired records,
//! the live comparison reproduces each version's holdout figures from its manifest, and the
//! offline report over the log files gives the same figures.

mod common;

use std::time::Duration;

use common::TestServer;
use gauntlet::cli::loadtest::{LoadtestArgs, run};
use gauntlet::compare::offline::OfflineComparison;
use gauntlet::compare::{CompareSettings, Report};
use gauntlet::outcomes::reader;
use serde_json::{Value, json};

fn replay_with_feedback(server: &TestServer, model: &str, rows: u64) -> LoadtestArgs {
    let data = common::models_dir().join(model).join("holdout.csv");
    LoadtestArgs {
        concurrency: Some(4),
        connections: 4,
        threads: None,
        requests: Some(rows),
        feedback: true,
        ..common::loadtest_args(server, model, data)
    }
}

fn holdout_rows(model: &str) -> u64 {
    common::holdout(model).rows.len() as u64
}

fn manifest_metric(model: &str, version: &str, metric: &str) -> f64 {
    let path = common::models_dir().join(model).join(version).join("manifest.json");
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    manifest["holdout_metrics"][metric].as_f64().unwrap()
}

async fn comparison(server: &TestServer, model: &str) -> Report {
    let response = reqwest::get(server.url(&format!("/admin/models/{model}/comparison"))).await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Waits until the join has taken every label (the last ones are posted after a delay).
async fn labelled(server: &TestServer, model: &str, rows: u64) -> Report {
    let what = format!("the comparison of {model} sees {rows} labelled records");
    common::eventually(&what, Duration::from_secs(60), || async {
        Some(comparison(server, model).await).filter(|r| r.labelled_records == rows)
    })
    .await
}

/// What `gauntlet report --log` computes over the server's outcome log.
fn offline_comparisons(
    server: &TestServer,
) -> (std::collections::BTreeMap<String, gauntlet::compare::Comparison>, gauntlet::compare::offline::ReadSummary) {
    let files = reader::expand(&[format!("{}/*.jsonl", server.outcomes.path().display())]).unwrap();
    let mut offline = OfflineComparison::new(CompareSettings::default());
    reader::each_line(&files, &mut |line| {
        offline.line(line);
    })
    .unwrap();
    offline.finish(files.len())
}

#[track_caller]
fn close(actual: Option<f64>, expected: f64, tolerance: f64) {
    let actual = actual.expect("a figure");
    assert!((actual - expected).abs() <= tolerance * expected.abs().max(1.0), "{actual} vs {expected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holdout_labels_reproduce_the_manifest_figures_live_and_offline() {
    let mut server = TestServer::start(&[]).await;
    let mut live = Vec::new();
    for (model, versions, metric) in
        [("breast-cancer", ["1", "2", "3"].as_slice(), "accuracy"), ("diabetes", &["1", "2"], "mae")]
    {
        let rows = holdout_rows(model);
        let summary = run(&replay_with_feedback(&server, model, rows)).await.unwrap();
        assert_eq!(summary.errors, 0);
        let feedback = summary.feedback.as_ref().unwrap();
        assert_eq!((feedback.posted, feedback.failed, feedback.duplicate), (rows, 0, 0), "{feedback:?}");
        let report = labelled(&server, model, rows).await;
        assert_eq!(report.records, rows);
        for version in versions {
            let figures = report.models.iter().find(|m| m.version == *version).unwrap();
            assert_eq!(figures.labelled_rows, rows, "version {version}");
            let expected = manifest_metric(model, version, metric);
            match metric {
                // Same rows, same labels: the very same fraction.
                "accuracy" => {
                    close(figures.accuracy, expected, 1e-12);
                    close(figures.log_loss, manifest_metric(model, version, "log_loss"), 1e-5);
                    close(figures.brier, manifest_metric(model, version, "brier"), 1e-5);
                }
                // The manifest's figure is computed on the float32 outputs, as served.
                _ => {
                    close(figures.mae, expected, 1e-6);
                    close(figures.rmse, manifest_metric(model, version, "rmse"), 1e-6);
                }
            }
        }
        assert_eq!(report.pairs.len(), versions.len() - 1);
        for pair in &report.pairs {
            assert_eq!((pair.labelled_pairs, pair.coverage), (rows, Some(1.0)));
            assert!(pair.p_value.is_some() && pair.improvement_ci.is_some());
        }
        live.push(report);
    }
    server.stop().await.unwrap();

    let (comparisons, summary) = offline_comparisons(&server);
    assert_eq!((summary.unmatched_feedback, summary.duplicate_feedback, summary.unreadable_lines), (0, 0, 0));
    for report in &live {
        let offline = comparisons[&report.model].report();
        assert_eq!((offline.records, offline.labelled_records), (report.records, report.labelled_records));
        // Every pair figure: agreement, divergence, tests, intervals, sequential p, verdict.
        let pairs = |r: &Report| serde_json::to_value(&r.pairs).unwrap();
        assert_eq!(pairs(&offline), pairs(report), "{}", report.model);
        for (a, b) in offline.models.iter().zip(&report.models) {
            assert_eq!((&a.version, a.accuracy, a.mae, a.log_loss), (&b.version, b.accuracy, b.mae, b.log_loss));
        }
    }
}

async fn post(server: &TestServer, model: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url(&format!("/v2/models/{model}/feedback")))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn infer(server: &TestServer, id: &str) {
    let row = vec![0.0f32; 10];
    let body = json!({ "id": id, "inputs": [{ "name": "input", "shape": [1, 10], "datatype": "FP32", "data": row }] });
    let response =
        reqwest::Client::new().post(server.url("/v2/models/diabetes/infer")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_are_joined_held_or_refused_with_a_reason() {
    let mut server = TestServer::start(&[]).await;
    infer(&server, "known").await;
    // The record is written once the challenger has scored: wait for the join to hold it.
    common::eventually("the join holds the record", Duration::from_secs(30), || async {
        (comparison(&server, "diabetes").await.records == 1).then_some(())
    })
    .await;
    assert_eq!(
        post(&server, "diabetes", json!({ "id": "known", "truth": 150.0 })).await,
        (200, json!({ "id": "known", "status": "joined" }))
    );
    let (status, body) = post(&server, "diabetes", json!({ "id": "known", "truth": 151.0 })).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("already has a label"));

    // A label ahead of its record is held, and joins when the record lands.
    assert_eq!(post(&server, "diabetes", json!({ "id": "early", "truth": 90 })).await.0, 202);
    infer(&server, "early").await;
    common::eventually("the held label joins its record", Duration::from_secs(30), || async {
        (comparison(&server, "diabetes").await.labelled_records == 2).then_some(())
    })
    .await;

    let (status, body) =
        post(&server, "diabetes", json!({ "feedback": [{ "id": "a", "truth": 1.5 }, { "id": "known", "truth": 3 }] }))
            .await;
    assert_eq!(status, 200);
    assert_eq!((body["held"].clone(), body["duplicate"].clone()), (json!(1), json!(1)));
    assert_eq!(body["results"][1], json!({ "id": "known", "status": "duplicate" }));

    for (model, body, status, needle) in [
        ("nope", json!({ "id": "x", "truth": 1 }), 404, "not served"),
        ("breast-cancer", json!({ "id": "x", "truth": 7 }), 400, "classes"),
        ("breast-cancer", json!({ "id": "x" }), 400, "`truth` is missing"),
        ("breast-cancer", json!({ "id": "", "truth": 1 }), 400, "`id`"),
        ("breast-cancer", json!({ "id": "x", "truth": 1, "extra": 2 }), 400, "unknown field"),
        (
            "breast-cancer",
            json!({ "feedback": [{ "id": "x", "truth": 1 }, { "id": "y", "truth": "benign" }] }),
            400,
            "feedback[1]",
        ),
        ("breast-cancer", json!({ "feedback": [] }), 400, "between 1 and"),
    ] {
        let (got, answer) = post(&server, model, body.clone()).await;
        assert_eq!(got, status, "{body} -> {answer}");
        assert!(answer["error"].as_str().unwrap().contains(needle), "{body} -> {answer}");
    }
    let response =
        reqwest::Client::new().post(server.url("/v2/models/diabetes/feedback")).body("{not json").send().await.unwrap();
    assert_eq!(response.status(), 400);
    server.stop().await.unwrap();
    // Every valid label is in the log for offline joins, refused ones are not.
    let labels = server.records().into_iter().filter(|r| r["kind"] == "feedback").count();
    assert_eq!(labels, 5);
}

/// Replays breast-cancer's holdout rows (cycling) with labels against a deployment whose champion
/// is version 2 (95.8% on the holdout) and whose challenger is version 1 (98.6%).
async fn replay_against_worse_champion(server: &TestServer, requests: u64) {
    let args = LoadtestArgs {
        feedback_delay: Duration::from_millis(20),
        ..replay_with_feedback(server, "breast-cancer", requests)
    };
    let summary = run(&args).await.unwrap();
    assert_eq!((summary.errors, summary.feedback.as_ref().unwrap().failed), (0, 0));
}

fn audit(server: &TestServer) -> Vec<Value> {
    let text = std::fs::read_to_string(server.state.path().join("audit.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

const WORSE_CHAMPION: [&str; 3] = [
    "models.breast-cancer.champion=2",
    "models.breast-cancer.challengers=[\"1\"]",
    "models.breast-cancer.policy.enabled=true",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_promotes_a_better_challenger_on_live_labels() {
    let overrides = [&WORSE_CHAMPION[..], &["models.breast-cancer.policy.min_labelled_pairs=100"]].concat();
    let server = TestServer::start(&overrides).await;
    replay_against_worse_champion(&server, 1_000).await;
    let model: Value = common::eventually("the policy promotes version 1", Duration::from_secs(60), || async {
        let model: Value = reqwest::get(server.url("/admin/models/breast-cancer")).await.unwrap().json().await.unwrap();
        (model["champion"] == "1").then_some(model)
    })
    .await;
    // The replaced champion keeps shadowing, so a later reversal can be seen.
    assert_eq!(model["challengers"], json!(["2"]));
    let audit = audit(&server);
    let decision = audit.iter().find(|a| a["actor"] == "policy").expect("the policy's change is audited");
    assert_eq!(
        (&decision["action"], &decision["version"], &decision["result"]),
        (&json!("promote"), &json!("1"), &json!("ok"))
    );
    let evidence = &decision["evidence"];
    assert!(evidence["sequential_p_value"].as_f64().unwrap() < 0.05, "{evidence}");
    assert!(evidence["improvement"].as_f64().unwrap() > 0.0 && evidence["labelled_pairs"].as_u64().unwrap() >= 100);
    // Only one change: version 2 is worse than the new champion, so there is nothing to undo.
    assert_eq!(audit.iter().filter(|a| a["actor"] == "policy").count(), 1);
}

/// `report --log … --policy` on the log of a run whose policy was live lists the very decisions the
/// live policy took, with the same evidence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_replayed_on_the_log_decides_as_the_live_one_did() {
    let overrides = [&WORSE_CHAMPION[..], &["models.breast-cancer.policy.min_labelled_pairs=100"]].concat();
    let mut server = TestServer::start(&overrides).await;
    replay_against_worse_champion(&server, 1_000).await;
    common::eventually("the policy promotes version 1", Duration::from_secs(60), || async {
        let model: Value = reqwest::get(server.url("/admin/models/breast-cancer")).await.unwrap().json().await.unwrap();
        (model["champion"] == "1").then_some(())
    })
    .await;
    // Labels after the promotion too, so the replay goes on past the decision.
    replay_against_worse_champion(&server, 300).await;
    server.stop().await.unwrap();
    let live: Vec<Value> = audit(&server).into_iter().filter(|a| a["actor"] == "policy").collect();
    assert_eq!(live.len(), 1, "{live:?}");

    let pattern = format!("{}/*.jsonl", server.outcomes.path().display());
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gauntlet"));
    command.args(["report", "breast-cancer", "--log", &pattern, "--policy", "--json", "--config"]);
    command.arg(common::root().join("gauntlet.toml"));
    for set in &overrides {
        command.args(["--set", set]);
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let replayed = report["policy"]["decisions"].as_array().unwrap();
    assert_eq!(replayed.len(), live.len(), "{replayed:?} against {live:?}");
    for (replayed, live) in replayed.iter().zip(&live) {
        assert_eq!((&replayed["action"], &replayed["version"]), (&live["action"], &live["version"]));
        assert_eq!(replayed["labelled_pairs"], live["evidence"]["labelled_pairs"]);
        // The same figures: the same labels in the same order.
        assert_eq!(replayed["evidence"], live["evidence"], "replayed {replayed} against live {live}");
        assert!(replayed["at"].as_str().is_some_and(|at| at.starts_with("20")), "{replayed}");
    }
    assert_eq!((&report["policy"]["started_with"], &report["policy"]["champion"]), (&json!("2"), &json!("1")));
    assert_eq!(report["correction"].as_str().map(|c| c.starts_with("holm")), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_policy_records_its_decision_and_changes_nothing() {
    let overrides = [
        &WORSE_CHAMPION[..],
        &["models.breast-cancer.policy.min_labelled_pairs=100", "models.breast-cancer.policy.dry_run=true"],
    ]
    .concat();
    let server = TestServer::start(&overrides).await;
    replay_against_worse_champion(&server, 1_000).await;
    // The policy looks as labels join, on the join thread (below request priority): wait for it.
    let decisions: Vec<Value> =
        common::eventually("the dry-run policy records a decision", Duration::from_secs(60), || {
            let decisions: Vec<Value> = audit(&server).into_iter().filter(|a| a["actor"] == "policy").collect();
            std::future::ready((!decisions.is_empty()).then_some(decisions))
        })
        .await;
    let model: Value = reqwest::get(server.url("/admin/models/breast-cancer")).await.unwrap().json().await.unwrap();
    assert_eq!(model["champion"], "2");
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!((&decisions[0]["result"], &decisions[0]["version"]), (&json!("dry_run"), &json!("1")));
}

/// Slices end to end: requests carry `x-region`, records carry the slice, labels join, and the
/// comparison breaks each pair down by slice (`common::feed_regions`: champion 2 against challenger
/// 1, better overall, worse on `apac`). The report flags exactly `apac`; the guarded policy holds the
/// promotion and audits why, naming the slice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenger_worse_on_one_region_is_flagged_and_its_promotion_held() {
    let overrides = [
        &WORSE_CHAMPION[..],
        &[
            "models.breast-cancer.policy.min_labelled_pairs=100",
            "models.breast-cancer.policy.guard_slices=true",
            "models.breast-cancer.slices.header=x-region",
            "shadow_cpu_budget=2.0",
        ],
    ]
    .concat();
    let server = TestServer::start(&overrides).await;
    let requests = common::feed_regions(&server, 21).await;
    let report = labelled(&server, "breast-cancer", requests).await;
    eprintln!("{}", report.to_table());
    let pair = report.pairs.iter().find(|p| p.challenger == "1").expect("the pair");
    assert_eq!(pair.verdict, gauntlet::compare::Verdict::Better, "{pair:?}");
    assert_eq!(pair.worse_slices, ["apac"], "{:?}", pair.slices);
    let named: Vec<&str> = pair.slices.iter().map(|s| s.slice.as_str()).collect();
    for slice in ["apac", "eu", "us", "(no x-region)"] {
        assert!(named.contains(&slice), "{slice} missing from {named:?}");
    }
    let labelled_pairs: u64 = pair.slices.iter().map(|s| s.labelled_pairs).sum();
    assert_eq!(labelled_pairs, pair.labelled_pairs, "every labelled pair is in one slice");

    // The guarded policy held the promotion, audited once, naming the slice.
    let held: Vec<Value> = common::eventually("the policy audits its hold", Duration::from_secs(60), || {
        let held: Vec<Value> = audit(&server).into_iter().filter(|a| a["actor"] == "policy").collect();
        std::future::ready((!held.is_empty()).then_some(held))
    })
    .await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (&held[0]["action"], &held[0]["version"], &held[0]["result"]),
        (&json!("promote"), &json!("1"), &json!("refused"))
    );
    assert!(held[0]["reason"].as_str().unwrap().contains("'apac'"), "{}", held[0]);
    assert_eq!(held[0]["evidence"]["worse_slices"][0]["slice"], "apac");
    let model: Value = reqwest::get(server.url("/admin/models/breast-cancer")).await.unwrap().json().await.unwrap();
    assert_eq!(model["champion"], "2", "nothing promoted");

    // The slices are in the log: `gauntlet report --log` gives the same ones, figure for figure.
    let mut server = server;
    server.stop().await.unwrap();
    let (comparisons, _) = offline_comparisons(&server);
    let offline = comparisons["breast-cancer"].report();
    let offline_pair = offline.pairs.iter().find(|p| p.challenger == "1").unwrap();
    assert_eq!(offline_pair.slices, pair.slices);
    assert_eq!(offline_pair.worse_slices, ["apac"]);
}

/// One node's history: a point a second while labels join, kept in the state directory, read back
/// from a time, and still there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_comparisons_history_survives_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let overrides = [format!("state_dir={}", state.path().display()), "comparison.history_interval_s=1".into()];
    let overrides: Vec<&str> = overrides.iter().map(String::as_str).collect();
    let mut server = TestServer::start(&overrides).await;
    let history = |server: &TestServer, query: &str| {
        let url = server.url(&format!("/admin/models/breast-cancer/history{query}"));
        async move {
            let answer = reqwest::get(url).await.unwrap();
            (answer.status().as_u16(), answer.json::<Value>().await.unwrap())
        }
    };
    // Labels until two points are written (a second apart, while labels join).
    let points = common::eventually("two history points", Duration::from_secs(60), || async {
        run(&replay_with_feedback(&server, "breast-cancer", 20)).await.unwrap();
        let (_, answer) = history(&server, "").await;
        let points = answer["points"].as_array().cloned().unwrap_or_default();
        (points.len() >= 2).then_some(points)
    })
    .await;
    let first = &points[0];
    assert!(first["pairs"][0]["labelled_pairs"].as_u64().unwrap() > 0, "{first}");
    assert!(first["at"].as_str().unwrap() < points[1]["at"].as_str().unwrap());
    server.stop().await.unwrap();

    let server = TestServer::start(&overrides).await;
    let (status, answer) = history(&server, "").await;
    assert_eq!(status, 200);
    assert_eq!(answer["interval_s"], 1);
    let kept = answer["points"].as_array().unwrap();
    assert!(kept.len() >= points.len() && kept[..points.len()] == points[..], "the points written before the restart");
    let since = points[1]["at"].as_str().unwrap().replace(':', "%3A");
    let (_, recent) = history(&server, &format!("?since={since}")).await;
    assert_eq!(recent["points"][0], points[1]);
    let (status, refused) = history(&server, "?since=yesterday").await;
    assert_eq!(status, 400);
    assert!(refused["error"].as_str().unwrap().contains("RFC 3339"), "{refused}");
}

/// Each version's probabilities and labels on the holdout rows, asked of that version directly:
/// NannyML's input.
async fn scored_holdout(server: &TestServer, versions: &[&str]) -> Value {
    let client = reqwest::Client::new();
    let holdout = common::holdout("breast-cancer");
    let truths = holdout.truth.clone().unwrap().1;
    let mut out = serde_json::Map::new();
    for version in versions {
        let (mut p, mut pred) = (Vec::new(), Vec::new());
        for row in &holdout.rows {
            let url = server.url(&format!("/v2/models/breast-cancer/versions/{version}/infer"));
            let answer: Value = client
                .post(url)
                .json(&common::infer_body(std::slice::from_ref(row)))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let outputs = answer["outputs"].as_array().unwrap();
            let output = |name: &str| outputs.iter().find(|o| o["name"] == name).unwrap()["data"].clone();
            p.push(output("probabilities")[1].clone());
            pred.push(output("label")[0].clone());
        }
        out.insert(version.to_string(), json!({ "p": p, "pred": pred, "y": truths }));
    }
    Value::Object(out)
}

/// The label-free estimate (CBPE) against NannyML's on the same rows, and under a covariate shift.
/// With the holdout's labels as the live labelled records, each version's estimate over every record
/// equals NannyML's (fitted on the same rows as reference) when both make the same calibration
/// choice; the choice itself is printed beside (NannyML draws its ten folds at random, the gateway
/// hashes request ids: on 143 rows they can disagree). Replaying only rows whose mean radius is 13 to
/// 17, where the classes overlap, the champion's realised accuracy drops, and its estimate drops too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_label_free_estimate_agrees_with_nannyml_and_follows_a_shift() {
    let server = TestServer::start(&["shadow_cpu_budget=2.0"]).await;
    let rows = holdout_rows("breast-cancer");
    run(&replay_with_feedback(&server, "breast-cancer", rows)).await.unwrap();
    let report = labelled(&server, "breast-cancer", rows).await;
    let scored = scored_holdout(&server, &["1", "2", "3"]).await;
    let python = common::python_env(Some("nannyml"));
    let script = common::root().join("tests/python/cbpe_nannyml.py");
    let ours: Value = serde_json::to_value(&report.models).unwrap();
    let calibrated: serde_json::Map<String, Value> = ours
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["version"].as_str().unwrap().to_owned(),
                json!(m["estimate_calibration"].as_str().unwrap().starts_with("isotonic")),
            )
        })
        .collect();
    let nannyml = |force: Option<&serde_json::Map<String, Value>>| {
        let mut command = std::process::Command::new(&python);
        command.arg(&script);
        if let Some(force) = force {
            command.arg(serde_json::to_string(force).unwrap());
        }
        let mut child =
            command.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
        serde_json::to_writer(child.stdin.take().unwrap(), &scored).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    let (as_is, same_choice) = (nannyml(None), nannyml(Some(&calibrated)));
    for model in &report.models {
        let v = model.version.as_str();
        let estimate = model.estimated_accuracy.expect("an estimate");
        let theirs = same_choice[v]["estimated_accuracy"].as_f64().unwrap();
        eprintln!(
            "version {v}: gateway {estimate:.6} ({}); NannyML with the same choice {theirs:.6}; NannyML as is {:.6} \
             (calibrated: {}); realised {:.6}",
            model.estimate_calibration.as_deref().unwrap(),
            as_is[v]["estimated_accuracy"].as_f64().unwrap(),
            as_is[v]["calibrated"],
            model.accuracy.unwrap()
        );
        assert!((estimate - theirs).abs() < 1e-3, "version {v}: {estimate} against NannyML's {theirs}");
        let labelled = model.estimated_accuracy_labelled.unwrap();
        assert!((labelled - estimate).abs() < 1e-12, "every record is labelled here: {labelled} {estimate}");
    }

    // Under a covariate shift (rows of mean radius 13 to 17 only), on a gateway of its own.
    let shifted = TestServer::start(&["shadow_cpu_budget=2.0"]).await;
    let holdout = common::holdout("breast-cancer");
    let truths = holdout.truth.clone().unwrap().1;
    let client = reqwest::Client::new();
    let mut labels = Vec::new();
    for (i, row) in holdout.rows.iter().enumerate().filter(|(_, r)| (13.0..=17.0).contains(&r[0])) {
        let id = format!("shift-{i}");
        let url = shifted.url("/v2/models/breast-cancer/infer");
        let answer = client
            .post(url)
            .header("x-request-id", &id)
            .json(&common::infer_body(std::slice::from_ref(row)))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        labels.push(json!({ "id": id, "truth": truths[i] }));
    }
    let n = labels.len() as u64;
    let (status, _) = post(&shifted, "breast-cancer", json!({ "feedback": labels })).await;
    assert_eq!(status, 200);
    let after = labelled(&shifted, "breast-cancer", n).await;
    let champion = |r: &Report| r.models.iter().find(|m| m.version == "1").cloned().unwrap();
    let (full, shift) = (champion(&report), champion(&after));
    eprintln!(
        "champion under the shift ({n} rows): realised {:.4} -> {:.4}, estimated {:.4} -> {:.4}",
        full.accuracy.unwrap(),
        shift.accuracy.unwrap(),
        full.estimated_accuracy.unwrap(),
        shift.estimated_accuracy.unwrap()
    );
    assert!(shift.accuracy.unwrap() < full.accuracy.unwrap());
    assert!(shift.estimated_accuracy.unwrap() < full.estimated_accuracy.unwrap());
}

/// Slices by a binned feature: `mean radius` cut at 13 and 17, the slice taken from each request's
/// inputs; every labelled pair lands in one of the three, and the bins hold the rows they should.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_by_a_binned_feature_hold_the_rows_of_their_range() {
    let overrides = [
        "models.breast-cancer.slices.feature=mean radius",
        "models.breast-cancer.slices.edges=[13.0, 17.0]",
        "shadow_cpu_budget=2.0",
    ];
    let server = TestServer::start(&overrides).await;
    let rows = holdout_rows("breast-cancer");
    run(&replay_with_feedback(&server, "breast-cancer", rows)).await.unwrap();
    let report = labelled(&server, "breast-cancer", rows).await;
    let holdout = common::holdout("breast-cancer");
    let expected = |low: f64, high: f64| holdout.rows.iter().filter(|r| r[0] >= low && r[0] < high).count() as u64;
    for pair in &report.pairs {
        let mut slices: Vec<(&str, u64)> = pair.slices.iter().map(|s| (s.slice.as_str(), s.labelled_pairs)).collect();
        slices.sort();
        assert_eq!(
            slices,
            [
                ("13 ≤ mean radius < 17", expected(13.0, 17.0)),
                ("mean radius < 13", expected(f64::NEG_INFINITY, 13.0)),
                ("mean radius ≥ 17", expected(17.0, f64::INFINITY)),
            ],
            "{pair:?}"
        );
    }
}
