//! Several gateway processes sharing one deployment through the suite's own PostgreSQL: a change
//! through one replica reaches the others, races are refused, restarts take the store's champion,
//! a replica that cannot apply says so, and the database going away stops changes, not serving.

mod common;
#[path = "common/postgres.rs"]
mod pg;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pg::Postgres;
use serde_json::{Value, json};

const MODEL: &str = "breast-cancer";
const WAIT: Duration = Duration::from_secs(60);

/// One gateway process, killed if the test ends early.
struct Replica {
    child: Option<Child>,
    addr: SocketAddr,
    /// Its stderr, for the failure message.
    log: Arc<Mutex<Vec<String>>>,
    config: PathBuf,
}

/// Where a replica keeps its files, and what it is told.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    /// A config for replica `id` against `url`, over `models` (the demo's, unless a copy).
    fn config(&self, id: &str, url: &str, models: &Path, extra: &str) -> PathBuf {
        self.config_with(id, url, models, extra, DEMO)
    }

    /// The same config for one node (no `[cluster]`), as the reference a cluster must equal.
    fn single(&self, id: &str, models: &Path, deployment: &str) -> PathBuf {
        let path = self.config_with(id, "", models, "", deployment);
        let text = std::fs::read_to_string(&path).unwrap();
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("database_url") && !l.starts_with("replica_id"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A config whose model section holds `deployment` (champion, challengers, policy).
    fn config_with(&self, id: &str, url: &str, models: &Path, extra: &str, deployment: &str) -> PathBuf {
        let base = self.dir.path().join(id);
        std::fs::create_dir_all(&base).unwrap();
        let text = format!(
            r#"
listen = "127.0.0.1:0"
grpc_listen = "127.0.0.1:0"
models_dir = "{models}"
log_format = "json"
shutdown_grace_ms = 2000
# The challengers' records are about the models, not about how busy this host is.
shadow_deadline_ms = 10000
state_dir = "{base}/state"
[outcomes]
dir = "{base}/outcomes"
log_inputs = "none"
[drift]
enabled = false
[comparison]
# A history point a second while labels join, so a test sees several.
history_interval_s = 1
[cluster]
database_url = "{url}"
replica_id = "{id}"
{extra}
[models.{MODEL}]
versions = ["1", "2"]
{deployment}
"#,
            models = models.display(),
            base = base.display(),
        );
        let path = base.join("gauntlet.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A copy of the demo's `model` without `missing` versions.
    fn models_without(&self, missing: &[&str]) -> PathBuf {
        let dir = self.dir.path().join(format!("models-without-{}", missing.join("-")));
        let source = common::models_dir().join(MODEL);
        for entry in std::fs::read_dir(&source).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if missing.contains(&name.as_str()) {
                continue;
            }
            copy(&entry.path(), &dir.join(MODEL).join(&name));
        }
        dir
    }
}

fn copy(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

impl Replica {
    /// Starts `gauntlet serve` and waits for the address it binds (not for readiness).
    fn spawn(config: &Path) -> Self {
        Self::spawn_with(config, &[])
    }

    /// As `spawn`, with configuration from the environment on top (`GAUNTLET_…`).
    fn spawn_with(config: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
            .args(["serve", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .env("GAUNTLET_LOG_LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            // Read to the end, always: a full pipe would stall the gateway.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Value>(&line)
                    && event["fields"]["message"] == "serving the Open Inference Protocol"
                    && let Some(addr) = event["fields"]["address"].as_str()
                {
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
                lines.lock().push(line);
            }
        });
        let addr = match rx.recv_timeout(WAIT) {
            Ok(addr) => addr,
            Err(_) => panic!("replica did not bind: {}", log.lock().join("\n")),
        };
        Self { child: Some(child), addr, log, config: config.to_owned() }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGTERM, and the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
        child.wait().unwrap()
    }

    fn logs_vec(&self) -> Vec<String> {
        self.log.lock().clone()
    }

    fn logs(&self) -> String {
        self.log.lock().join("\n")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The suite's own PostgreSQL, the replicas' files, and replicas r1..rn of the demo model, ready.
/// Bind `pg` and `setup` for the whole test (`_name`, not `_` or `..`): dropping them stops the
/// database and removes the replicas' directories.
struct Fleet {
    pg: Postgres,
    setup: Setup,
    url: String,
    replicas: Vec<Replica>,
    client: reqwest::Client,
}

/// The deployment the replicas' configuration holds unless a test says otherwise.
const DEMO: &str = "champion = \"1\"\nchallengers = [\"2\"]";

impl Fleet {
    async fn start(n: usize) -> Self {
        Self::start_with(n, DEMO, &[]).await
    }

    /// `n` replicas whose model section is `deployment`, with `env` on top of their configuration.
    async fn start_with(n: usize, deployment: &str, env: &[(&str, &str)]) -> Self {
        let (pg, setup) = (Postgres::start(), Setup::new());
        let url = pg.url("postgres");
        let models = common::models_dir();
        let replicas: Vec<Replica> = (1..=n)
            .map(|i| Replica::spawn_with(&setup.config_with(&format!("r{i}"), &url, &models, "", deployment), env))
            .collect();
        let client = reqwest::Client::new();
        for replica in &replicas {
            wait_ready(&client, replica).await;
        }
        Self { pg, setup, url, replicas, client }
    }
}

fn row() -> Vec<f64> {
    common::holdout(MODEL).rows[0].clone()
}

/// One inference: the status and the answering version.
async fn infer(client: &reqwest::Client, replica: &Replica) -> (u16, Option<String>) {
    infer_at(client, replica.addr).await
}

async fn infer_at(client: &reqwest::Client, addr: SocketAddr) -> (u16, Option<String>) {
    let body = common::infer_body(&[row()]);
    match client.post(format!("http://{addr}/v2/models/{MODEL}/infer")).json(&body).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            (status, answer["model_version"].as_str().map(str::to_owned))
        }
        Err(_) => (0, None),
    }
}

async fn admin(client: &reqwest::Client, replica: &Replica, path: &str, body: Value) -> (u16, Value) {
    let response = client.post(replica.url(path)).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(client: &reqwest::Client, replica: &Replica, path: &str) -> (u16, Value) {
    let response = client.get(replica.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn wait_ready(client: &reqwest::Client, replica: &Replica) {
    common::eventually(&format!("replica {} ready", replica.addr), WAIT, || async {
        (get(client, replica, "/v2/health/ready").await.0 == 200).then_some(())
    })
    .await;
}

async fn champion(client: &reqwest::Client, replica: &Replica) -> String {
    let (status, view) = get(client, replica, &format!("/admin/models/{MODEL}")).await;
    assert_eq!(status, 200, "{view}");
    view["champion"].as_str().unwrap().to_owned()
}

/// Waits until every replica answers inference with `version`.
async fn converge(client: &reqwest::Client, replicas: &[&Replica], version: &str) {
    for replica in replicas {
        common::eventually(&format!("{} answers with {version}", replica.addr), WAIT, || async {
            (infer(client, replica).await == (200, Some(version.to_owned()))).then_some(())
        })
        .await;
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_every_replica_and_races_have_one_winner() {
    let Fleet { pg, setup: _files, url: _, replicas, client } = Fleet::start(3).await;
    let all: Vec<&Replica> = replicas.iter().collect();
    converge(&client, &all, "1").await;

    // Two promotions at once, through two replicas, each of a version neither has loaded (so
    // both are still loading when the first is saved): one wins, the other is told what it lost to.
    let promote = format!("/admin/models/{MODEL}/promote");
    let (a, b) = tokio::join!(
        admin(&client, &replicas[0], &promote, json!({"version": "3", "reason": "race a"})),
        admin(&client, &replicas[1], &promote, json!({"version": "4", "reason": "race b"})),
    );
    let statuses = BTreeSet::from([a.0, b.0]);
    assert_eq!(statuses, BTreeSet::from([200, 409]), "{a:?} {b:?}");
    let (winner, loser) = if a.0 == 200 { ("3", &b.1) } else { ("4", &a.1) };
    let message = loser["error"].as_str().unwrap();
    assert!(message.contains("revision 2"), "{message}");
    converge(&client, &all, winner).await;
    for replica in &replicas {
        assert_eq!(champion(&client, replica).await, winner);
    }

    // Traffic on all three while 20 changes go through replica 1: no request fails, every answer
    // is a version that was the cluster's champion at some moment, and all follow every change.
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::<(u16, Option<String>)>::new()));
    let counts: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let mut load = Vec::new();
    for (i, replica) in replicas.iter().enumerate() {
        let (client, stop, answers, addr) = (client.clone(), Arc::clone(&stop), Arc::clone(&answers), replica.addr);
        let counts = Arc::clone(&counts);
        load.push(tokio::spawn(async move {
            // Paced, so the three replicas and PostgreSQL keep some of the two cores.
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let answer = infer_at(&client, addr).await;
                answers.lock().push(answer);
                counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut champions = BTreeSet::from(["1".to_owned(), winner.to_owned()]);
    let mut current = winner.to_owned();
    let mut propagation = Vec::new();
    let mut cycle = ["1", "2", "3", "4"].into_iter().cycle();
    for i in 0..20 {
        let (path, body, next) = if i % 4 == 3 {
            // A rollback returns to the champion before.
            (format!("/admin/models/{MODEL}/rollback"), json!({"reason": "rollback under load"}), None)
        } else {
            let next = cycle.by_ref().find(|v| *v != current).unwrap();
            let body = json!({"version": next, "reason": "promotion under load"});
            (format!("/admin/models/{MODEL}/promote"), body, Some(next))
        };
        let (status, view) = admin(&client, &replicas[0], &path, body).await;
        assert_eq!(status, 200, "change {i}: {view}");
        let written = Instant::now();
        let now = view["champion"].as_str().unwrap().to_owned();
        if let Some(next) = next {
            assert_eq!(now, next);
        }
        champions.insert(now.clone());
        current = now;
        // The time from the write to the last of replicas 2 and 3 answering with the new champion.
        let mut waiting: Vec<&Replica> = replicas[1..].iter().collect();
        while !waiting.is_empty() {
            assert!(written.elapsed() < WAIT, "change {i} did not reach every replica");
            let mut still = Vec::new();
            for replica in waiting {
                if infer(&client, replica).await.1.as_deref() != Some(current.as_str()) {
                    still.push(replica);
                }
            }
            waiting = still;
        }
        propagation.push(written.elapsed());
        // Each replica serves the new champion to the load for a while before the next change.
        let seen: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        common::eventually("the load goes on between changes", WAIT, || async {
            counts.iter().zip(&seen).all(|(c, s)| c.load(Ordering::Relaxed) >= s + 10).then_some(())
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let answers = std::mem::take(&mut *answers.lock());
    let failed: Vec<_> = answers.iter().filter(|(status, _)| *status != 200).collect();
    assert!(failed.is_empty(), "{} of {} requests failed across the changes: {failed:?}", failed.len(), answers.len());
    let answered: BTreeSet<String> = answers.iter().filter_map(|(_, v)| v.clone()).collect();
    assert!(answered.is_subset(&champions), "answers from {answered:?}, champions {champions:?}");
    propagation.sort();
    eprintln!(
        "propagation over {} changes, write to the last replica answering: p50 {:?}, max {:?}; {} requests under load, 0 failed",
        propagation.len(),
        percentile(&propagation, 0.5),
        propagation.last().unwrap(),
        answers.len()
    );

    // The store's view: every replica converged on the last revision.
    let view = common::eventually("every replica converged", WAIT, || async {
        let (status, view) = get(&client, &replicas[2], "/admin/cluster").await;
        assert_eq!(status, 200, "{view}");
        let replicas = view["replicas"].as_array().unwrap();
        (replicas.len() == 3 && replicas.iter().all(|r| r["converged"] == true)).then_some(view)
    })
    .await;
    let revision = view["deployments"][MODEL].as_u64().unwrap();
    assert_eq!(revision, 22, "{view}");
    for replica in view["replicas"].as_array().unwrap() {
        assert_eq!(replica["applied"][MODEL], revision, "{view}");
        assert!(replica["address"].as_str().unwrap().starts_with("127.0.0.1:"), "{view}");
    }
    let analyst = view["analyst"].as_str().unwrap();
    assert!(["r1", "r2", "r3"].contains(&analyst), "one of them is the analyst: {view}");
    // Every change is in the shared audit log, from the replica that made it.
    let audited: i64 = pg.sql(|c| {
        c.query_one("SELECT count(*) FROM gauntlet.audit WHERE entry->>'result' = 'ok' AND replica = 'r1'", &[])
            .unwrap()
            .get(0)
    });
    assert!(audited >= 20, "{audited} audit entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_take_the_store_and_a_replica_without_the_files_says_so() {
    let pg = Postgres::start();
    let setup = Setup::new();
    let url = pg.url("postgres");
    let models = common::models_dir();
    // Replica 3's disk lacks version 4.
    let partial = setup.models_without(&["4"]);
    let mut r1 = Replica::spawn(&setup.config("r1", &url, &models, ""));
    let mut r2 = Replica::spawn(&setup.config("r2", &url, &models, ""));
    let r3 = Replica::spawn(&setup.config("r3", &url, &partial, "poll_interval_ms = 500"));
    let client = reqwest::Client::new();
    for replica in [&r1, &r2, &r3] {
        wait_ready(&client, replica).await;
    }
    let (status, view) = admin(&client, &r1, &format!("/admin/models/{MODEL}/promote"), json!({"version": "4"})).await;
    assert_eq!(status, 200, "{view}");
    converge(&client, &[&r1, &r2], "4").await;

    // Replica 3 cannot load 4: it keeps serving 1, ready, and says it is not converged.
    // The others' heartbeats say they converged, each on its own next beat.
    common::eventually("replica 3 reports itself not converged, the others converged", WAIT, || async {
        let (_, view) = get(&client, &r1, "/admin/cluster").await;
        let replicas = view["replicas"].as_array()?;
        let r3 = replicas.iter().find(|r| r["id"] == "r3")?;
        let others = replicas.iter().filter(|r| r["id"] != "r3").all(|r| r["converged"] == true);
        (others && r3["converged"] == false && r3["problem"].as_str().is_some_and(|p| p.contains("4"))).then_some(())
    })
    .await;
    assert_eq!(infer(&client, &r3).await, (200, Some("1".to_owned())));
    assert_eq!(get(&client, &r3, "/v2/health/ready").await.0, 200);
    // `gauntlet status` shows the same, as an operator reads it.
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .args(["status", "--url", &r1.url("")])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{table}{}", String::from_utf8_lossy(&status.stderr));
    let line = |id: &str| table.lines().find(|l| l.trim_start().starts_with(id)).unwrap_or_default().to_owned();
    assert!(table.contains("cluster: postgres://postgres@127.0.0.1:"), "{table}");
    assert!(line("r3 ").contains("behind") && line("r3 ").contains("cannot apply revision 2"), "{table}");
    assert!(line("r1 ").contains("converged") && line("r1 ").contains(&format!("{MODEL}@2")), "{table}");
    let metrics = client.get(r3.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("gauntlet_cluster_converged 0"), "{metrics}");
    // A change through the replica that is behind loses to the revision it has not applied.
    let (status, refused) =
        admin(&client, &r3, &format!("/admin/models/{MODEL}/promote"), json!({"version": "3"})).await;
    assert_eq!(status, 409, "{refused}");

    // Its files arrive: it catches up on its own.
    copy(&common::models_dir().join(MODEL).join("4"), &partial.join(MODEL).join("4"));
    converge(&client, &[&r3], "4").await;
    common::eventually("replica 3 converged", WAIT, || async {
        let (_, view) = get(&client, &r1, "/admin/cluster").await;
        view["replicas"].as_array()?.iter().all(|r| r["converged"] == true).then_some(())
    })
    .await;

    // A restarted replica serves the store's champion, not its file's ("1").
    assert!(r2.terminate().success(), "{}", r2.logs());
    let (_, view) = get(&client, &r1, "/admin/cluster").await;
    assert!(view["replicas"].as_array().unwrap().iter().all(|r| r["id"] != "r2"), "a stopped replica leaves: {view}");
    let r2 = Replica::spawn(&r2.config.clone());
    wait_ready(&client, &r2).await;
    assert_eq!(infer(&client, &r2).await, (200, Some("4".to_owned())));
    assert_eq!(champion(&client, &r2).await, "4");
    assert!(r1.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_down_replicas_serve_and_changes_wait() {
    let Fleet { pg, setup, url, replicas, client } = Fleet::start(3).await;
    let models = common::models_dir();
    let all: Vec<&Replica> = replicas.iter().collect();
    let (status, _) =
        admin(&client, &replicas[0], &format!("/admin/models/{MODEL}/promote"), json!({"version": "2"})).await;
    assert_eq!(status, 200);
    converge(&client, &all, "2").await;

    pg.stop();
    // Serving goes on from what each replica applied.
    let mut served = 0;
    for _ in 0..50 {
        for replica in &replicas {
            assert_eq!(infer(&client, replica).await, (200, Some("2".to_owned())));
            served += 1;
        }
    }
    // A change answers 503, naming the store; nothing changed.
    let (status, refused) =
        admin(&client, &replicas[1], &format!("/admin/models/{MODEL}/promote"), json!({"version": "3"})).await;
    assert_eq!(status, 503, "{refused}");
    let message = refused["error"].as_str().unwrap();
    assert!(message.contains("cluster store") && message.contains(&format!("127.0.0.1:{}", pg.port)), "{message}");
    assert!(!message.contains(pg::PASSWORD), "{message}");
    assert_eq!(champion(&client, &replicas[1]).await, "2");
    assert_eq!(get(&client, &replicas[0], "/admin/cluster").await.0, 503);
    // A replica that starts now does not know the champion: alive, not ready.
    let late = Replica::spawn(&setup.config("r4", &url, &models, ""));
    common::eventually("the late replica answers liveness", WAIT, || async {
        (get(&client, &late, "/v2/health/live").await.0 == 200).then_some(())
    })
    .await;
    let (status, not_ready) = get(&client, &late, "/v2/health/ready").await;
    assert_eq!(status, 503, "{not_ready}");
    assert!(not_ready["error"].as_str().unwrap().contains("cluster"), "{not_ready}");
    for _ in 0..20 {
        for replica in &replicas {
            assert_eq!(infer(&client, replica).await.0, 200);
            served += 1;
        }
    }

    pg.resume();
    wait_ready(&client, &late).await;
    // The store's champion, not the late replica's configuration's.
    assert_eq!(infer(&client, &late).await, (200, Some("2".to_owned())));
    let (status, view) = common::eventually("a change succeeds again", WAIT, || async {
        let answer =
            admin(&client, &replicas[1], &format!("/admin/models/{MODEL}/promote"), json!({"version": "3"})).await;
        (answer.0 != 503).then_some(answer)
    })
    .await;
    assert_eq!(status, 200, "{view}");
    let everyone: Vec<&Replica> = replicas.iter().chain([&late]).collect();
    converge(&client, &everyone, "3").await;
    common::eventually("all four converged", WAIT, || async {
        let (_, view) = get(&client, &replicas[2], "/admin/cluster").await;
        let replicas = view["replicas"].as_array()?;
        (replicas.len() == 4 && replicas.iter().all(|r| r["converged"] == true)).then_some(())
    })
    .await;
    eprintln!("during the outage: {served} requests served, 0 failed; after it, every replica converged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cluster_configuration_stops_startup_naming_the_cause() {
    let pg = Postgres::start();
    let setup = Setup::new();
    let models = common::models_dir();
    // A newer binary's schema, in a schema of its own.
    pg.sql(|c| {
        c.batch_execute(
            "CREATE SCHEMA future; CREATE TABLE future.schema_migrations (version integer PRIMARY KEY, \
             applied_at timestamptz NOT NULL DEFAULT now(), binary_version text NOT NULL); \
             INSERT INTO future.schema_migrations (version, binary_version) VALUES (99, '9.0.0');",
        )
        .unwrap()
    });
    let wrong_password = pg.url("postgres").replace(pg::PASSWORD, "wrong");
    let cases: [(&str, String, &str, &[&str]); 4] = [
        ("unparsable", "postgres://127.0.0.1:notaport/x".to_owned(), "", &["`cluster.database_url`"]),
        ("password", wrong_password, "", &["refused", "password"]),
        ("database", pg.url("missing"), "", &["refused", "\"missing\" does not exist"]),
        ("schema", pg.url("postgres"), "name = \"future\"", &["schema version 99", "upgrade"]),
    ];
    for (case, url, extra, needles) in cases {
        let config = setup.config(case, &url, &models, extra);
        let output = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{case}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for needle in needles {
            assert!(stderr.contains(needle), "{case}: {needle} not in {stderr}");
        }
        assert!(!stderr.contains(pg::PASSWORD), "{case}: the password is in the message: {stderr}");
    }
    // Replicas starting together migrate once: the schema is there, at one version.
    let configs: Vec<PathBuf> =
        (1..=3).map(|i| setup.config(&format!("m{i}"), &pg.url("postgres"), &models, "name = \"together\"")).collect();
    let mut started: Vec<Replica> = configs.iter().map(|c| Replica::spawn(c)).collect();
    let client = reqwest::Client::new();
    for replica in &started {
        wait_ready(&client, replica).await;
    }
    let versions: Vec<i32> = pg.sql(|c| {
        c.query("SELECT version FROM together.schema_migrations", &[]).unwrap().iter().map(|r| r.get(0)).collect()
    });
    assert_eq!(versions, (1..=gauntlet::cluster::SCHEMA_VERSION).collect::<Vec<_>>(), "{}", started[0].logs());
    let seeded: BTreeMap<String, i64> = pg.sql(|c| {
        c.query("SELECT model, revision FROM together.deployments", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    });
    // Ready means seeded or following: whichever replica seeded, the others took its row.
    assert_eq!(seeded, BTreeMap::from([(MODEL.to_owned(), 1)]));
    for replica in &mut started {
        assert!(replica.terminate().success(), "{}", replica.logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_over_tls_checks_the_certificate() {
    let pg = Postgres::start_tls();
    let setup = Setup::new();
    let models = common::models_dir();
    let url = format!("{}?sslmode=require", pg.url("postgres"));
    let ca = pg.ca.clone().unwrap();
    let client = reqwest::Client::new();
    // Without the CA the server's certificate is not trusted: the replica never reads the store,
    // so it is not ready, and its log says why.
    let untrusting = Replica::spawn(&setup.config("untrusting", &url, &models, ""));
    common::eventually("the untrusting replica says why", WAIT, || async {
        untrusting.logs().contains("certificate").then_some(())
    })
    .await;
    assert_eq!(get(&client, &untrusting, "/v2/health/ready").await.0, 503);
    // With it, TLS all the way: ready, changes work, and the server sees only TLS sessions from it.
    let trusting = Replica::spawn(&setup.config("trusting", &url, &models, &format!("ca_file = \"{}\"", ca.display())));
    wait_ready(&client, &trusting).await;
    let (status, view) =
        admin(&client, &trusting, &format!("/admin/models/{MODEL}/promote"), json!({"version": "2"})).await;
    assert_eq!(status, 200, "{view}");
    let (tls, plain): (i64, i64) = pg.sql(|c| {
        let row = c
            .query_one(
                "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) FROM pg_stat_ssl s \
                 JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'gauntlet'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    });
    assert!(tls >= 2 && plain == 0, "{tls} TLS sessions, {plain} without");
}

/// Sends holdout row `i` as request `id` to `scorer`, and its label to `labeller`.
async fn score_and_label(client: &reqwest::Client, scorer: &Replica, labeller: &Replica, i: usize, id: &str) {
    let holdout = common::holdout(MODEL);
    let mut body = common::infer_body(&[holdout.rows[i].clone()]);
    body["id"] = json!(id);
    let response = client.post(scorer.url(&format!("/v2/models/{MODEL}/infer"))).json(&body).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let truth = holdout.truth.as_ref().unwrap().1[i];
    let (status, answer) =
        admin(client, labeller, &format!("/v2/models/{MODEL}/feedback"), json!({"id": id, "truth": truth})).await;
    assert!(status == 200 || status == 202, "{status} {answer}");
}

fn stored_ids(pg: &Postgres, table: &str) -> BTreeSet<String> {
    pg.sql(|c| {
        c.query(&format!("SELECT DISTINCT request_id FROM gauntlet.{table}"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    })
}

/// How many records and labels the store holds.
fn stored_counts(pg: &Postgres) -> (i64, i64) {
    pg.sql(|c| {
        let row = c
            .query_one("SELECT (SELECT count(*) FROM gauntlet.records), (SELECT count(*) FROM gauntlet.labels)", &[])
            .unwrap();
        (row.get(0), row.get(1))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_labels_reach_the_store_through_an_outage() {
    let Fleet { pg, setup, url, mut replicas, client } = Fleet::start(2).await;
    // Each request scored by one replica, its label posted to the other; half of them while the
    // database is down.
    let mut ids = BTreeSet::new();
    for i in 0..60 {
        if i == 30 {
            pg.stop();
        }
        let id = format!("req-{i}");
        score_and_label(&client, &replicas[i % 2], &replicas[(i + 1) % 2], i, &id).await;
        ids.insert(id);
    }
    pg.resume();
    common::eventually("every record and label reached the store", WAIT, || async {
        (stored_ids(&pg, "records") == ids && stored_ids(&pg, "labels") == ids).then_some(())
    })
    .await;
    let (pairs, rows): (i64, i64) = pg.sql(|c| {
        let row = c
            .query_one("SELECT count(*) FILTER (WHERE truth IS NOT NULL), count(*) FROM gauntlet.outcomes", &[])
            .unwrap();
        (row.get(0), row.get(1))
    });
    assert_eq!((pairs, rows), (60, 60), "the view pairs each record with its label");
    // The documented query (docs/cluster.md), as a data scientist would run it.
    let doc = std::fs::read_to_string(common::root().join("docs/cluster.md")).unwrap();
    let query = doc.split("```sql\n").nth(1).unwrap().split("```").next().unwrap().to_owned();
    let by_version: Vec<(String, i64, i64)> =
        pg.sql(|c| c.query(&query, &[]).unwrap().iter().map(|r| (r.get(1), r.get(2), r.get(3))).collect());
    assert_eq!(by_version, vec![("1".to_owned(), 60, 60)]);

    // A replica that forwards its spool again (its checkpoint lost) stores nothing twice.
    let config = replicas[0].config.clone();
    assert!(replicas[0].terminate().success());
    std::fs::remove_file(config.parent().unwrap().join("outcomes/.forwarded.json")).unwrap();
    replicas[0] = Replica::spawn(&config);
    wait_ready(&client, &replicas[0]).await;
    common::eventually("the spool forwarded again", WAIT, || async {
        let metrics = client.get(replicas[0].url("/metrics")).send().await.ok()?.text().await.ok()?;
        let forwarded = metrics
            .lines()
            .find(|l| l.starts_with("gauntlet_cluster_forwarded_total{kind=\"record\"}"))?
            .rsplit(' ')
            .next()?
            .parse::<f64>()
            .ok()?;
        (forwarded >= 30.0).then_some(())
    })
    .await;
    assert_eq!(stored_counts(&pg), (60, 60));
    eprintln!(
        "outage: 30 requests served and 30 labels accepted with the database down, 0 failed; all 60 records \
         and 60 labels reached the tables (by request id); a spool sent again stored nothing twice"
    );

    // The report from the tables is the report from the replicas' logs, field for field.
    for replica in &mut replicas {
        assert!(replica.terminate().success());
    }
    let report = |args: Vec<String>| {
        let output = Command::new(env!("CARGO_BIN_EXE_gauntlet")).arg("report").args(&args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    let logs: Vec<String> = ["r1", "r2"]
        .iter()
        .flat_map(|r| ["--log".to_owned(), format!("{}/{r}/outcomes/*.jsonl", setup.dir.path().display())])
        .collect();
    let from_logs = report([vec![MODEL.to_owned(), "--json".to_owned()], logs].concat());
    let from_store = report(vec![MODEL.to_owned(), "--json".to_owned(), "--database".to_owned(), url.clone()]);
    // Equal but for the last bits of sums taken in another order (the tables are read in time
    // order, the files one replica after the other): every count and verdict exactly.
    assert_same(&from_store, &from_logs, "");
    assert_eq!(from_store["labelled_records"], 60, "{from_store}");
}

/// `a` and `b` have the same keys, strings and integers, and numbers within 1e-12 relative.
#[track_caller]
fn assert_same(a: &Value, b: &Value, path: &str) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{path}");
            for (key, value) in x {
                assert_same(value, &y[key], &format!("{path}.{key}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{path}");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert_same(x, y, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= 1e-12 * x.abs().max(y.abs()), "{path}: {x} vs {y}");
        }
        _ => assert_eq!(a, b, "{path}"),
    }
}

/// The report of `replica` once it counts `labels` labelled records (and as many records).
async fn report_with(client: &reqwest::Client, replica: &Replica, labels: u64) -> Value {
    common::eventually(&format!("{} reports {labels} labelled records", replica.addr), WAIT, || async {
        let (status, report) = get(client, replica, &format!("/admin/models/{MODEL}/comparison")).await;
        (status == 200 && report["labelled_records"] == labels && report["records"] == labels).then_some(report)
    })
    .await
}

/// The report without what no two processes share: latencies, and the cluster's snapshot note.
fn figures(mut report: Value) -> Value {
    report.as_object_mut().unwrap().remove("snapshot");
    for model in report["models"].as_array_mut().unwrap() {
        let model = model.as_object_mut().unwrap();
        model.retain(|key, _| !key.starts_with("latency_"));
    }
    report
}

fn analyst_of(view: &Value) -> Option<String> {
    view["analyst"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_comparison_across_replicas_through_a_failover_and_an_outage() {
    let Fleet { pg, setup, url: _, mut replicas, client } = Fleet::start(3).await;
    // One node given the same requests and labels: the figures the cluster must equal.
    let single = Replica::spawn(&setup.single("single", &common::models_dir(), DEMO));
    wait_ready(&client, &single).await;
    // Request i scored by one replica in turn and labelled through the next; the same to one node.
    let pair = |i: usize, replicas: &[Replica]| twice(&client, replicas, &single, format!("pair-{i}"), i);
    for i in 0..40 {
        pair(i, &replicas).await;
    }
    let mut sent = 40;
    let view = common::eventually("an analyst", WAIT, || async {
        analyst_of(&get(&client, &replicas[0], "/admin/cluster").await.1)
    })
    .await;
    for replica in &replicas {
        report_with(&client, replica, sent).await;
    }
    let history = |replica: &Replica| {
        let (client, replica) = (client.clone(), replica.addr);
        async move {
            let url = format!("http://{replica}/admin/models/{MODEL}/history");
            let answer: Value = client.get(url).send().await.ok()?.json().await.ok()?;
            answer["points"].as_array().cloned()
        }
    };
    let before = common::eventually("the analyst writes a history point", WAIT, || async {
        history(&replicas[0]).await.filter(|p| !p.is_empty())
    })
    .await;

    // The analyst dies (SIGKILL: its lock goes with its connection); another takes over.
    let index = replicas.iter().position(|r| r.config.parent().unwrap().ends_with(&view)).unwrap();
    let mut dead = replicas.remove(index);
    let killed = Instant::now();
    dead.child.take().unwrap().kill().unwrap();
    let next = common::eventually("another analyst", WAIT, || async {
        analyst_of(&get(&client, &replicas[0], "/admin/cluster").await.1).filter(|a| *a != view)
    })
    .await;
    let failover = killed.elapsed();
    for i in 40..70 {
        pair(i, &replicas).await;
    }
    sent += 30;
    // The history survives the analyst: its points are still there, and the next one's follow.
    let after = common::eventually("the next analyst adds to the history", WAIT, || async {
        let newest = |p: &Vec<Value>| p.last().and_then(|l| l["labelled_records"].as_u64()).unwrap_or(0);
        history(&replicas[0]).await.filter(|p| p.len() > before.len() && newest(p) > 40)
    })
    .await;
    assert_eq!(after[0], before[0], "the first point is kept");
    // The database goes away mid-traffic: requests are served, labels accepted, nothing lost.
    pg.stop();
    for i in 70..100 {
        pair(i, &replicas).await;
    }
    sent += 30;
    pg.resume();
    let mut reports = Vec::new();
    for replica in &replicas {
        reports.push(report_with(&client, replica, sent).await);
    }
    let reference = report_with(&client, &single, sent).await;
    // The outage cut every analyst's connection, so any live replica may hold the lock now.
    let now = analyst_of(&get(&client, &replicas[0], "/admin/cluster").await.1).unwrap();
    for report in &reports {
        assert_eq!(report["snapshot"]["analyst"], json!(now), "{report}");
        assert_ne!(now, view);
        assert_same(&figures(report.clone()), &figures(reference.clone()), "");
    }
    eprintln!(
        "analyst failover: {view} killed, {next} took over in {failover:?}; {sent} labels each counted once, \
         the figures equal one node's"
    );
}

/// The analyst is killed (SIGKILL) three times at seeded random points of the traffic, each time
/// mid-stream (its reads not waited for), with checkpoints every 300 ms; each killed replica comes
/// back. Every successor resumes from a checkpoint and reads again only what came after it: in
/// the end every replica's report equals one node's given the same requests and labels, each
/// label counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_analyst_killed_at_random_points_counts_every_label_once() {
    let env = [("GAUNTLET_CLUSTER__CHECKPOINT_INTERVAL_MS", "300")];
    let Fleet { pg, setup, url: _, mut replicas, client } = Fleet::start_with(3, DEMO, &env).await;
    let single = Replica::spawn(&setup.single("single", &common::models_dir(), DEMO));
    wait_ready(&client, &single).await;
    let pair = |i: usize, replicas: &[Replica]| twice(&client, replicas, &single, format!("kill-{i}"), i);
    // xorshift64, seeded: the kill points are random but the same on every run.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    };
    let mut sent = 0;
    let mut killed = Vec::new();
    for _ in 0..3 {
        let n = 10 + next(30) as usize;
        for i in sent..sent + n {
            pair(i, &replicas).await;
        }
        sent += n;
        // Every row in the store (a SIGKILL would also lose the killed replica's unflushed log,
        // which is not what this test is about); the analyst may still be reading them.
        common::eventually("every row in the store", WAIT, || async {
            (stored_counts(&pg) == (sent as i64, sent as i64)).then_some(())
        })
        .await;
        let analyst = common::eventually("an analyst", WAIT, || async {
            analyst_of(&get(&client, &replicas[0], "/admin/cluster").await.1)
        })
        .await;
        let index = replicas.iter().position(|r| r.config.parent().unwrap().ends_with(&analyst)).unwrap();
        let config = replicas[index].config.clone();
        let killed_at = std::time::SystemTime::now();
        replicas[index].child.take().unwrap().kill().unwrap();
        // The first report another analyst writes after the kill already counts every label in the
        // store (a report from before the kill may still be there: the dead one may not have
        // written one yet).
        let survivor = &replicas[(index + 1) % replicas.len()];
        let first = common::eventually("a report from the next analyst", WAIT, || async {
            let (status, report) = get(&client, survivor, &format!("/admin/models/{MODEL}/comparison")).await;
            let written = humantime::parse_rfc3339_weak(report["snapshot"]["as_of"].as_str()?).ok()?;
            (status == 200 && report["snapshot"]["analyst"] != json!(analyst) && written > killed_at).then_some(report)
        })
        .await;
        assert_eq!(first["labelled_records"], sent, "{first}");
        replicas[index] = Replica::spawn_with(&config, &env);
        wait_ready(&client, &replicas[index]).await;
        killed.push((sent, analyst));
    }
    for i in sent..sent + 20 {
        pair(i, &replicas).await;
    }
    sent += 20;
    let reference = report_with(&client, &single, sent as u64).await;
    for replica in &replicas {
        let report = report_with(&client, replica, sent as u64).await;
        assert_same(&figures(report), &figures(reference.clone()), "");
    }
    let checkpoints: i64 = pg.sql(|c| c.query_one("SELECT count(*) FROM gauntlet.checkpoints", &[]).unwrap().get(0));
    assert!(checkpoints > 0);
    let resumed =
        replicas.iter().flat_map(|r| r.logs_vec()).filter(|l| l.contains("resumed from a checkpoint")).count();
    assert!(resumed >= 1, "a successor resumed from a checkpoint");
    eprintln!(
        "analyst killed after {killed:?} labelled pairs; {sent} labels each counted once, the figures equal one node's"
    );
}

/// Request `i` (holdout row `i`, id `id`) scored by one of `replicas` in turn and labelled through
/// the next; the same request and label to `single`, one node, for the figures to compare with.
fn twice(
    client: &reqwest::Client,
    replicas: &[Replica],
    single: &Replica,
    id: String,
    i: usize,
) -> impl std::future::Future<Output = ()> + use<> {
    let (scorer, labeller) =
        (addressed(replicas[i % replicas.len()].addr), addressed(replicas[(i + 1) % replicas.len()].addr));
    let (client, one) = (client.clone(), addressed(single.addr));
    async move {
        let row = i % common::holdout(MODEL).rows.len();
        score_and_label(&client, &scorer, &labeller, row, &id).await;
        score_and_label(&client, &one, &one, row, &id).await;
    }
}

/// A `Replica` value for an address (not a process of its own: dropping it stops nothing).
fn addressed(addr: SocketAddr) -> Replica {
    Replica { child: None, addr, log: Arc::default(), config: PathBuf::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_analysts_policy_promotes_and_every_replica_follows() {
    // Version 2 (95.8% on the holdout) champions, version 1 (98.6%) challenges.
    let deployment = "champion = \"2\"\nchallengers = [\"1\"]\npolicy = { enabled = true, min_labelled_pairs = 100 }";
    let Fleet { pg, setup: _files, url: _, replicas, client } = Fleet::start_with(3, deployment, &[]).await;
    // Labelled traffic through two replicas; neither alone would see it all.
    let data = common::models_dir().join(MODEL).join("holdout.csv");
    let replay = |addr| gauntlet::cli::loadtest::LoadtestArgs {
        concurrency: Some(2),
        connections: 2,
        threads: None,
        requests: Some(500),
        feedback: true,
        feedback_delay: Duration::from_millis(20),
        ..common::loadtest_args_at(addr, MODEL, data.clone())
    };
    let (a, b) = (replay(replicas[0].addr), replay(replicas[1].addr));
    let (a, b) = tokio::join!(gauntlet::cli::loadtest::run(&a), gauntlet::cli::loadtest::run(&b));
    assert_eq!((a.unwrap().errors, b.unwrap().errors), (0, 0));
    converge(&client, &replicas.iter().collect::<Vec<_>>(), "1").await;
    // One decision, by the analyst, audited once.
    let decisions: Vec<(String, String)> = pg.sql(|c| {
        c.query("SELECT replica, entry->>'action' FROM gauntlet.audit WHERE entry->>'actor' = 'policy'", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    });
    let view = get(&client, &replicas[2], "/admin/cluster").await.1;
    assert_eq!(decisions, vec![(analyst_of(&view).unwrap(), "promote".to_owned())], "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_alerts_once_for_the_cluster_from_the_analyst() {
    // A webhook receiver on loopback that counts what it is sent.
    let calls = Arc::new(Mutex::new(Vec::<Value>::new()));
    let received = Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/hooks/drift",
        axum::routing::post(move |body: axum::Json<Value>| {
            let received = Arc::clone(&received);
            async move {
                received.lock().push(body.0);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hooks/drift", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let env = [
        ("GAUNTLET_DRIFT__ENABLED", "true"),
        ("GAUNTLET_DRIFT__WINDOW_ROWS", "286"),
        ("GAUNTLET_DRIFT__MIN_ROWS", "200"),
        ("GAUNTLET_DRIFT__EVALUATE_INTERVAL_MS", "50"),
        ("GAUNTLET_DRIFT__MAX_SAMPLES_PER_S", "0"),
        ("GAUNTLET_DRIFT__MAX_WINDOW_ROWS", "3000000"),
        ("GAUNTLET_DRIFT__WEBHOOK_URL", hook.as_str()),
    ];
    let Fleet { pg: _database, setup, url: _, replicas, client } = Fleet::start_with(2, DEMO, &env).await;
    common::eventually("an analyst", WAIT, || async {
        analyst_of(&get(&client, &replicas[0], "/admin/cluster").await.1)
    })
    .await;
    // The holdout with one feature scaled by 1.5, to both replicas: each sees the drift.
    let mut holdout = common::holdout(MODEL);
    let column = holdout.features.iter().position(|f| f == "mean radius").unwrap();
    for row in &mut holdout.rows {
        row[column] = f64::from(row[column] as f32 * 1.5);
    }
    let data = setup.dir.path().join("shifted.csv");
    holdout.write(&data).unwrap();
    let replay = |addr| gauntlet::cli::loadtest::LoadtestArgs {
        concurrency: Some(2),
        connections: 2,
        threads: None,
        requests: Some(572),
        ..common::loadtest_args_at(addr, MODEL, data.clone())
    };
    let (a, b) = (replay(replicas[0].addr), replay(replicas[1].addr));
    let (a, b) = tokio::join!(gauntlet::cli::loadtest::run(&a), gauntlet::cli::loadtest::run(&b));
    assert_eq!((a.unwrap().errors, b.unwrap().errors), (0, 0));
    // Both replicas are in the alert state; the cluster sent one alert, and the other replica
    // counts the one it left to the analyst.
    for replica in &replicas {
        common::eventually(&format!("{} alerts", replica.addr), WAIT, || async {
            let (_, report) = get(&client, replica, &format!("/admin/models/{MODEL}/drift")).await;
            (report["alerting"] == true).then_some(())
        })
        .await;
    }
    common::eventually("the analyst's alert arrives", WAIT, || async { (!calls.lock().is_empty()).then_some(()) })
        .await;
    common::eventually("the other replica held its alert back", WAIT, || async {
        for replica in &replicas {
            let metrics = client.get(replica.url("/metrics")).send().await.ok()?.text().await.ok()?;
            if metrics.contains("gauntlet_drift_webhook_events_total{result=\"not_analyst\"} 1") {
                return Some(());
            }
        }
        None
    })
    .await;
    let events = calls.lock().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    // Every replica shows the cluster's alert state: the analyst's report, saying whose it is.
    let analyst = analyst_of(&get(&client, &replicas[0], "/admin/cluster").await.1).unwrap();
    for replica in &replicas {
        let report = common::eventually(&format!("{} shows the analyst's drift", replica.addr), WAIT, || async {
            let (_, report) = get(&client, replica, &format!("/admin/models/{MODEL}/drift")).await;
            (report["snapshot"]["analyst"] == json!(analyst) && report["alerting"] == true).then_some(report)
        })
        .await;
        assert!(
            report["drifted"].as_array().unwrap().iter().any(|s| s.as_str().unwrap().contains("mean radius")),
            "{report}"
        );
    }
}

/// The trap a read position falls into: a sequence number is taken at insert, not at commit, so a
/// row with a smaller number can become visible after a larger one was read. Two writers commit in
/// the order opposite to their numbers; "the largest number seen" skips the first writer's row for
/// good, while the analyst's read (position order, below the snapshot's xmin) takes both, once,
/// in order.
#[test]
fn a_row_that_commits_late_is_read_once_and_in_order() {
    use gauntlet::analyst::{Position, read_page};
    use gauntlet::cluster::{ClusterSettings, Connector};
    let pg = Postgres::start();
    let settings = ClusterSettings {
        database_url: Some(gauntlet::secret::Secret::from(pg.url("postgres"))),
        ..ClusterSettings::default()
    };
    let connector = Connector::new(&settings).unwrap();
    let Ok(mut analyst) = connector.connect_migrated() else { panic!("the schema is made") };
    let (mut first, mut second) = (connector.connect().unwrap(), connector.connect().unwrap());
    let insert = "INSERT INTO gauntlet.labels (model, request_id, at, replica, label) \
                  VALUES ('m', $1, now(), 'w', $2::text::jsonb)";
    let label = |id: &str| json!({"kind": "feedback", "model": "m", "request_id": id, "truth": 1}).to_string();
    let positions = |c: &mut postgres::Client, after: i64| -> Vec<String> {
        c.query("SELECT request_id FROM gauntlet.labels WHERE position > $1 ORDER BY position", &[&after])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    // Writer A takes its transaction id and the smaller number, and stays open.
    let mut a = first.transaction().unwrap();
    a.execute(insert, &[&"a", &label("a")]).unwrap();
    // Writer B takes the larger number and commits first.
    second.execute(insert, &[&"b", &label("b")]).unwrap();
    // A reader that keeps "the largest number seen" reads b now...
    assert_eq!(positions(&mut analyst, 0), vec!["b"]);
    let largest: i64 = analyst.query_one("SELECT max(position) FROM gauntlet.labels", &[]).unwrap().get(0);
    // ...while the analyst reads nothing yet: A's transaction is below every later one and open.
    let page = read_page(&mut analyst, "gauntlet", Position::default()).unwrap();
    assert!(page.is_empty(), "nothing is read past a transaction still open");
    a.commit().unwrap();
    // ...and, A committed, finds nothing after b: a is skipped for ever.
    assert!(positions(&mut analyst, largest).is_empty(), "the naive reader skipped a");
    // The analyst reads both, in position order, and nothing again after them.
    let page = read_page(&mut analyst, "gauntlet", Position::default()).unwrap();
    let ids: Vec<String> = page
        .iter()
        .map(|row| serde_json::from_str::<Value>(&row.line).unwrap()["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec!["a", "b"]);
    assert!(page[0].at < page[1].at);
    assert!(read_page(&mut analyst, "gauntlet", page[1].at).unwrap().is_empty());
}

/// A replica that starts on a spool of thousands of lines (a long outage's worth, several chunks)
/// stores every row once; sent again from scratch, nothing twice. The analyst joins every label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_spool_is_stored_whole_and_once() {
    let (pg, setup) = (Postgres::start(), Setup::new());
    let config = setup.config("r1", &pg.url("postgres"), &common::models_dir(), "");
    let spool = config.parent().unwrap().join("outcomes");
    std::fs::create_dir_all(&spool).unwrap();
    let n = 6000;
    let mut lines = String::new();
    for i in 0..n {
        let at = format!("2026-12-01T10:00:{:02}.{:03}Z", i / 1000, i % 1000);
        let record = json!({
            "kind": "outcome", "request_id": format!("spool-{i}"), "timestamp": at, "model": MODEL,
            "answered_by": "1",
            "task": {"kind": "classification", "classes": [0, 1], "label_output": "label", "probabilities_output": "probabilities"},
            "results": [
                {"version": "1", "role": "champion", "status": "ok", "latency_ms": 0.2, "outputs": {"label": [i % 2], "probabilities": [[0.4, 0.6]]}},
                {"version": "2", "role": "challenger", "status": "ok", "latency_ms": 0.5, "outputs": {"label": [1], "probabilities": [[0.3, 0.7]]}},
            ],
        });
        let label = json!({"kind": "feedback", "request_id": format!("spool-{i}"), "timestamp": at, "model": MODEL, "truth": 1});
        lines.push_str(&format!("{record}\n{label}\n"));
    }
    std::fs::write(spool.join("outcomes-20261201T100000Z-1-0000.jsonl"), &lines).unwrap();
    let counts = || stored_counts(&pg);
    let client = reqwest::Client::new();
    let mut replica = Replica::spawn(&config);
    wait_ready(&client, &replica).await;
    common::eventually("the spool in the store", WAIT, || async { (counts() == (n, n)).then_some(()) }).await;
    common::eventually("the analyst joined every label", WAIT, || async {
        let (_, report) = get(&client, &replica, &format!("/admin/models/{MODEL}/comparison")).await;
        (report["labelled_records"] == n).then_some(())
    })
    .await;
    // Sent again from the start: every row is stored once.
    assert!(replica.terminate().success());
    std::fs::remove_file(spool.join(".forwarded.json")).unwrap();
    let replica = Replica::spawn(&config);
    wait_ready(&client, &replica).await;
    common::eventually("the spool forwarded again", WAIT, || async {
        let metrics = client.get(replica.url("/metrics")).send().await.ok()?.text().await.ok()?;
        let forwarded: f64 = metrics
            .lines()
            .find(|l| l.starts_with("gauntlet_cluster_forwarded_total{kind=\"label\"}"))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()?;
        (forwarded >= n as f64).then_some(())
    })
    .await;
    assert_eq!(counts(), (n, n));
}

/// A newest checkpoint that does not decode (a damaged row, or one from a format this binary does not
/// read) is named in the log and skipped for the one before it; the rows after that one are read
/// again, and every label is still counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_checkpoint_is_skipped_for_the_one_before_it() {
    let env = [("GAUNTLET_CLUSTER__CHECKPOINT_INTERVAL_MS", "200")];
    let Fleet { pg, setup, url: _, mut replicas, client } = Fleet::start_with(1, DEMO, &env).await;
    let single = Replica::spawn(&setup.single("single", &common::models_dir(), DEMO));
    wait_ready(&client, &single).await;
    let checkpoints =
        || -> i64 { pg.sql(|c| c.query_one("SELECT count(*) FROM gauntlet.checkpoints", &[]).unwrap().get(0)) };
    // Two rounds of traffic, each covered by a checkpoint of its own.
    let mut sent = 0;
    for round in 0..2 {
        for i in sent..sent + 15 {
            twice(&client, &replicas, &single, format!("damaged-{i}"), i).await;
        }
        sent += 15;
        report_with(&client, &replicas[0], sent as u64).await;
        let covered = || -> i64 {
            pg.sql(|c| c.query_one("SELECT coalesce(max(rows), 0) FROM gauntlet.checkpoints", &[]).unwrap().get(0))
        };
        common::eventually("a checkpoint of every row", WAIT, || async {
            (covered() == 2 * sent as i64).then_some(())
        })
        .await;
        assert!(checkpoints() > round);
    }
    // The newest is damaged, another written in a format from the future; the analyst restarts.
    pg.sql(|c| {
        c.batch_execute(
            "UPDATE gauntlet.checkpoints SET state = '\\x00ff' WHERE id = (SELECT max(id) FROM gauntlet.checkpoints);
             INSERT INTO gauntlet.checkpoints (analyst, binary_version, format, xid, position, rows, state)
             SELECT 'future', '9.9.9', 99, xid, position, rows, state FROM gauntlet.checkpoints
             WHERE id = (SELECT max(id) FROM gauntlet.checkpoints);",
        )
        .unwrap()
    });
    let config = replicas[0].config.clone();
    replicas[0].child.take().unwrap().kill().unwrap();
    replicas[0] = Replica::spawn_with(&config, &env);
    wait_ready(&client, &replicas[0]).await;
    let reference = report_with(&client, &single, sent as u64).await;
    let report = common::eventually("the new analyst's report", WAIT, || async {
        let report = report_with(&client, &replicas[0], sent as u64).await;
        replicas[0].logs_vec().iter().any(|l| l.contains("resumed from a checkpoint")).then_some(report)
    })
    .await;
    assert_same(&figures(report), &figures(reference), "");
    let logs = replicas[0].logs();
    assert!(logs.contains("checkpoint format 99 is not the format 1 this binary reads"), "{logs}");
    assert!(logs.contains("checkpoint does not decode"), "{logs}");
}

/// Retention drops a day's partition under the analyst's feet: the figures its rows gave stay in
/// the checkpoint, and a successor goes on from it with every label still counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_stays_valid_when_retention_drops_a_day() {
    let env = [("GAUNTLET_CLUSTER__CHECKPOINT_INTERVAL_MS", "200")];
    let Fleet { pg, setup: _setup, url: _, mut replicas, client } = Fleet::start_with(1, DEMO, &env).await;
    // The forwarder's first partition upkeep has run (it makes today's partitions and drops old
    // days in one transaction; the next is an hour away): the old day planted now stays until the
    // restart below.
    let upkept = || -> bool {
        pg.sql(|c| {
            c.query_one("SELECT to_regclass('gauntlet.labels_' || to_char(current_date, 'YYYYMMDD')) IS NOT NULL", &[])
                .unwrap()
                .get(0)
        })
    };
    common::eventually("the first partition upkeep", WAIT, || async { upkept().then_some(()) }).await;
    // Forty days ago (retention keeps 30): a partition of its own, with 20 records and labels.
    pg.sql(|c| {
        c.batch_execute(
            "DO $$
             DECLARE d date := current_date - 40;
             BEGIN
               EXECUTE format('CREATE TABLE gauntlet.%I PARTITION OF gauntlet.records FOR VALUES FROM (%L) TO (%L)',
                              'records_' || to_char(d, 'YYYYMMDD'), d, d + 1);
               EXECUTE format('CREATE TABLE gauntlet.%I PARTITION OF gauntlet.labels FOR VALUES FROM (%L) TO (%L)',
                              'labels_' || to_char(d, 'YYYYMMDD'), d, d + 1);
               INSERT INTO gauntlet.records (model, request_id, at, answered_by, replica, record)
               SELECT 'breast-cancer', 'old-' || i, d + interval '1 hour', '1', 'old', jsonb_build_object(
                 'kind', 'outcome', 'request_id', 'old-' || i, 'model', 'breast-cancer', 'answered_by', '1',
                 'task', jsonb_build_object('kind', 'classification', 'classes', jsonb_build_array(0, 1), 'label_output', 'label'),
                 'results', jsonb_build_array(
                   jsonb_build_object('version', '1', 'role', 'champion', 'status', 'ok', 'outputs', jsonb_build_object('label', jsonb_build_array(1))),
                   jsonb_build_object('version', '2', 'role', 'challenger', 'status', 'ok', 'outputs', jsonb_build_object('label', jsonb_build_array(i % 2)))))
               FROM generate_series(1, 20) i;
               INSERT INTO gauntlet.labels (model, request_id, at, replica, label)
               SELECT 'breast-cancer', 'old-' || i, d + interval '2 hours', 'old',
                      jsonb_build_object('kind', 'feedback', 'request_id', 'old-' || i, 'model', 'breast-cancer', 'truth', 1)
               FROM generate_series(1, 20) i;
             END $$;",
        )
        .unwrap()
    });
    let holdout = common::holdout(MODEL);
    for i in 0..10 {
        score_and_label(&client, &replicas[0], &replicas[0], i % holdout.rows.len(), &format!("new-{i}")).await;
    }
    let before = report_with(&client, &replicas[0], 30).await;
    let covered = || -> i64 {
        pg.sql(|c| c.query_one("SELECT coalesce(max(rows), 0) FROM gauntlet.checkpoints", &[]).unwrap().get(0))
    };
    common::eventually("a checkpoint of every row", WAIT, || async { (covered() == 60).then_some(()) }).await;
    // A restart: its forwarder's upkeep drops the old day at once; it is the analyst again.
    let config = replicas[0].config.clone();
    assert!(replicas[0].terminate().success());
    replicas[0] = Replica::spawn_with(&config, &env);
    wait_ready(&client, &replicas[0]).await;
    let old_partitions = || -> i64 {
        pg.sql(|c| {
            c.query_one(
                "SELECT count(*) FROM pg_class WHERE relname IN ('records_' || to_char(current_date - 40, 'YYYYMMDD'), \
                 'labels_' || to_char(current_date - 40, 'YYYYMMDD'))",
                &[],
            )
            .unwrap()
            .get(0)
        })
    };
    common::eventually("the old day dropped", WAIT, || async { (old_partitions() == 0).then_some(()) }).await;
    for i in 10..15 {
        score_and_label(&client, &replicas[0], &replicas[0], i % holdout.rows.len(), &format!("new-{i}")).await;
    }
    let after = report_with(&client, &replicas[0], 35).await;
    assert!(replicas[0].logs_vec().iter().any(|l| l.contains("resumed from a checkpoint")));
    // The dropped day's pairs are still in the figures: 30 before, 35 after, the old ones among them.
    let pairs = |report: &Value| report["pairs"][0]["labelled_pairs"].as_u64().unwrap();
    assert_eq!((pairs(&before), pairs(&after)), (30, 35), "{after}");
}
