//! `gauntlet loadtest` against a real gateway: both loop modes, objectives, replay of an outcome log.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::TestServer;
use gauntlet::cli::loadtest::{LoadtestArgs, run};

fn args(server: &TestServer, model: &str, data: PathBuf) -> LoadtestArgs {
    common::loadtest_args(server, model, data)
}

fn holdout(model: &str) -> PathBuf {
    common::models_dir().join(model).join("holdout.csv")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_and_open_loop_runs_meet_their_objectives() {
    let server = TestServer::start(&[]).await;
    let closed =
        run(&LoadtestArgs { concurrency: Some(4), ..args(&server, "breast-cancer", holdout("breast-cancer")) })
            .await
            .unwrap();
    assert_eq!((closed.requests, closed.ok, closed.errors), (200, 200, 0));
    assert!(closed.slo_violations.is_empty(), "{:?}", closed.slo_violations);

    let open = run(&LoadtestArgs { rate: Some(400.0), batch: 3, ..args(&server, "diabetes", holdout("diabetes")) })
        .await
        .unwrap();
    assert_eq!(open.ok, 200);
    assert!(open.seconds >= 0.45, "200 requests at 400/s take half a second: {}", open.seconds);
    assert!(open.latency_ms.p50 > 0.0 && open.latency_ms.p50 <= open.latency_ms.p99);
    assert!(open.table().contains("objectives  met"));

    // The buckets hold every successful request, in order, and give the summary's p99 back.
    let buckets = &open.latency_buckets_us;
    assert_eq!(buckets.iter().map(|(_, n)| n).sum::<u64>(), open.ok);
    assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0), "ascending: {buckets:?}");
    let mut seen = 0;
    let p99 = buckets.iter().find(|(_, n)| {
        seen += n;
        seen * 100 >= open.ok * 99
    });
    assert_eq!(p99.map(|(us, _)| *us as f64 / 1000.0), Some(open.latency_ms.p99));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_objectives_and_errors_are_reported() {
    let server = TestServer::start(&[]).await;
    // Call a version that does not exist: every request fails with 404.
    let summary = run(&LoadtestArgs {
        version: Some("99".into()),
        max_p99_ms: Some(0.000_001),
        requests: Some(20),
        ..args(&server, "diabetes", holdout("diabetes"))
    })
    .await
    .unwrap();
    assert_eq!(summary.errors_by_kind.get("404"), Some(&20));
    let violations = summary.slo_violations.join("; ");
    assert!(violations.contains("error rate") && violations.contains("p99"), "{violations}");

    let unbounded =
        run(&LoadtestArgs { requests: None, duration: None, ..args(&server, "diabetes", holdout("diabetes")) }).await;
    assert!(unbounded.unwrap_err().to_string().contains("refusing to run without a bound"));
    let slow = run(&LoadtestArgs {
        duration: Some(Duration::from_millis(300)),
        requests: None,
        concurrency: Some(2),
        ..args(&server, "diabetes", holdout("diabetes"))
    })
    .await
    .unwrap();
    assert!(slow.seconds < 1.0, "a duration bounds the run: {}", slow.seconds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_log_replays_as_traffic() {
    let mut recorded = TestServer::start(&[]).await;
    let first = run(&args(&recorded, "breast-cancer", holdout("breast-cancer"))).await.unwrap();
    assert_eq!(first.ok, 200);
    recorded.stop().await.unwrap();
    let log = std::fs::read_dir(recorded.outcomes.path()).unwrap().next().unwrap().unwrap().path();

    let replay_target = TestServer::start(&[]).await;
    let replay = run(&args(&replay_target, "breast-cancer", log)).await.unwrap();
    assert_eq!((replay.ok, replay.errors), (200, 0));
}
