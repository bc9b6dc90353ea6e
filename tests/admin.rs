//! The admin API on a real server: hot swaps under load, refused versions, persistence across a
//! restart, and access control.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{TestServer, infer_body, reference_rows};
use parking_lot::Mutex;
use serde_json::{Value, json};

async fn call(server: &TestServer, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, server.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn admin(server: &TestServer, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let (status, answer) = call(server, method.clone(), path, body).await;
    assert_eq!(status, 200, "{method} {path}: {answer}");
    answer
}

async fn infer(client: &reqwest::Client, server: &TestServer, path: &str, row: &[f64]) -> (u16, Value) {
    let response = client.post(server.url(path)).json(&infer_body(&[row.to_vec()])).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The outputs of a response, by name.
fn outputs(answer: &Value) -> BTreeMap<String, Value> {
    answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["name"].as_str().unwrap().to_owned(), o["data"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_swaps_under_load_fail_no_request() {
    let server = Arc::new(TestServer::start(&[]).await);
    let rows = reference_rows("breast-cancer", "1");
    // What each version answers for each row, asked directly.
    let client = reqwest::Client::new();
    let mut expected = BTreeMap::new();
    for version in ["1", "2", "3"] {
        for (i, row) in rows.iter().enumerate() {
            let (status, answer) =
                infer(&client, &server, &format!("/v2/models/breast-cancer/versions/{version}/infer"), row).await;
            assert_eq!(status, 200);
            expected.insert((version.to_owned(), i), outputs(&answer));
        }
    }
    let expected = Arc::new(expected);
    let stop = Arc::new(AtomicBool::new(false));
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let clients: Vec<_> = (0..3)
        .map(|c| {
            let (server, rows, expected) = (Arc::clone(&server), rows.clone(), Arc::clone(&expected));
            let (stop, problems, seen) = (Arc::clone(&stop), Arc::clone(&problems), Arc::clone(&seen));
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut n = c;
                while !stop.load(Ordering::Relaxed) {
                    let i = n % rows.len();
                    n += 1;
                    let (status, answer) = infer(&client, &server, "/v2/models/breast-cancer/infer", &rows[i]).await;
                    if status != 200 {
                        problems.lock().push(format!("status {status}: {answer}"));
                        continue;
                    }
                    let version = answer["model_version"].as_str().unwrap().to_owned();
                    match expected.get(&(version.clone(), i)) {
                        Some(want) if *want == outputs(&answer) => {}
                        Some(want) => problems.lock().push(format!("version {version} row {i}: {answer} != {want:?}")),
                        None => problems.lock().push(format!("unexpected version {version}")),
                    }
                    *seen.lock().entry(version).or_default() += 1;
                }
            })
        })
        .collect();
    let changes = [
        ("promote", json!({ "version": "2", "reason": "swap test" })),
        ("rollback", json!({})),
        ("versions/3/load", json!({})),
        ("promote", json!({ "version": "3" })),
        ("rollback", json!({})),
        // A hot reload of the serving champion.
        ("versions/1/load", json!({})),
    ];
    let mut swaps = 0;
    for _ in 0..18 {
        for (action, body) in &changes {
            admin(&server, reqwest::Method::POST, &format!("/admin/models/breast-cancer/{action}"), Some(body.clone()))
                .await;
            swaps += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    assert!(swaps >= 100);
    let problems = problems.lock().clone();
    assert!(problems.is_empty(), "{} problems, first: {:?}", problems.len(), problems.first());
    let seen = seen.lock().clone();
    let answered: u64 = seen.values().sum();
    assert!(answered >= 100, "only {answered} requests during the swaps");
    assert!(seen.len() >= 2, "requests saw only {seen:?}");
    let model = admin(&server, reqwest::Method::GET, "/admin/models/breast-cancer", None).await;
    assert_eq!(model["champion"], "1");
    // Every change is on record.
    let audit = std::fs::read_to_string(server.state.path().join("audit.jsonl")).unwrap();
    assert_eq!(audit.lines().filter(|l| l.contains(r#""result":"ok""#)).count(), swaps);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("manifest.json");
    let mut manifest: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(path, serde_json::to_string(&manifest).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_versions_are_refused_at_their_step_while_the_champion_serves() {
    let repository = tempfile::tempdir().unwrap();
    for model in ["breast-cancer", "diabetes"] {
        copy_dir(&common::models_dir().join(model), &repository.path().join(model));
    }
    let models = format!("models_dir={}", repository.path().display());
    let server = TestServer::start(&[&models]).await;
    // Dropped into the repository after startup.
    let bc = repository.path().join("breast-cancer");
    copy_dir(&bc.join("1"), &bc.join("7"));
    edit_manifest(&bc.join("7"), |m| m["version"] = json!("7"));
    let mut bytes = std::fs::read(bc.join("7/model.onnx")).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(bc.join("7/model.onnx"), bytes).unwrap();
    std::fs::create_dir_all(bc.join("8")).unwrap();
    std::fs::copy(bc.join("1/model.onnx"), bc.join("8/model.onnx")).unwrap();
    copy_dir(&repository.path().join("diabetes/1"), &bc.join("9"));
    edit_manifest(&bc.join("9"), |m| {
        m["name"] = json!("breast-cancer");
        m["version"] = json!("9");
    });
    copy_dir(&bc.join("1"), &bc.join("10"));
    edit_manifest(&bc.join("10"), |m| {
        m["version"] = json!("10");
        m["reference"]["outputs"]["probabilities"][0] = json!([0.5, 0.5]);
    });

    let client = reqwest::Client::new();
    let row = &reference_rows("breast-cancer", "1")[0];
    for (version, needle) in [
        ("7", "refused at repository: "),
        ("8", "has no manifest.json"),
        ("9", "refused at signature"),
        ("10", "refused at validation"),
    ] {
        for path in [
            format!("/admin/models/breast-cancer/versions/{version}/load"),
            "/admin/models/breast-cancer/promote".into(),
        ] {
            let body =
                if path.ends_with("load") { json!({ "reason": "dropped in" }) } else { json!({ "version": version }) };
            let (status, answer) = call(&server, reqwest::Method::POST, &path, Some(body)).await;
            let message = answer["error"].as_str().unwrap_or_default();
            assert_eq!(status, 422, "{path}: {answer}");
            assert!(message.contains(needle), "{path}: {message}");
        }
        let (status, answer) = infer(&client, &server, "/v2/models/breast-cancer/infer", row).await;
        assert_eq!((status, answer["model_version"].as_str()), (200, Some("1")));
    }
    let corrupt = call(&server, reqwest::Method::POST, "/admin/models/breast-cancer/versions/7/load", None).await.1;
    assert!(corrupt["error"].as_str().unwrap().contains("corrupt"), "{corrupt}");
    let model = admin(&server, reqwest::Method::GET, "/admin/models/breast-cancer", None).await;
    assert_eq!((model["champion"].clone(), model["challengers"].clone()), (json!("1"), json!(["2", "3"])));
    let states: BTreeMap<String, String> = model["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_str().unwrap().to_owned(), v["state"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(states["7"], "on_disk");
    assert_eq!(states["1"], "champion");

    // Refusals that are not about the files.
    for (method, path, body, status) in [
        (reqwest::Method::DELETE, "/admin/models/breast-cancer/versions/1", None, 409),
        (reqwest::Method::POST, "/admin/models/breast-cancer/promote", Some(json!({ "version": "1" })), 409),
        (reqwest::Method::POST, "/admin/models/breast-cancer/rollback", None, 409),
        (reqwest::Method::POST, "/admin/models/breast-cancer/promote", Some(json!({ "versio": "2" })), 400),
        (
            reqwest::Method::PUT,
            "/admin/models/breast-cancer/challengers",
            Some(json!({ "versions": ["2"], "shadow_sample_rate": 2 })),
            400,
        ),
        (reqwest::Method::POST, "/admin/models/nope/rollback", None, 404),
        (reqwest::Method::DELETE, "/admin/models/breast-cancer/versions/42", None, 404),
    ] {
        let (got, answer) = call(&server, method.clone(), path, body).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_survives_a_restart_and_is_audited() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = format!("state_dir={}", state.path().display());
    let mut first = TestServer::start(&[&state_dir]).await;
    let body = json!({ "version": "2", "reason": "2 wins on recall" });
    admin(&first, reqwest::Method::POST, "/admin/models/breast-cancer/promote", Some(body)).await;
    let body = json!({ "versions": ["1"], "shadow_sample_rate": 0.5 });
    admin(&first, reqwest::Method::PUT, "/admin/models/breast-cancer/challengers", Some(body)).await;
    first.stop().await.unwrap();

    let second = TestServer::start(&[&state_dir]).await;
    let model = admin(&second, reqwest::Method::GET, "/admin/models/breast-cancer", None).await;
    assert_eq!(model["champion"], "2");
    assert_eq!(model["challengers"], json!(["1"]));
    assert_eq!(model["shadow_sample_rate"], 0.5);
    assert_eq!(model["previous"], json!(["1"]));
    let (status, answer) = infer(
        &reqwest::Client::new(),
        &second,
        "/v2/models/breast-cancer/infer",
        &reference_rows("breast-cancer", "1")[0],
    )
    .await;
    assert_eq!((status, answer["model_version"].as_str()), (200, Some("2")));
    // And it can still roll back to what it replaced.
    let model = admin(&second, reqwest::Method::POST, "/admin/models/breast-cancer/rollback", None).await;
    assert_eq!(model["champion"], "1");

    let audit: Vec<Value> = std::fs::read_to_string(state.path().join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let promote = &audit[0];
    assert_eq!(
        (&promote["action"], &promote["version"], &promote["reason"], &promote["result"]),
        (&json!("promote"), &json!("2"), &json!("2 wins on recall"), &json!("ok"))
    );
    assert_eq!((&promote["from"]["champion"], &promote["to"]["champion"]), (&json!("1"), &json!("2")));
    assert!(promote["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        audit.iter().map(|a| a["action"].as_str().unwrap()).collect::<Vec<_>>(),
        ["promote", "set_challengers", "rollback"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_the_token_when_one_is_set() {
    let server = TestServer::start(&["admin_token=s3cret"]).await;
    let client = reqwest::Client::new();
    let url = server.url("/admin/models");
    let missing = client.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    assert_eq!(client.get(&url).bearer_auth("s3cres").send().await.unwrap().status(), 401);
    assert_eq!(client.get(&url).bearer_auth("s3cret").send().await.unwrap().status(), 200);
    let promote = client.post(server.url("/admin/models/breast-cancer/promote")).json(&json!({ "version": "2" }));
    assert_eq!(promote.send().await.unwrap().status(), 401);
    // Inference and feedback stay open.
    let (status, _) =
        infer(&client, &server, "/v2/models/breast-cancer/infer", &reference_rows("breast-cancer", "1")[0]).await;
    assert_eq!(status, 200);
}

/// An address of this machine that is not loopback, if it has one.
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // Connecting a UDP socket sends nothing; it only picks the interface a packet would leave by.
    socket.connect("10.255.255.255:9").ok()?;
    Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_admin_api_answers_loopback_only() {
    let server = TestServer::start(&["listen=0.0.0.0:0"]).await;
    let port = server.addr.port();
    let client = reqwest::Client::new();
    let local = client.get(format!("http://127.0.0.1:{port}/admin/models")).send().await.unwrap();
    assert_eq!(local.status(), 200);
    let Some(ip) = non_loopback_address() else {
        eprintln!("this machine has no non-loopback address: only the loopback half was checked");
        return;
    };
    let remote = client.get(format!("http://{ip}:{port}/admin/models")).send().await.unwrap();
    assert_eq!(remote.status(), 403);
    let body: Value = remote.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("loopback"));
    // Inference answers everyone.
    let body = infer_body(&[reference_rows("breast-cancer", "1")[0].clone()]);
    let remote_infer =
        client.post(format!("http://{ip}:{port}/v2/models/breast-cancer/infer")).json(&body).send().await;
    assert_eq!(remote_infer.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_dropped_into_the_repository_starts_shadowing() {
    let repository = tempfile::tempdir().unwrap();
    for model in ["breast-cancer", "diabetes"] {
        copy_dir(&common::models_dir().join(model), &repository.path().join(model));
    }
    // Version 3 exists but is not configured: it is not new, so polling leaves it alone.
    let models = format!("models_dir={}", repository.path().display());
    let server = TestServer::start(&[
        &models,
        "repository_poll_s=1",
        "models.breast-cancer.versions=[\"1\", \"2\"]",
        "models.breast-cancer.challengers=[\"2\"]",
    ])
    .await;
    // The server took stock of what was there when it started: what is copied in now is new.
    let bc = repository.path().join("breast-cancer");
    copy_dir(&bc.join("1"), &bc.join("5"));
    edit_manifest(&bc.join("5"), |m| m["version"] = json!("5"));
    let model = common::eventually("the poller adopts version 5", std::time::Duration::from_secs(30), || async {
        let model = admin(&server, reqwest::Method::GET, "/admin/models/breast-cancer", None).await;
        (model["challengers"] == json!(["2", "5"])).then_some(model)
    })
    .await;
    let state =
        |v: &str| model["versions"].as_array().unwrap().iter().find(|x| x["version"] == v).unwrap()["state"].clone();
    assert_eq!((state("3"), state("5")), (json!("on_disk"), json!("challenger")));
    let audit = std::fs::read_to_string(server.state.path().join("audit.jsonl")).unwrap();
    assert!(audit.contains(r#""actor":"repository""#), "{audit}");
}

/// The search over the demo folder: the check's exact form, fingerprints, states, several models,
/// and bad filters refused naming the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_search_finds_versions_by_metric_fingerprint_and_state() {
    let server = TestServer::start(&[]).await;
    let found = |answer: &Value| -> Vec<(String, String, String)> {
        let versions = answer["versions"].as_array().unwrap();
        let text = |v: &Value, k: &str| v[k].as_str().unwrap().to_owned();
        versions.iter().map(|v| (text(v, "model"), text(v, "version"), text(v, "state"))).collect()
    };
    let row = |m: &str, v: &str, s: &str| (m.to_owned(), v.to_owned(), s.to_owned());

    // Exactly the form the issue gives: versions 1 and 3 (0.986 and 0.965), each with its state.
    let path = "/admin/repository?model=breast-cancer&q=holdout_metrics.accuracy%20%3E%200.96";
    let answer = admin(&server, reqwest::Method::GET, path, None).await;
    assert_eq!(found(&answer), [row("breast-cancer", "1", "champion"), row("breast-cancer", "3", "challenger")]);
    assert_eq!((answer["kind"].as_str(), answer["searched"].as_u64()), (Some("folder"), Some(4)));
    let first = &answer["versions"][0];
    assert_eq!(first["description"], "StandardScaler + LogisticRegression");
    assert!(first["created"].as_str().unwrap().starts_with("20"), "{first}");
    assert!(first.get("reference").is_none() && first.get("profile").is_none(), "kept out of answers");

    // Trained on this data: every breast-cancer version, and no diabetes one.
    let fingerprint = common::manifest("breast-cancer", "1")["training"]["data_sha256"].as_str().unwrap().to_owned();
    let path = format!("/admin/repository?q=training.data_sha256%20%3D%20{fingerprint}");
    let answer = admin(&server, reqwest::Method::GET, &path, None).await;
    let everything: Vec<_> =
        ["1", "2", "3", "4"].map(|v| row("breast-cancer", v, "")).into_iter().map(|r| (r.0, r.1)).collect();
    let got: Vec<_> = found(&answer).into_iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(got, everything);
    assert_eq!(answer["searched"], 6, "both models searched");

    // State, text and numbers together; a field of the other model's task.
    let answer = admin(
        &server,
        reqwest::Method::GET,
        "/admin/repository?q=state%20%3D%20loaded%20and%20description%20~%20forest",
        None,
    )
    .await;
    assert_eq!(found(&answer), [row("breast-cancer", "4", "loaded")]);
    let answer = admin(&server, reqwest::Method::GET, "/admin/repository?q=holdout_metrics.mae%20%3C%2042", None).await;
    assert_eq!(found(&answer), [row("diabetes", "1", "champion")], "{answer}");

    // Bad filters: 400 in the error shape, naming the token; an unknown model: 404.
    for (q, token) in [
        ("holdout_metrics.accuracy >", "expected a value after 'holdout_metrics.accuracy >'"),
        ("holdout_metrics.accuracy >> 0.9", "found '>'"),
        ("holdout_metrics.accuracy > 0.9 or state = champion", "expected 'and' at 31, found 'or'"),
        ("holdout_metric.accuracy > 0.9", "no version has a field 'holdout_metric.accuracy'"),
    ] {
        let path = format!(
            "/admin/repository?model=breast-cancer&q={}",
            q.replace(' ', "%20").replace('>', "%3E").replace('=', "%3D")
        );
        let (status, answer) = call(&server, reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 400, "{q}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(token), "{q}: {answer}");
    }
    let (status, _) = call(&server, reqwest::Method::GET, "/admin/repository?model=nope", None).await;
    assert_eq!(status, 404);
}
