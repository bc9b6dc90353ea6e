//! Versions from an MLflow Model Registry: a real tracking server (`mlflow server` from PyPI, SQLite
//! backend, artifacts proxied by `--serve-artifacts`) started by the test on a free port; versions
//! logged and registered by `models/mlflow_register.py`; a challenger taken through its alias; the
//! paired records naming MLflow's versions; the champion alias written back after a promotion and a
//! rollback; the server stopped (serving goes on, a change fails naming the registry, the poller
//! recovers when it returns); refused credentials stop start-up; the search over the registry; and
//! three replicas on a PostgreSQL of the test's own each shadowing the version an alias names, timed.

mod common;
#[allow(dead_code)] // the helpers this file does not use
#[path = "common/postgres.rs"]
mod pg;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{TestServer, eventually};
use serde_json::{Value, json};

/// `mlflow server` on 127.0.0.1:`port`, its database and artifacts in `dir` (so a restart on the
/// same port and directory is the same registry), killed with its workers when dropped.
struct Mlflow {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Mlflow {
    async fn start(dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut mlflow = Self { port, dir: dir.to_owned(), child: None };
        mlflow.run(&[], &[]).await;
        mlflow
    }

    /// (Re)starts the server; `args` and `env` are added (the basic-auth app, say).
    async fn run(&mut self, args: &[&str], env: &[(&str, &str)]) {
        let python = common::python_env(Some("mlflow"));
        let database = format!("sqlite:///{}", self.dir.join("mlflow.db").display());
        let artifacts = self.dir.join("artifacts");
        let mut command = Command::new(python.with_file_name("mlflow"));
        command
            .args(["server", "--host", "127.0.0.1", "--port", &self.port.to_string(), "--workers", "1"])
            .args(["--backend-store-uri", &database, "--serve-artifacts", "--artifacts-destination"])
            .arg(&artifacts)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(&self.dir)
            // Its own process group, so that stopping it stops its workers too.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(self.dir.join("server.log")).unwrap()));
        self.child = Some(command.spawn().expect("mlflow server starts"));
        let health = format!("{}/health", self.url());
        eventually("the MLflow server answers", Duration::from_secs(120), || {
            let health = health.clone();
            async move { reqwest::get(&health).await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        })
        .await;
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The whole group: gunicorn's or uvicorn's workers hold the port otherwise.
            let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Logs and registers demo version folders with the helper a data scientist uses; returns the
    /// registry's version numbers.
    fn register(&self, folders: &[&str], alias: Option<&str>) -> Vec<String> {
        let python = common::python_env(Some("mlflow"));
        let mut command = Command::new(python);
        command.arg(common::root().join("models/mlflow_register.py")).args(["--tracking-uri", &self.url()]);
        command.args(folders.iter().map(|f| common::models_dir().join(f)));
        if let Some(alias) = alias {
            command.args(["--alias", alias]);
        }
        let output = command.current_dir(&self.dir).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        stdout
            .lines()
            .filter_map(|l| Some(l.split("registered version ").nth(1)?.split(' ').next()?.to_owned()))
            .collect()
    }

    fn api(&self, path: &str) -> String {
        format!("{}/api/2.0/mlflow/{path}", self.url())
    }

    async fn set_alias(&self, model: &str, alias: &str, version: &str) {
        let body = json!({ "name": model, "alias": alias, "version": version });
        let answer = reqwest::Client::new().post(self.api("registered-models/alias")).json(&body).send().await.unwrap();
        assert!(answer.status().is_success(), "{}", answer.text().await.unwrap());
    }

    async fn alias(&self, model: &str, alias: &str) -> Option<String> {
        let url = self.api("registered-models/alias");
        let answer = reqwest::Client::new().get(url).query(&[("name", model), ("alias", alias)]).send().await.ok()?;
        let answer: Value = answer.json().await.ok()?;
        answer["model_version"]["version"].as_str().map(str::to_owned)
    }
}

impl Drop for Mlflow {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config_file(dir: &Path, mlflow: &Mlflow, champion: &str) -> PathBuf {
    config_file_with(dir, mlflow, champion, "")
}

/// The same, with more keys for `[models.breast-cancer]` (`versions = ["1"]`, say).
fn config_file_with(dir: &Path, mlflow: &Mlflow, champion: &str, model_keys: &str) -> PathBuf {
    let text = format!(
        r#"repository = "mlflow+{url}"
repository_poll_s = 1
shadow_cpu_budget = 2.0
shadow_deadline_ms = 10000

[repository_fetch]
timeout_ms = 3000
retries = 1

[models.breast-cancer]
champion = "{champion}"
{model_keys}

[models.breast-cancer.mlflow]
challenger_alias = "challenger"
champion_alias = "champion"
"#,
        url = mlflow.url()
    );
    let path = dir.join("gauntlet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn row() -> Value {
    common::infer_body(&common::reference_rows("breast-cancer", "1")[..1])
}

async fn infer(server: &TestServer, id: &str) -> reqwest::Response {
    let url = server.url("/v2/models/breast-cancer/infer");
    reqwest::Client::new().post(url).header("x-request-id", id).json(&row()).send().await.unwrap()
}

async fn model(server: &TestServer) -> Value {
    reqwest::get(server.url("/admin/models/breast-cancer")).await.unwrap().json().await.unwrap()
}

async fn search(server: &TestServer, query: &[(&str, &str)]) -> (u16, Value) {
    let answer = reqwest::Client::new().get(server.url("/admin/repository")).query(query).send().await.unwrap();
    (answer.status().as_u16(), answer.json().await.unwrap())
}

fn versions(view: &Value) -> Vec<(String, String)> {
    let versions = view["versions"].as_array().cloned().unwrap_or_default();
    versions
        .iter()
        .map(|v| (v["version"].as_str().unwrap().to_owned(), v["state"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenger_by_alias_shadows_and_the_champion_alias_follows_promotions() {
    let dir = tempfile::tempdir().unwrap();
    let mlflow = Mlflow::start(dir.path()).await;
    // Demo versions 1 and 3 (holdout accuracy 0.986 and 0.965) become the registry's 1 and 2.
    assert_eq!(mlflow.register(&["breast-cancer/1", "breast-cancer/3"], None), ["1", "2"]);
    let file = config_file(dir.path(), &mlflow, "1");
    let mut server = TestServer::start_from(Some(&file), &[], Default::default()).await;
    assert_eq!(infer(&server, "before").await.status(), 200);

    // The search sees both, their lineage and their state.
    let (status, view) = search(&server, &[("model", "breast-cancer")]).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["kind"], "mlflow");
    // No `versions` configured: every version loads; the alias, not the loading, makes a challenger.
    assert_eq!(versions(&view), [("1".into(), "champion".into()), ("2".into(), "loaded".into())]);
    let second = &view["versions"][1];
    assert_eq!(second["run_id"].as_str().map(str::len), Some(32), "{second}");
    assert!(second["source"].as_str().unwrap().starts_with("models:/m-"), "{second}");
    assert_eq!(second["description"], common::manifest("breast-cancer", "3")["description"]);
    let fingerprint = common::manifest("breast-cancer", "3")["training"]["data_sha256"].as_str().unwrap().to_owned();
    assert_eq!(second["tags"]["data_sha256"], fingerprint.as_str());
    let beats = [("model", "breast-cancer"), ("q", "holdout_metrics.accuracy > 0.97")];
    assert_eq!(versions(&search(&server, &beats).await.1), [("1".into(), "champion".into())]);
    let (status, view) = search(&server, &[("q", "run_id = '")]).await;
    assert_eq!(status, 400, "{view}");
    assert!(view["error"].as_str().unwrap().contains("the quote at 9 is not closed"), "{view}");

    // An alias set in MLflow: the poller takes that version as a challenger, under traffic.
    mlflow.set_alias("breast-cancer", "challenger", "2").await;
    let mut sent = 0;
    eventually("version 2 shadows", Duration::from_secs(60), || {
        sent += 1;
        let id = format!("r{sent}");
        let server = &server;
        async move {
            assert_eq!(infer(server, &id).await.status(), 200);
            (model(server).await["challengers"] == json!(["2"])).then_some(())
        }
    })
    .await;
    for i in 0..20 {
        assert_eq!(infer(&server, &format!("s{i}")).await.status(), 200);
    }
    let audit: Value =
        reqwest::get(server.url("/admin/models/breast-cancer/audit?limit=1")).await.unwrap().json().await.unwrap();
    assert_eq!(audit["entries"][0]["reason"], "the registry's challenger alias names it");
    let (_, view) = search(&server, &[("model", "breast-cancer"), ("q", "aliases = challenger")]).await;
    assert_eq!(versions(&view), [("2".into(), "challenger".into())]);

    // Promoted by the gateway: the registry's champion alias says so; rolled back: again.
    let promote = json!({ "version": "2", "reason": "the test" });
    let client = reqwest::Client::new();
    let answer = client.post(server.url("/admin/models/breast-cancer/promote")).json(&promote).send().await.unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    eventually("the champion alias names 2", Duration::from_secs(30), || async {
        (mlflow.alias("breast-cancer", "champion").await.as_deref() == Some("2")).then_some(())
    })
    .await;
    let back = json!({ "reason": "the test" });
    let answer = client.post(server.url("/admin/models/breast-cancer/rollback")).json(&back).send().await.unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    eventually("the champion alias names 1 again", Duration::from_secs(30), || async {
        (mlflow.alias("breast-cancer", "champion").await.as_deref() == Some("1")).then_some(())
    })
    .await;

    // The paired records name MLflow's versions.
    server.stop().await.unwrap();
    let records = server.records();
    let paired: Vec<&Value> =
        records.iter().filter(|r| r["request_id"].as_str().is_some_and(|id| id.starts_with('s'))).collect();
    assert_eq!(paired.len(), 20);
    for record in paired {
        let named: Vec<&str> =
            record["results"].as_array().unwrap().iter().map(|r| r["version"].as_str().unwrap()).collect();
        assert_eq!(named, ["1", "2"], "{record}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_registry_stopped_serving_goes_on_a_change_names_it_and_the_poller_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut mlflow = Mlflow::start(dir.path()).await;
    mlflow.register(&["breast-cancer/1", "breast-cancer/2", "breast-cancer/3"], None);
    // Only the champion loaded (and fetched): version 3 needs the registry.
    let file = config_file_with(dir.path(), &mlflow, "1", r#"versions = ["1"]"#);
    let server = TestServer::start_from(Some(&file), &[], Default::default()).await;

    mlflow.stop();
    for i in 0..20 {
        assert_eq!(infer(&server, &format!("down{i}")).await.status(), 200);
    }
    let client = reqwest::Client::new();
    let load =
        client.post(server.url("/admin/models/breast-cancer/versions/3/load")).json(&json!({})).send().await.unwrap();
    let status = load.status();
    let message = load.text().await.unwrap();
    assert_eq!(status, 503, "{message}");
    assert!(message.contains(&format!("the MLflow registry mlflow+{}", mlflow.url())), "{message}");
    assert_eq!(model(&server).await["challengers"], json!([]));
    // The search says where it could not look, in the protocol's error shape.
    let (status, view) = search(&server, &[("model", "breast-cancer")]).await;
    assert_eq!(status, 503, "{view}");

    // Back, on the same port and data: an alias set now is found by the next poll.
    mlflow.run(&[], &[]).await;
    mlflow.set_alias("breast-cancer", "challenger", "3").await;
    eventually("version 3 shadows once the registry is back", Duration::from_secs(60), || async {
        (model(&server).await["challengers"] == json!(["3"])).then_some(())
    })
    .await;
    assert_eq!(infer(&server, "back").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_stop_start_up_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut mlflow = Mlflow { port: 0, dir: dir.path().to_owned(), child: None };
    mlflow.port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(dir.path().join("basic_auth.ini"), format!(
        "[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{}\nadmin_username = admin\nadmin_password = s3cret-admin\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
        dir.path().join("auth.db").display()
    ))
    .unwrap();
    let ini = dir.path().join("basic_auth.ini").display().to_string();
    let auth = [("MLFLOW_AUTH_CONFIG_PATH", ini.as_str()), ("MLFLOW_FLASK_SERVER_SECRET_KEY", "a-test-key")];
    mlflow.run(&["--app-name", "basic-auth"], &auth).await;
    let config = config_file(dir.path(), &mlflow, "1");
    let start = |env: &[(&str, &str)]| {
        // A gateway that wrongly started would serve until killed: `timeout` bounds the test.
        let mut command = Command::new("timeout");
        command.args(["120", env!("CARGO_BIN_EXE_gauntlet"), "serve", "--config"]).arg(&config).args([
            "--listen",
            "127.0.0.1:0",
            "--set",
        ]);
        command.arg(format!("state_dir={}", dir.path().join("state").display()));
        command
            .env_remove("MLFLOW_TRACKING_TOKEN")
            .env_remove("MLFLOW_TRACKING_USERNAME")
            .env_remove("MLFLOW_TRACKING_PASSWORD");
        command.envs(env.iter().copied()).output().unwrap()
    };
    let output = start(&[("MLFLOW_TRACKING_TOKEN", "not-a-token-it-knows")]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    assert!(stderr.contains("MLFLOW_TRACKING_TOKEN"), "{stderr}");
    assert!(!stderr.contains("not-a-token-it-knows"), "a token is never printed: {stderr}");
    let output = start(&[("MLFLOW_TRACKING_USERNAME", "admin"), ("MLFLOW_TRACKING_PASSWORD", "pw-Zq81x")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
        "{stderr}"
    );
    assert!(!stderr.contains("pw-Zq81x"), "{stderr}");

    // The right ones: the gateway starts and serves what the registry holds.
    let python = common::python_env(Some("mlflow"));
    let registered = Command::new(python)
        .arg(common::root().join("models/mlflow_register.py"))
        .args(["--tracking-uri", &mlflow.url()])
        .arg(common::models_dir().join("breast-cancer/1"))
        .envs([("MLFLOW_TRACKING_USERNAME", "admin"), ("MLFLOW_TRACKING_PASSWORD", "s3cret-admin")])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(registered.status.success(), "{}", String::from_utf8_lossy(&registered.stderr));
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--grpc-listen", "", "--set"])
        .arg(format!("state_dir={}", dir.path().join("state").display()))
        .envs([("MLFLOW_TRACKING_USERNAME", "admin"), ("MLFLOW_TRACKING_PASSWORD", "s3cret-admin")])
        .env_remove("MLFLOW_TRACKING_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = format!("http://127.0.0.1:{port}/v2/models/breast-cancer/ready");
    eventually("the gateway serves with the right credentials", Duration::from_secs(120), || {
        let ready = ready.clone();
        async move { reqwest::get(&ready).await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
    })
    .await;
    let _ = gateway.kill();
    let _ = gateway.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_of_a_fleet_shadows_the_version_an_alias_names() {
    let pg = tokio::task::spawn_blocking(pg::Postgres::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mlflow = Mlflow::start(dir.path()).await;
    // Eleven versions: the champion, then one for each try (demo 2 and 3 in turn).
    let folders: Vec<&str> = std::iter::once("breast-cancer/1")
        .chain((0..10).map(|n| if n % 2 == 0 { "breast-cancer/3" } else { "breast-cancer/2" }))
        .collect();
    assert_eq!(mlflow.register(&folders, None).len(), 11);
    let file = config_file(dir.path(), &mlflow, "1");
    let database = format!("cluster.database_url={}", pg.url("postgres"));
    let mut replicas = Vec::new();
    for id in ["r1", "r2", "r3"] {
        let replica = format!("cluster.replica_id={id}");
        let overrides = [database.as_str(), replica.as_str(), "drift.enabled=false", "cluster.poll_interval_ms=500"];
        replicas.push(TestServer::start_from(Some(&file), &overrides, Default::default()).await);
    }
    let client = reqwest::Client::new();
    let mut took = Vec::new();
    for n in 0..10 {
        let version = (n + 2).to_string();
        let started = std::time::Instant::now();
        mlflow.set_alias("breast-cancer", "challenger", &version).await;
        for replica in &replicas {
            eventually("every replica shadows the aliased version", Duration::from_secs(60), || async {
                let view: Value =
                    client.get(replica.url("/admin/models/breast-cancer")).send().await.ok()?.json().await.ok()?;
                view["challengers"].as_array()?.iter().any(|c| c == version.as_str()).then_some(())
            })
            .await;
        }
        took.push(started.elapsed());
        assert_eq!(infer(&replicas[n % 3], &format!("f{n}")).await.status(), 200);
    }
    took.sort();
    eprintln!(
        "alias set in MLflow to every replica (3) shadowing it, repository_poll_s = 1, 10 tries: p50 {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
}
