//! Versions from object storage: a gateway serving from `s3://` on an S3-compatible server the test
//! starts itself (`moto_server`, from PyPI, in `scripts/python-env.sh moto`'s environment), a
//! version uploaded while it serves and adopted by the poller, a corrupt upload refused with nothing
//! swapped, the store stopped mid-fetch (a change fails cleanly, serving goes on, a retry works once
//! it is back), wrong credentials, a restart served from the cache with the store down, bad configurations refused naming
//! what is wrong, and three replicas on a PostgreSQL of the test's own taking an uploaded version as
//! a challenger through one admin call, under traffic.

mod common;
#[allow(dead_code)] // the helpers this file does not use
#[path = "common/postgres.rs"]
mod pg;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{TestServer, eventually};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use pg::Postgres;
use serde_json::{Value, json};

const BUCKET: &str = "models";

/// The fetch counters are the process's: the tests that fetch run one at a time.
static FETCHING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const PREFIX: &str = "team/repo";

/// `moto_server` on a free port of 127.0.0.1, killed when dropped. Its buckets live in memory.
struct Moto {
    port: u16,
    child: Child,
}

impl Moto {
    async fn start(port: Option<u16>) -> Self {
        Self::start_with(port, false).await
    }

    /// `checked`: the server checks credentials after the bucket is made (moto's
    /// `INITIAL_NO_AUTH_ACTION_COUNT`): a key it does not know is refused.
    async fn start_with(port: Option<u16>, checked: bool) -> Self {
        let python = common::python_env(Some("moto"));
        let server = python.with_file_name("moto_server");
        let port = port.unwrap_or_else(|| TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
        let mut command = Command::new(server);
        if checked {
            // The first request (making the bucket) goes unchecked; every one after needs a known key.
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", "1");
        }
        let child = command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let moto = Self { port, child };
        let url = moto.endpoint();
        eventually("moto_server listens", Duration::from_secs(60), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await;
        // A bucket is made by a PUT (moto checks no signature).
        let made = reqwest::Client::new().put(format!("{url}/{BUCKET}")).send().await.unwrap();
        assert!(made.status().is_success(), "{}", made.status());
        moto
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn store(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap()
    }

    /// Uploads a demo version's files, the manifest last (as a data scientist's tool must);
    /// `corrupt` flips a byte of the model file.
    async fn upload(&self, model: &str, from: &str, as_version: &str, corrupt: bool) -> usize {
        let dir = common::models_dir().join(model).join(from);
        let mut manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        manifest["version"] = json!(as_version);
        let file = manifest["model_file"].as_str().unwrap().to_owned();
        let mut bytes = std::fs::read(dir.join(&file)).unwrap();
        if corrupt {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
        }
        let store = self.store();
        let at = |name: &str| ObjectPath::from(format!("{PREFIX}/{model}/{as_version}/{name}"));
        let size = bytes.len();
        store.put(&at(&file), PutPayload::from(bytes)).await.unwrap();
        store.put(&at("manifest.json"), PutPayload::from(serde_json::to_vec(&manifest).unwrap())).await.unwrap();
        size
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A configuration serving breast-cancer from the bucket (champion 1, challengers as given).
fn config_file(dir: &Path, moto: &Moto, challengers: &[&str], poll_s: u64) -> PathBuf {
    config_file_at(dir, &moto.endpoint(), challengers, poll_s)
}

/// The same, with the store at `endpoint` (a proxy in front of moto, say).
fn config_file_at(dir: &Path, endpoint: &str, challengers: &[&str], poll_s: u64) -> PathBuf {
    let challengers: Vec<String> = challengers.iter().map(|c| format!("\"{c}\"")).collect();
    let text = format!(
        r#"repository = "s3://{BUCKET}/{PREFIX}"
repository_poll_s = {poll_s}
shadow_cpu_budget = 2.0

[repository_options]
aws_endpoint = "{endpoint}"
aws_allow_http = "true"
aws_region = "us-east-1"
aws_access_key_id = "test"
aws_secret_access_key = "test"

[repository_fetch]
timeout_ms = 2000
retries = 1

[models.breast-cancer]
champion = "1"
challengers = [{challengers}]
"#,
        challengers = challengers.join(", ")
    );
    let path = dir.join("gauntlet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn row() -> Value {
    common::infer_body(&common::reference_rows("breast-cancer", "1")[..1])
}

async fn infer(server: &TestServer) -> reqwest::Response {
    reqwest::Client::new().post(server.url("/v2/models/breast-cancer/infer")).json(&row()).send().await.unwrap()
}

async fn model(server: &TestServer) -> Value {
    reqwest::get(server.url("/admin/models/breast-cancer")).await.unwrap().json().await.unwrap()
}

fn challengers(view: &Value) -> Vec<String> {
    let versions = view["versions"].as_array().cloned().unwrap_or_default();
    versions.iter().filter(|v| v["state"] == "challenger").map(|v| v["version"].as_str().unwrap().to_owned()).collect()
}

async fn set_challengers(server: &TestServer, versions: &[&str]) -> reqwest::Response {
    let url = server.url("/admin/models/breast-cancer/challengers");
    reqwest::Client::new().put(url).json(&json!({ "versions": versions })).send().await.unwrap()
}

/// A counter of this process's gateways (the recorder is the process's).
fn gauntlet_metric(name: &str) -> f64 {
    let text = gauntlet::metrics::handle().render();
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_from_s3_adopts_an_upload_and_refuses_a_corrupt_one() {
    let _one_at_a_time = FETCHING.lock().await;
    let moto = Moto::start(None).await;
    let size = moto.upload("breast-cancer", "1", "1", false).await;
    moto.upload("breast-cancer", "2", "2", false).await;
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(dir.path(), &moto, &["2"], 1);
    let fetched_before = gauntlet_metric("gauntlet_repository_fetches_total");
    let server = TestServer::start_from(Some(&file), &[], Default::default()).await;

    let answer = infer(&server).await;
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["model_version"], "1");
    assert_eq!(challengers(&model(&server).await), ["2"]);
    // Each version fetched once, whole (the counters are the process's: from before this server).
    assert_eq!(gauntlet_metric("gauntlet_repository_fetches_total") - fetched_before, 2.0);
    assert!(gauntlet_metric("gauntlet_repository_fetched_bytes_total") >= size as f64);

    // The search reads the bucket's manifests: by metric, by state; a bad filter is a 400.
    let search = |q: &'static str| {
        let url = server.url("/admin/repository");
        async move {
            let answer =
                reqwest::Client::new().get(url).query(&[("model", "breast-cancer"), ("q", q)]).send().await.unwrap();
            (answer.status().as_u16(), answer.json::<Value>().await.unwrap())
        }
    };
    let found = |view: &Value| -> Vec<(String, String)> {
        let versions = view["versions"].as_array().unwrap();
        versions.iter().map(|v| (v["version"].as_str().unwrap().into(), v["state"].as_str().unwrap().into())).collect()
    };
    let (status, view) = search("holdout_metrics.accuracy > 0.96").await;
    assert_eq!((status, view["kind"].as_str()), (200, Some("s3")), "{view}");
    assert_eq!(found(&view), [("1".into(), "champion".into())]);
    assert!(view["versions"][0]["created"].as_str().is_some(), "the upload's time: {view}");
    assert_eq!(
        found(&search("state = challenger and training.split.test_size = 0.25").await.1),
        [("2".into(), "challenger".into())]
    );
    let (status, view) = search("state =").await;
    assert_eq!(status, 400, "{view}");
    assert!(view["error"].as_str().unwrap().contains("expected a value after 'state ='"), "{view}");

    // A corrupt upload (version 3's bytes, one flipped, under 4): refused with the "corrupt"
    // message, and nothing that serves changes. (The cache is keyed by sha256: were version 3's file
    // fetched already, 4 would be served from it, which is right, so 4 comes first.)
    moto.upload("breast-cancer", "3", "4", true).await;
    let refused = set_challengers(&server, &["2", "4"]).await;
    assert_eq!(refused.status(), 422);
    let message = refused.text().await.unwrap();
    assert!(message.contains("is corrupt: sha256"), "{message}");
    assert!(message.contains(&format!("s3://{BUCKET}/{PREFIX}/breast-cancer/4/")), "{message}");
    assert_eq!(challengers(&model(&server).await), ["2"]);
    assert_eq!(infer(&server).await.status(), 200);

    // Uploaded while serving: the poller adopts it as a challenger, under traffic, with no error.
    moto.upload("breast-cancer", "3", "3", false).await;
    let failed = std::sync::atomic::AtomicUsize::new(0);
    eventually("version 3 shadows", Duration::from_secs(60), || async {
        if infer(&server).await.status() != 200 {
            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        challengers(&model(&server).await).contains(&"3".to_owned()).then_some(())
    })
    .await;
    assert_eq!(failed.into_inner(), 0);
    // (Version 4's manifest names version 3's sha256, now in the cache: the poller may load 4 from
    // the cached file, whose bytes are exactly what its manifest attests, never the corrupt ones.)

    // A version whose manifest is not there yet is not there: not an error of the store.
    let store = moto.store();
    let model_only = ObjectPath::from(format!("{PREFIX}/breast-cancer/5/model.onnx"));
    store.put(&model_only, PutPayload::from(vec![0u8; 16])).await.unwrap();
    let absent = set_challengers(&server, &["2", "3", "5"]).await;
    assert_eq!(absent.status(), 422);
    let message = absent.text().await.unwrap();
    assert!(message.contains("'5' of model 'breast-cancer' is not in the repository"), "{message}");

    // A manifest that names another version: refused, naming both.
    let mut manifest = common::manifest("breast-cancer", "2");
    manifest["version"] = json!("2");
    let wrong = ObjectPath::from(format!("{PREFIX}/breast-cancer/6/manifest.json"));
    store.put(&wrong, PutPayload::from(serde_json::to_vec(&manifest).unwrap())).await.unwrap();
    let inconsistent = set_challengers(&server, &["2", "3", "6"]).await;
    assert_eq!(inconsistent.status(), 422);
    let message = inconsistent.text().await.unwrap();
    assert!(message.contains("says it is breast-cancer/2 but lives in breast-cancer/6"), "{message}");
}

/// A TCP proxy in front of the store: it forwards, and on command cuts the next transfer of a model
/// file after its first bytes and refuses every connection after (the store stopped mid-fetch), or
/// refuses from now on (down), until it is told the store is back.
struct Proxy {
    port: u16,
    state: std::sync::Arc<std::sync::atomic::AtomicU8>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

const UP: u8 = 0;
const CUT_NEXT_MODEL: u8 = 1;
const DOWN: u8 = 2;

impl Proxy {
    async fn start(to: u16) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(UP));
        let cuts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (shared, counted) = (state.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if shared.load(SeqCst) == DOWN {
                    continue; // dropped: the connection is refused as it opens
                }
                let (state, cuts) = (shared.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else { return };
                    let (mut client_read, mut client_write) = client.split();
                    let (mut server_read, mut server_write) = server.split();
                    let model = std::sync::atomic::AtomicBool::new(false);
                    let upstream = async {
                        let mut buffer = vec![0u8; 16 << 10];
                        loop {
                            let n = client_read.read(&mut buffer).await.unwrap_or(0);
                            if n == 0 || server_write.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                            let head = String::from_utf8_lossy(&buffer[..n.min(512)]).into_owned();
                            if head.starts_with("GET ") && head.lines().next().is_some_and(|l| l.contains("model.onnx"))
                            {
                                model.store(true, SeqCst);
                            }
                        }
                    };
                    let downstream = async {
                        let mut buffer = vec![0u8; 4 << 10];
                        loop {
                            let n = server_read.read(&mut buffer).await.unwrap_or(0);
                            if n == 0 || client_write.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                            // After the first bytes of a model file: the store is gone.
                            if model.load(SeqCst)
                                && state.compare_exchange(CUT_NEXT_MODEL, DOWN, SeqCst, SeqCst).is_ok()
                            {
                                cuts.fetch_add(1, SeqCst);
                                break;
                            }
                            if state.load(SeqCst) == DOWN {
                                break;
                            }
                        }
                    };
                    tokio::select! {
                        () = upstream => {}
                        () = downstream => {}
                    }
                });
            }
        });
        Self { port, state, cuts }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn set(&self, state: u8) {
        self.state.store(state, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stops_mid_fetch_fails_the_change_cleanly_and_a_restart_serves_from_the_cache() {
    let _one_at_a_time = FETCHING.lock().await;
    let moto = Moto::start(None).await;
    moto.upload("breast-cancer", "1", "1", false).await;
    moto.upload("breast-cancer", "2", "2", false).await;
    let proxy = Proxy::start(moto.port).await;
    let dir = tempfile::tempdir().unwrap();
    let file = config_file_at(dir.path(), &proxy.endpoint(), &[], 0);
    let state = tempfile::tempdir().unwrap();
    let state_dir = format!("state_dir={}", state.path().display());
    let mut server = TestServer::start_from(Some(&file), &[&state_dir], Default::default()).await;
    assert_eq!(infer(&server).await.status(), 200);
    // Uploaded after the start (no poller here): fetched only when a change asks for it. Demo
    // version 4's file (58 KB) is not in the cache, and comes in several reads.
    moto.upload("breast-cancer", "4", "4", false).await;

    // The store stops in the middle of sending the file: the change fails with a 503 naming the
    // store (its retry finds it gone), nothing changes, and the champion keeps serving.
    proxy.set(CUT_NEXT_MODEL);
    let failed = set_challengers(&server, &["4"]).await;
    assert_eq!(proxy.cuts.load(std::sync::atomic::Ordering::SeqCst), 1, "the transfer was cut mid-file");
    assert_eq!(failed.status(), 503);
    let message = failed.text().await.unwrap();
    assert!(message.contains(&format!("the model store s3://{BUCKET}/{PREFIX} failed")), "{message}");
    assert!(challengers(&model(&server).await).is_empty());
    assert_eq!(infer(&server).await.status(), 200);
    let cached: Vec<_> =
        std::fs::read_dir(state.path().join("repository-cache")).unwrap().filter_map(Result::ok).collect();
    assert!(cached.iter().all(|e| !e.file_name().to_string_lossy().contains("partial")), "no half file is kept");

    // The store is back: the same change works.
    proxy.set(UP);
    assert_eq!(set_challengers(&server, &["4"]).await.status(), 200);
    assert_eq!(challengers(&model(&server).await), ["4"]);
    server.stop().await.unwrap();

    // A restart with the store down serves what it served, from the cache, fetching nothing.
    proxy.set(DOWN);
    let fetched = gauntlet_metric("gauntlet_repository_fetches_total");
    let server = TestServer::start_from(Some(&file), &[&state_dir], Default::default()).await;
    assert_eq!(infer(&server).await.status(), 200);
    assert_eq!(challengers(&model(&server).await), ["4"]);
    assert_eq!(gauntlet_metric("gauntlet_repository_fetches_total"), fetched);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_repositories_are_refused_naming_the_key_or_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let demo = common::root().join("gauntlet.toml");
    // Both a folder and a URL: the configuration says which key.
    let args = gauntlet::config::ServeArgs {
        config: Some(demo.clone()),
        set: vec!["repository=s3://models/x".into()],
        ..Default::default()
    };
    let error = gauntlet::config::Config::load_from(&args, &[]).unwrap_err().to_string();
    assert!(error.contains("repository") && error.contains("not both"), "{error}");

    let count = std::sync::atomic::AtomicUsize::new(0);
    let start = |text: String| {
        let n = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = dir.path().join(format!("bad-{n}.toml"));
        std::fs::write(&file, text).unwrap();
        let state = format!("state_dir={}", dir.path().join("state").display());
        let config = common::config_from(&file, &[&state]);
        async move { gauntlet::Server::bind(config).await.err().map(|e| format!("{e:#}")).unwrap_or_default() }
    };
    let error = start("repository = \"ftp://host/x\"\n".into()).await;
    assert!(error.contains("ftp://host/x") && error.contains("the scheme must be file, s3, gs or az"), "{error}");
    let error = start("repository = \"s3://b\"\n[repository_options]\nnot_a_key = \"1\"\n".into()).await;
    assert!(error.contains("repository_options.not_a_key"), "{error}");
    let error = start(format!("repository = \"file://{}\"\n", dir.path().join("nowhere").display())).await;
    assert!(error.contains("is not a directory"), "{error}");

    // A bucket that does not exist, and a store that is not there at all: named, at start.
    let moto = Moto::start(None).await;
    let missing = format!(
        "repository = \"s3://no-such-bucket/x\"\n[repository_options]\naws_endpoint = \"{}\"\naws_allow_http = \"true\"\naws_region = \"us-east-1\"\naws_access_key_id = \"test\"\naws_secret_access_key = \"test\"\n[repository_fetch]\nretries = 0\n",
        moto.endpoint()
    );
    let error = start(missing).await;
    assert!(error.contains("the model store s3://no-such-bucket/x failed"), "{error}");
    drop(moto);

    // Wrong credentials: a store that checks them refuses the listing, and startup names the store.
    let moto = Moto::start_with(None, true).await;
    let wrong = format!(
        "repository = \"s3://{BUCKET}/x\"\n[repository_options]\naws_endpoint = \"{}\"\naws_allow_http = \"true\"\naws_region = \"us-east-1\"\naws_access_key_id = \"AKIAWRONGWRONGWRONG0\"\naws_secret_access_key = \"s3cr3t-not-for-logs\"\n[repository_fetch]\nretries = 0\n",
        moto.endpoint()
    );
    let error = start(wrong).await;
    assert!(error.contains(&format!("the model store s3://{BUCKET}/x failed")), "{error}");
    assert!(!error.contains("s3cr3t-not-for-logs"), "the secret key must not be told: {error}");
    let away = "repository = \"gs://bucket/x\"\n[repository_fetch]\nretries = 0\ntimeout_ms = 500\n";
    let error = start(away.into()).await;
    assert!(error.contains("gs://bucket/x"), "{error}");
    let error =
        start("repository = \"az://container/x\"\n[repository_fetch]\nretries = 0\ntimeout_ms = 500\n".into()).await;
    assert!(error.contains("az://container/x"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_takes_an_uploaded_challenger_through_one_call_under_traffic() {
    let _one_at_a_time = FETCHING.lock().await;
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let moto = Moto::start(None).await;
    moto.upload("breast-cancer", "1", "1", false).await;
    moto.upload("breast-cancer", "2", "2", false).await;
    // The third replica reaches the store through a proxy, to be cut off from it later.
    let proxy = Proxy::start(moto.port).await;
    let (dir, third) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = config_file(dir.path(), &moto, &["2"], 0);
    let file_through_proxy = config_file_at(third.path(), &proxy.endpoint(), &["2"], 0);
    let database = format!("cluster.database_url={}", pg.url("postgres"));
    let mut replicas = Vec::new();
    for (id, file) in [("r1", &file), ("r2", &file), ("r3", &file_through_proxy)] {
        let replica = format!("cluster.replica_id={id}");
        let overrides = [database.as_str(), replica.as_str(), "drift.enabled=false", "cluster.poll_interval_ms=500"];
        replicas.push(TestServer::start_from(Some(file), &overrides, Default::default()).await);
    }
    let client = reqwest::Client::new();
    for replica in &replicas {
        eventually("the replica reads the store", Duration::from_secs(60), || async {
            let ready = client.get(replica.url("/v2/health/ready")).send().await.ok()?;
            ready.status().is_success().then_some(())
        })
        .await;
    }

    // Traffic on all three throughout, paced so the replicas, PostgreSQL and moto share two cores.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (sent, failed) = (
        std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    );
    let mut load = Vec::new();
    for replica in &replicas {
        let (url, stop, sent, failed, client) =
            (replica.url("/v2/models/breast-cancer/infer"), stop.clone(), sent.clone(), failed.clone(), client.clone());
        load.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let ok = client.post(&url).json(&row()).send().await.is_ok_and(|r| r.status() == 200);
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }

    // Ten uploads, each made a challenger through one replica: the time until all three show it.
    let mut took = Vec::new();
    for n in 0..10 {
        let version = (10 + n).to_string();
        let from = if n % 2 == 0 { "3" } else { "2" };
        let started = std::time::Instant::now();
        moto.upload("breast-cancer", from, &version, false).await;
        let changed = set_challengers(&replicas[n % 3], &[&version]).await;
        assert_eq!(changed.status(), 200, "{}", changed.text().await.unwrap());
        for replica in &replicas {
            eventually("every replica shadows the upload", Duration::from_secs(60), || async {
                let view: Value =
                    client.get(replica.url("/admin/models/breast-cancer")).send().await.ok()?.json().await.ok()?;
                (challengers(&view) == [version.clone()]).then_some(())
            })
            .await;
        }
        took.push(started.elapsed());
    }
    // A replica that cannot fetch says why in /admin/cluster, serves on, and converges when the
    // store is back.
    proxy.set(DOWN);
    moto.upload("breast-cancer", "4", "30", false).await;
    assert_eq!(set_challengers(&replicas[0], &["30"]).await.status(), 200);
    let problem = eventually("r3 reports that it cannot fetch", Duration::from_secs(60), || async {
        let view: Value = client.get(replicas[0].url("/admin/cluster")).send().await.ok()?.json().await.ok()?;
        let r3 = view["replicas"].as_array()?.iter().find(|r| r["id"] == "r3")?.clone();
        let problem = r3["problem"].as_str().unwrap_or_default().to_owned();
        (r3["converged"] == false && problem.contains("model store")).then_some(problem)
    })
    .await;
    assert!(problem.contains(&format!("the model store s3://{BUCKET}/{PREFIX} failed")), "{problem}");
    proxy.set(UP);
    eventually("r3 converges once the store is back", Duration::from_secs(60), || async {
        let view: Value =
            client.get(replicas[2].url("/admin/models/breast-cancer")).send().await.ok()?.json().await.ok()?;
        (challengers(&view) == ["30"]).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    took.sort();
    eprintln!(
        "upload to every replica shadowing it, 10 tries: p50 {:?}, max {:?}; {} requests",
        took[took.len() / 2],
        took[took.len() - 1],
        sent.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(sent.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert_eq!(failed.load(std::sync::atomic::Ordering::Relaxed), 0);
    // Every replica fetched the bytes itself, once per distinct file (demo versions 1 to 4): the
    // cache is each replica's.
    for replica in &replicas {
        let cached = std::fs::read_dir(replica.state.path().join("repository-cache")).unwrap();
        let files = cached.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "onnx")).count();
        assert_eq!(files, 4, "the files of versions 1, 2, 3 and 4, each once");
    }
}
