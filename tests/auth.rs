//! Who may do what, on a real gateway process (`gauntlet serve`, its log kept): the authorization
//! matrix generated from the route table itself (the OpenAPI document the router builds, and the
//! gRPC descriptor the server serves), the token's name as the actor of every change, no token or
//! its digest in any output, and labels that an `infer`-only client cannot forge.

mod common;

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use gauntlet::cli::loadtest::{LoadtestArgs, run};
use gauntlet::grpc::GrpcInferenceServiceClient;
use gauntlet::grpc::pb::model_infer_request::InferInputTensor;
use gauntlet::grpc::pb::{
    InferTensorContents, ModelInferRequest, ModelMetadataRequest, ModelReadyRequest, ServerLiveRequest,
    ServerMetadataRequest, ServerReadyRequest,
};
use prost::Message;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Channel;

/// One token per scope: (name, token, scope).
const TOKENS: [(&str, &str, &str); 4] = [
    ("app", "infer-3f9a1c7e5b2d", "infer"),
    ("labeller", "labels-8d2b6e0f4a1c", "labels"),
    ("viewer", "read-1c5e9a3d7f0b", "read"),
    ("operator", "change-6a0f2d8b4c9e", "change"),
];
const WRONG: &str = "not-a-configured-token-5e1d";
const MODEL: &str = "breast-cancer";

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn token_of(scope: &str) -> &'static str {
    TOKENS.iter().find(|t| t.2 == scope).map(|t| t.1).unwrap()
}

/// `auth.tokens=[…]` as `--set` takes it: every token by its digest.
fn tokens_setting() -> String {
    let entries: Vec<String> = TOKENS
        .iter()
        .map(|(name, token, scope)| {
            format!("{{name = \"{name}\", sha256 = \"{}\", scopes = [\"{scope}\"]}}", digest(token))
        })
        .collect();
    format!("auth.tokens=[{}]", entries.join(", "))
}

/// `gauntlet serve` of the demo on free ports, its JSON log at debug level in `dir/stderr.log`.
struct Gateway {
    child: Child,
    rest: String,
    grpc: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, sets: &[String]) -> Gateway {
    let log = dir.join("stderr.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_gauntlet"));
    command
        .current_dir(common::root())
        .env_remove("RUST_LOG")
        .env("GAUNTLET_OUTCOMES__DIR", dir.join("outcomes"))
        .env("GAUNTLET_STATE_DIR", dir.join("state"))
        .args(["serve", "--config", "gauntlet.toml", "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
        .args(["--log-format", "json", "--set", "log_level=debug", "--set", "shadow_deadline_ms=10000"]);
    for set in sets {
        command.args(["--set", set]);
    }
    let child = command.stdout(Stdio::null()).stderr(File::create(&log).unwrap()).spawn().unwrap();
    let mut gateway = Gateway { child, rest: String::new(), grpc: String::new() };
    // Its addresses are in its log once it serves: read until they are.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let serving = text.lines().find_map(|line| {
            let entry: Value = serde_json::from_str(line).ok()?;
            Some((entry["fields"]["address"].as_str()?.to_owned(), entry["fields"]["grpc"].as_str()?.to_owned()))
        });
        if let Some((rest, grpc)) = serving {
            (gateway.rest, gateway.grpc) = (format!("http://{rest}"), format!("http://{grpc}"));
            return gateway;
        }
        assert!(gateway.child.try_wait().unwrap().is_none(), "the gateway exited: {text}");
        assert!(Instant::now() < deadline, "the gateway did not start: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The credential a matrix cell sends: none, a wrong token, or a configured one.
#[derive(Clone, Copy, Debug)]
enum Credential {
    None,
    Wrong,
    Scope(&'static str),
}

impl Credential {
    fn all() -> Vec<Self> {
        [Self::None, Self::Wrong].into_iter().chain(TOKENS.iter().map(|t| Self::Scope(t.2))).collect()
    }

    fn token(self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::Wrong => Some(WRONG),
            Self::Scope(scope) => Some(token_of(scope)),
        }
    }
}

/// What a cell must answer, by the route's scope (`None`: a public route).
#[derive(Debug, PartialEq)]
enum Expected {
    Allowed,
    Unauthenticated,
    Denied,
}

fn expected(scope: Option<&str>, credential: Credential) -> Expected {
    match (scope, credential) {
        (None, _) => Expected::Allowed,
        (Some(_), Credential::None | Credential::Wrong) => Expected::Unauthenticated,
        (Some(route), Credential::Scope(held)) if route == held => Expected::Allowed,
        (Some(_), Credential::Scope(_)) => Expected::Denied,
    }
}

/// A body each POST or PUT route accepts (so an allowed call gets past the check to its handler).
fn body_for(path: &str) -> Option<Value> {
    let row = &common::reference_rows(MODEL, "1")[0];
    if path.ends_with("/infer") {
        Some(common::infer_body(std::slice::from_ref(row)))
    } else if path.ends_with("/feedback") {
        Some(json!({ "request_id": "auth-matrix", "truth": 1 }))
    } else if path.ends_with("/promote") {
        Some(json!({ "version": "1" }))
    } else if path.ends_with("/challengers") {
        Some(json!({ "versions": ["2", "3"] }))
    } else {
        None
    }
}

/// Every REST route of the OpenAPI document × every credential. Returns (cells, failures, bodies).
async fn rest_matrix(gateway: &Gateway) -> (usize, Vec<String>, String) {
    let client = reqwest::Client::new();
    let document: Value =
        client.get(format!("{}/openapi.json", gateway.rest)).send().await.unwrap().json().await.unwrap();
    let (mut cells, mut failures, mut bodies) = (0, Vec::new(), String::new());
    for (path, item) in document["paths"].as_object().expect("the document has paths") {
        for (method, operation) in item.as_object().unwrap() {
            let Ok(method) = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()) else { continue };
            // The route's scope: the one its `bearer` requirement names.
            let scope = operation["security"].as_array().and_then(|requirements| {
                requirements.iter().find_map(|r| r.get("bearer")?.as_array()?.first()?.as_str())
            });
            let url = format!("{}{}", gateway.rest, path.replace("{name}", MODEL).replace("{version}", "1"));
            for credential in Credential::all() {
                let mut request = client.request(method.clone(), &url);
                if let Some(token) = credential.token() {
                    request = request.bearer_auth(token);
                }
                if let Some(body) = body_for(path) {
                    request = request.json(&body);
                }
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                bodies.push_str(&response.text().await.unwrap());
                cells += 1;
                let want = expected(scope, credential);
                let ok = match want {
                    Expected::Allowed => status != 401 && status != 403 && status < 500,
                    Expected::Unauthenticated => status == 401,
                    Expected::Denied => status == 403,
                };
                if !ok {
                    failures.push(format!("{method} {path} with {credential:?}: {status}, expected {want:?}"));
                }
            }
        }
    }
    (cells, failures, bodies)
}

fn infer_message() -> ModelInferRequest {
    let row = &common::reference_rows(MODEL, "1")[0];
    let contents = InferTensorContents { fp32_contents: row.iter().map(|&v| v as f32).collect(), ..Default::default() };
    ModelInferRequest {
        model_name: MODEL.into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, row.len() as i64],
            contents: Some(contents),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn with_credential<T>(message: T, credential: Credential) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = credential.token() {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// Calls `method` of the inference service: its code, and the message of a refusal.
async fn call(
    client: &mut GrpcInferenceServiceClient<Channel>,
    method: &str,
    credential: Credential,
) -> (Code, String) {
    let answer = match method {
        "ServerLive" => client.server_live(with_credential(ServerLiveRequest {}, credential)).await.map(drop),
        "ServerReady" => client.server_ready(with_credential(ServerReadyRequest {}, credential)).await.map(drop),
        "ServerMetadata" => {
            client.server_metadata(with_credential(ServerMetadataRequest {}, credential)).await.map(drop)
        }
        "ModelReady" => {
            let message = ModelReadyRequest { name: MODEL.into(), version: String::new() };
            client.model_ready(with_credential(message, credential)).await.map(drop)
        }
        "ModelMetadata" => {
            let message = ModelMetadataRequest { name: MODEL.into(), version: String::new() };
            client.model_metadata(with_credential(message, credential)).await.map(drop)
        }
        "ModelInfer" => client.model_infer(with_credential(infer_message(), credential)).await.map(drop),
        other => panic!("the service serves {other}: give it a scope here and a check in grpc/service.rs"),
    };
    match answer {
        Ok(()) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

/// The scope each method needs: the probes and the server's metadata answer everyone.
fn grpc_scope(method: &str) -> Option<&'static str> {
    match method {
        "ModelInfer" | "ModelMetadata" | "ModelReady" => Some("infer"),
        _ => None,
    }
}

/// Every method of the served inference service × every credential.
async fn grpc_matrix(gateway: &Gateway) -> (usize, Vec<String>, String) {
    let descriptors = prost_types::FileDescriptorSet::decode(gauntlet::grpc::pb::FILE_DESCRIPTOR_SET).unwrap();
    let methods: Vec<String> = descriptors
        .file
        .iter()
        .flat_map(|f| &f.service)
        .filter(|s| s.name() == "GRPCInferenceService")
        .flat_map(|s| &s.method)
        .map(|m| m.name().to_owned())
        .collect();
    assert!(methods.len() >= 6, "{methods:?}");
    let channel = Channel::from_shared(gateway.grpc.clone()).unwrap().connect().await.unwrap();
    let mut client = GrpcInferenceServiceClient::new(channel);
    let (mut cells, mut failures, mut messages) = (0, Vec::new(), String::new());
    for method in &methods {
        for credential in Credential::all() {
            let (code, message) = call(&mut client, method, credential).await;
            messages.push_str(&message);
            cells += 1;
            let want = expected(grpc_scope(method), credential);
            let ok = match want {
                Expected::Allowed => code == Code::Ok,
                Expected::Unauthenticated => code == Code::Unauthenticated,
                Expected::Denied => code == Code::PermissionDenied,
            };
            if !ok {
                failures.push(format!("{method} with {credential:?}: {code:?} {message}, expected {want:?}"));
            }
        }
    }
    (cells, failures, messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_and_method_answers_each_credential_as_its_scope_says() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(dir.path(), &[tokens_setting(), "auth.trust_loopback=false".into()]);
    let (rest_cells, mut failures, rest_bodies) = rest_matrix(&gateway).await;
    let (grpc_cells, grpc_failures, grpc_messages) = grpc_matrix(&gateway).await;
    failures.extend(grpc_failures);
    println!("authorization matrix: {rest_cells} REST cells and {grpc_cells} gRPC cells, {} wrong", failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The changes the matrix made are the operator's, by name.
    let client = reqwest::Client::new();
    let audit: Value = client
        .get(format!("{}/admin/models/{MODEL}/audit", gateway.rest))
        .bearer_auth(token_of("read"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = audit["entries"].as_array().expect("the audit lists entries");
    assert!(!entries.is_empty(), "{audit}");
    assert!(entries.iter().all(|e| e["actor"] == "operator"), "{audit}");
    let status = Command::new(env!("CARGO_BIN_EXE_gauntlet"))
        .args(["status", MODEL, "--url", &gateway.rest, "--token", token_of("read")])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success() && shown.contains("by operator"), "{shown}");
    let metrics = client.get(format!("{}/metrics", gateway.rest)).send().await.unwrap().text().await.unwrap();

    // No token, and no token's digest, in anything the gateway said or wrote.
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    let audit_file = std::fs::read_to_string(dir.path().join("state").join("audit.jsonl")).unwrap();
    let outputs = [
        ("the log", &log),
        ("the metrics", &metrics),
        ("the audit", &audit_file),
        ("REST bodies", &rest_bodies),
        ("gRPC messages", &grpc_messages),
    ];
    for (what, text) in outputs {
        for secret in TOKENS.iter().map(|t| t.1).chain([WRONG]) {
            assert!(!text.contains(secret), "{what} holds a token");
            assert!(!text.contains(&digest(secret)), "{what} holds a token's digest");
        }
    }
    assert!(log.lines().count() > 10, "the log at debug level says something");
}

/// Version 2 (95.8% on the holdout) serves, version 1 (98.6%) shadows with every request (the
/// shadow's budget is not what this test is about), and the policy is on.
const WORSE_CHAMPION: [&str; 5] = [
    "shadow_cpu_budget=2",
    "models.breast-cancer.champion=2",
    "models.breast-cancer.challengers=[\"1\"]",
    "models.breast-cancer.policy.enabled=true",
    "models.breast-cancer.policy.min_labelled_pairs=100",
];

/// The gRPC load generator's own HTTP/2 client sends the token with every call: without it,
/// off loopback trust, each would be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_load_generator_sends_its_token() {
    let tokens = tokens_setting();
    let server = TestServer::start(&[tokens.as_str(), "auth.trust_loopback=false"]).await;
    let data = common::models_dir().join(MODEL).join("holdout.csv");
    let summary = run(&LoadtestArgs {
        protocol: gauntlet::cli::loadtest::Protocol::Grpc,
        grpc_url: Some(format!("http://{}", server.grpc.unwrap())),
        concurrency: Some(4),
        connections: 2,
        requests: Some(100),
        token: Some(token_of("infer").to_owned()),
        max_error_rate: None,
        ..common::loadtest_args(&server, MODEL, data)
    })
    .await
    .unwrap();
    assert_eq!((summary.ok, summary.errors), (100, 0), "{:?}", summary.errors_by_kind);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_without_the_labels_scope_change_nothing_and_cannot_promote() {
    let tokens = tokens_setting();
    let overrides = [&WORSE_CHAMPION[..], &[tokens.as_str(), "auth.trust_loopback=false"]].concat();
    let server = TestServer::start(&overrides).await;
    let data = common::models_dir().join(MODEL).join("holdout.csv");
    let replay = |labels_token: &str| LoadtestArgs {
        concurrency: Some(4),
        connections: 4,
        requests: Some(1_000),
        feedback: true,
        feedback_delay: Duration::from_millis(20),
        token: Some(token_of("infer").to_owned()),
        labels_token: Some(labels_token.to_owned()),
        max_error_rate: None,
        ..common::loadtest_args(&server, MODEL, data.clone())
    };
    // An inference client posts the true labels, which would promote version 1: every one refused.
    let forged = run(&replay(token_of("infer"))).await.unwrap();
    let feedback = forged.feedback.as_ref().unwrap();
    assert_eq!((forged.errors, feedback.failed), (0, 1_000), "{feedback:?}");
    let client = reqwest::Client::new();
    let read = |path: &str| client.get(server.url(path)).bearer_auth(token_of("read"));
    let report: Value = read("/admin/models/breast-cancer/comparison").send().await.unwrap().json().await.unwrap();
    assert_eq!(report["labelled_records"], 0, "{report}");
    let model: Value = read("/admin/models/breast-cancer").send().await.unwrap().json().await.unwrap();
    assert_eq!(model["champion"], "2");
    let audit = std::fs::read_to_string(server.state.path().join("audit.jsonl")).unwrap_or_default();
    assert!(!audit.contains("\"actor\":\"policy\""), "{audit}");

    // The same labels from the labeller are counted, and the policy promotes on them.
    let labelled = run(&replay(token_of("labels"))).await.unwrap();
    assert_eq!(labelled.feedback.as_ref().unwrap().failed, 0);
    common::eventually("the policy promotes version 1", Duration::from_secs(60), || async {
        let model: Value = read("/admin/models/breast-cancer").send().await.unwrap().json().await.unwrap();
        (model["champion"] == "1").then_some(())
    })
    .await;
}
