//! The Open Inference Protocol over real HTTP on loopback: every endpoint, JSON and binary tensors,
//! each class of bad input with its status and error body, overload, shutdown and metrics.

mod common;

use std::time::Duration;

use common::{TestServer, assert_close, infer_body, manifest, reference_rows};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get(server: &TestServer, path: &str) -> (StatusCode, Value) {
    let response = reqwest::get(server.url(path)).await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post(server: &TestServer, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    // No Content-Type header, as tritonclient sends JSON requests.
    reqwest::Client::new().post(server.url(path)).body(body).send().await.unwrap()
}

async fn post_json(server: &TestServer, path: &str, body: &Value) -> (StatusCode, Value) {
    let response = post(server, path, body.to_string()).await;
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn health_and_metadata_endpoints() {
    let server = TestServer::start(&[]).await;
    let (status, body) = get(&server, "/v2").await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], "gauntlet");
    assert!(body["extensions"].as_array().unwrap().contains(&json!("binary_tensor_data")));
    assert_eq!(get(&server, "/v2/health/live").await.0, 200);
    assert_eq!(get(&server, "/v2/health/ready").await.0, 200);

    let (status, body) = get(&server, "/v2/models/breast-cancer").await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], "breast-cancer");
    assert_eq!(body["versions"], json!(["1", "2", "3", "4"]));
    assert_eq!(body["platform"], "onnxruntime_onnx");
    assert_eq!(body["inputs"], json!([{ "name": "input", "datatype": "FP32", "shape": [-1, 30] }]));
    assert_eq!(body["outputs"][0], json!({ "name": "label", "datatype": "INT64", "shape": [-1] }));

    let (status, body) = get(&server, "/v2/models/diabetes/versions/2").await;
    assert_eq!(status, 200);
    assert_eq!(body["versions"], json!(["2"]));
    assert_eq!(body["outputs"], json!([{ "name": "variable", "datatype": "FP32", "shape": [-1, 1] }]));

    assert_eq!(get(&server, "/v2/models/breast-cancer/ready").await.0, 200);
    assert_eq!(get(&server, "/v2/models/breast-cancer/versions/3/ready").await.0, 200);

    let (status, body) = get(&server, "/v2/models/iris").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("model 'iris' is not served"), "{body}");
    let (status, body) = get(&server, "/v2/models/breast-cancer/versions/9/ready").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("no version '9'"), "{body}");
    let (status, body) = get(&server, "/v2/nothing/here").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("no route"), "{body}");
    let response = reqwest::Client::new().delete(server.url("/v2/models/breast-cancer/infer")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert!(response.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("DELETE is not allowed"));
}

#[tokio::test]
async fn champion_answers_unversioned_requests_with_the_reference_outputs() {
    let server = TestServer::start(&[]).await;
    let rows = reference_rows("breast-cancer", "1");
    let expected = &manifest("breast-cancer", "1")["reference"]["outputs"];

    // One row.
    let mut body = infer_body(&rows[..1]);
    body["id"] = json!("req-1");
    let (status, response) = post_json(&server, "/v2/models/breast-cancer/infer", &body).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["model_name"], "breast-cancer");
    assert_eq!(response["model_version"], "1");
    assert_eq!(response["id"], "req-1");
    assert_eq!(response["outputs"][0]["name"], "label");
    assert_eq!(response["outputs"][0]["shape"], json!([1]));
    assert_eq!(response["outputs"][0]["data"], json!([expected["label"][0]]));
    assert_eq!(response["outputs"][1]["shape"], json!([1, 2]));
    assert_close(&response["outputs"][1]["data"], &expected["probabilities"][0], 1e-5);

    // Every reference row in one batch.
    let (status, response) = post_json(&server, "/v2/models/breast-cancer/infer", &infer_body(&rows)).await;
    assert_eq!(status, 200);
    assert_eq!(response["outputs"][0]["data"], expected["label"]);
    assert_close(&response["outputs"][1]["data"], &expected["probabilities"], 1e-5);
}

#[tokio::test]
async fn versioned_requests_reach_that_version() {
    let server = TestServer::start(&[]).await;
    for (model, version, output) in [
        ("breast-cancer", "2", "probabilities"),
        ("breast-cancer", "4", "probabilities"),
        ("diabetes", "2", "variable"),
    ] {
        let rows = reference_rows(model, version);
        let path = format!("/v2/models/{model}/versions/{version}/infer");
        let (status, response) = post_json(&server, &path, &infer_body(&rows)).await;
        assert_eq!(status, 200, "{response}");
        assert_eq!(response["model_version"], version);
        let index = if output == "variable" { 0 } else { 1 };
        let tolerance = if model == "diabetes" { 1e-3 } else { 1e-5 };
        assert_close(
            &response["outputs"][index]["data"],
            &manifest(model, version)["reference"]["outputs"][output],
            tolerance,
        );
    }
}

#[tokio::test]
async fn request_ids_come_from_the_body_the_header_or_the_gateway() {
    let server = TestServer::start(&[]).await;
    let body = infer_body(&reference_rows("diabetes", "1")[..1]).to_string();
    let client = reqwest::Client::new();
    let url = server.url("/v2/models/diabetes/infer");

    let response = client.post(&url).header("x-request-id", "from-header").body(body.clone()).send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "from-header");
    assert_eq!(response.json::<Value>().await.unwrap()["id"], "from-header");

    let response = client.post(&url).body(body.clone()).send().await.unwrap();
    let assigned = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(assigned.len(), 36, "a UUID: {assigned}");
    assert_eq!(response.json::<Value>().await.unwrap()["id"], assigned.as_str());
}

/// A Triton binary request: JSON header then little-endian tensors.
fn binary_request(rows: &[Vec<f64>], outputs: Option<Value>) -> (Vec<u8>, usize) {
    let mut header = json!({
        "inputs": [{ "name": "input", "shape": [rows.len(), rows[0].len()], "datatype": "FP32",
                     "parameters": { "binary_data_size": rows.len() * rows[0].len() * 4 } }],
    });
    match outputs {
        Some(outputs) => header["outputs"] = outputs,
        None => header["parameters"] = json!({ "binary_data_output": true }),
    }
    let mut body = header.to_string().into_bytes();
    let length = body.len();
    for value in rows.iter().flatten() {
        body.extend_from_slice(&(*value as f32).to_le_bytes());
    }
    (body, length)
}

async fn post_binary(server: &TestServer, body: Vec<u8>, header_length: usize) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.url("/v2/models/breast-cancer/infer"))
        .header("Inference-Header-Content-Length", header_length)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn binary_tensors_both_ways() {
    let server = TestServer::start(&[]).await;
    let rows = reference_rows("breast-cancer", "1");
    let expected = &manifest("breast-cancer", "1")["reference"]["outputs"];

    // All outputs binary (tritonclient's default).
    let (body, length) = binary_request(&rows, None);
    let response = post_binary(&server, body, length).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    let header_length: usize = response.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let bytes = response.bytes().await.unwrap();
    let head: Value = serde_json::from_slice(&bytes[..header_length]).unwrap();
    let label_bytes = head["outputs"][0]["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
    assert_eq!(label_bytes, rows.len() * 8);
    assert!(head["outputs"][0].get("data").is_none());
    let labels: Vec<i64> = bytes[header_length..header_length + label_bytes]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(json!(labels), expected["label"]);
    let probabilities: Vec<f32> = bytes[header_length + label_bytes..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_close(&json!(probabilities), &expected["probabilities"], 1e-5);

    // Binary in, one output out as JSON.
    let (body, length) =
        binary_request(&rows[..2], Some(json!([{ "name": "probabilities", "parameters": { "binary_data": false } }])));
    let response = post_binary(&server, body, length).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("inference-header-content-length").is_none());
    let value: Value = response.json().await.unwrap();
    assert_eq!(value["outputs"].as_array().unwrap().len(), 1);
    assert_close(&value["outputs"][0]["data"], &json!(expected["probabilities"].as_array().unwrap()[..2]), 1e-5);
}

#[tokio::test]
async fn each_bad_input_gets_its_status_and_a_message_naming_the_problem() {
    let server = TestServer::start(&["max_request_bytes=20000"]).await;
    let row = reference_rows("breast-cancer", "1")[0].clone();
    let good = infer_body(std::slice::from_ref(&row));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut body = good.clone();
        f(&mut body);
        body.to_string().into_bytes()
    };
    let nan_body = {
        let mut rows = vec![row.clone()];
        rows[0][3] = f64::NAN;
        binary_request(&rows, None)
    };
    // (what, model, body, Inference-Header-Content-Length, status, the error must contain)
    type Case<'a> = (&'a str, &'a str, Vec<u8>, Option<usize>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("malformed JSON", "breast-cancer", b"{\"inputs\": [".to_vec(), None, 400, "invalid request JSON"),
        ("missing input", "breast-cancer", with(&|b| b["inputs"] = json!([])), None, 400, "missing input 'input'"),
        (
            "extra input",
            "breast-cancer",
            with(&|b| {
                let extra = json!({ "name": "extra", "shape": [1], "datatype": "FP32", "data": [1] });
                b["inputs"].as_array_mut().unwrap().push(extra);
            }),
            None,
            400,
            "unknown input 'extra'",
        ),
        (
            "misnamed input",
            "breast-cancer",
            with(&|b| b["inputs"][0]["name"] = json!("features")),
            None,
            400,
            "unknown input 'features'",
        ),
        (
            "wrong datatype",
            "breast-cancer",
            with(&|b| b["inputs"][0]["datatype"] = json!("INT64")),
            None,
            400,
            "datatype INT64 but the model expects FP32",
        ),
        (
            "wrong feature count",
            "breast-cancer",
            with(&|b| b["inputs"][0]["shape"] = json!([1, 29])),
            None,
            400,
            "shape [1, 29] but the model expects [-1, 30]",
        ),
        (
            "shape vs data length",
            "breast-cancer",
            with(&|b| b["inputs"][0]["shape"] = json!([2, 30])),
            None,
            400,
            "holds 60 elements but the data has 30",
        ),
        ("NaN", "breast-cancer", nan_body.0.clone(), Some(nan_body.1), 400, "NaN or infinity at element 3"),
        (
            "lying binary length",
            "breast-cancer",
            nan_body.0[..nan_body.0.len() - 8].to_vec(),
            Some(nan_body.1),
            400,
            "bytes of binary data remain",
        ),
        (
            "header longer than body",
            "breast-cancer",
            nan_body.0.clone(),
            Some(nan_body.0.len() + 10),
            400,
            "Inference-Header-Content-Length",
        ),
        ("unknown model", "iris", good.to_string().into_bytes(), None, 404, "model 'iris' is not served"),
        ("too large", "breast-cancer", vec![b' '; 30000], None, 413, "larger than the limit of 20000 bytes"),
    ];
    for (what, model, body, header, status, needle) in cases {
        let mut request = reqwest::Client::new().post(server.url(&format!("/v2/models/{model}/infer"))).body(body);
        if let Some(length) = header {
            request = request.header("Inference-Header-Content-Length", length);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{what}");
        let body: Value = response.json().await.unwrap_or_else(|e| panic!("{what}: error body is not JSON: {e}"));
        let message = body["error"].as_str().unwrap_or_else(|| panic!("{what}: no error field in {body}"));
        assert!(message.contains(needle), "{what}: {message:?} does not contain {needle:?}");
    }
    let (status, body) = post_json(&server, "/v2/models/breast-cancer/versions/7/infer", &good).await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("no version '7'"));
    let response = reqwest::Client::new()
        .post(server.url("/v2/models/breast-cancer/infer"))
        .header("content-encoding", "gzip")
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    // None of that disturbed the gateway.
    assert_eq!(post_json(&server, "/v2/models/breast-cancer/infer", &good).await.0, 200);
}

/// Opens a connection and sends an infer request's head and all but the last byte of its body, so
/// the request holds its concurrency slot until `finish` sends the rest.
async fn start_slow_request(server: &TestServer, body: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /v2/models/breast-cancer/infer HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..body.len() - 1]).await.unwrap();
    stream
}

async fn finish(mut stream: TcpStream, body: &[u8]) -> String {
    stream.write_all(&body[body.len() - 1..]).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// With `max_concurrent_requests=1`: polls until another request is refused, which proves the slow
/// request's head has been read and it holds the only slot. Returns the refusal.
async fn until_slot_is_held(server: &TestServer, body: &[u8]) -> reqwest::Response {
    for _ in 0..1000 {
        let response = post(server, "/v2/models/breast-cancer/infer", body.to_vec()).await;
        if response.status() == 503 {
            return response;
        }
        tokio::task::yield_now().await;
    }
    panic!("a second request is never refused while the first holds the only slot");
}

#[tokio::test]
async fn overload_answers_503_with_retry_after_at_once() {
    let server = TestServer::start(&["max_concurrent_requests=1"]).await;
    let body = infer_body(&reference_rows("breast-cancer", "1")[..1]).to_string().into_bytes();
    let slow = start_slow_request(&server, &body).await;
    let refused = until_slot_is_held(&server, &body).await;
    assert_eq!(refused.headers()["retry-after"], "1");
    assert!(refused.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("too many requests"));
    // One limit for all inference: a direct call to a version is refused too, and so is a path
    // that only the router decodes.
    for path in ["/v2/models/breast-cancer/versions/1/infer", "/v2/models/breast%2Dcancer/infer"] {
        assert_eq!(post(&server, path, body.clone()).await.status(), 503, "{path}");
    }
    // Probes are outside the limit.
    assert_eq!(get(&server, "/v2/health/ready").await.0, 200);
    let response = finish(slow, &body).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(post(&server, "/v2/models/breast-cancer/infer", body).await.status(), 200);
}

#[tokio::test]
async fn a_request_past_the_timeout_answers_503_and_frees_its_slot() {
    let server = TestServer::start(&["max_concurrent_requests=1", "request_timeout_ms=300"]).await;
    let body = infer_body(&reference_rows("breast-cancer", "1")[..1]).to_string().into_bytes();
    // The body never completes: the timeout, not the client, ends the request.
    let mut slow = start_slow_request(&server, &body).await;
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&response).contains("timed out") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), slow.read(&mut buffer))
            .await
            .expect("the server answers within the timeout")
            .unwrap();
        assert!(n > 0, "closed without an answer: {}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&buffer[..n]);
    }
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 503"));
    assert_eq!(post(&server, "/v2/models/breast-cancer/infer", body).await.status(), 200);
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let mut server = TestServer::start(&["max_concurrent_requests=1"]).await;
    let body = infer_body(&reference_rows("breast-cancer", "1")[..1]).to_string().into_bytes();
    let slow = start_slow_request(&server, &body).await;
    until_slot_is_held(&server, &body).await;
    server.begin_shutdown();
    // Readiness fails while draining, so a load balancer moves traffic away.
    let ready = reqwest::get(server.url("/v2/health/ready")).await;
    assert!(ready.map_or(true, |r| r.status() == 503), "not ready once draining (or no longer accepting)");
    let response = finish(slow, &body).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"model_version\":\"1\""), "{response}");
    server.stop().await.expect("serve returns Ok after a graceful shutdown");
}

#[tokio::test]
async fn connections_without_a_whole_request_head_in_time_are_closed() {
    let server = TestServer::start(&["header_read_timeout_ms=300"]).await;
    let body = infer_body(&reference_rows("breast-cancer", "1")[..1]).to_string();
    let silent = TcpStream::connect(server.addr).await.unwrap();
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"POST /v2/models/breast-cancer/infer HTTP/1.1\r\nhost: localhost\r\n").await.unwrap();
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "POST /v2/models/breast-cancer/infer HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    idle.write_all(request.as_bytes()).await.unwrap();
    // Each read ends only when the gateway closes the connection; the bound is far above 300 ms
    // and far below hyper's 30 s default, so it fails if the setting is not applied.
    for (name, mut stream) in [("silent", silent), ("slow", slow), ("idle after a response", idle)] {
        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
            .await
            .unwrap_or_else(|_| panic!("the {name} connection is still open"))
            .unwrap();
        let received = String::from_utf8_lossy(&received);
        if name == "idle after a response" {
            assert!(received.starts_with("HTTP/1.1 200"), "{received}");
        } else {
            assert_eq!(received, "", "{name}: closed without a response");
        }
    }
}

#[tokio::test]
async fn metrics_count_requests_by_model_version_and_outcome() {
    let server = TestServer::start(&[]).await;
    let body = infer_body(&reference_rows("diabetes", "1")[..1]);
    assert_eq!(post_json(&server, "/v2/models/diabetes/versions/2/infer", &body).await.0, 200);
    let mut bad = body.clone();
    bad["inputs"][0]["datatype"] = json!("FP64");
    assert_eq!(post_json(&server, "/v2/models/diabetes/versions/2/infer", &bad).await.0, 400);

    let response = reqwest::get(server.url("/metrics")).await.unwrap();
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for needle in [
        r#"gauntlet_inference_requests_total{model="diabetes",version="2",outcome="ok"}"#,
        r#"gauntlet_inference_requests_total{model="diabetes",version="2",outcome="invalid_input"}"#,
        r#"gauntlet_inference_request_duration_seconds_bucket{model="diabetes",version="2",outcome="ok",le="0.001"}"#,
        r#"gauntlet_model_inference_duration_seconds_count{model="diabetes",version="2",backend="ort"}"#,
        r#"gauntlet_model_version_loaded{model="breast-cancer",version="1",backend="ort",role="champion"} 1"#,
    ] {
        assert!(text.contains(needle), "missing {needle}");
    }
}

#[tokio::test]
async fn tract_serves_what_it_can_and_names_why_the_rest_is_refused() {
    let server =
        TestServer::start(&["backend=tract", "models.breast-cancer.champion=3", "models.breast-cancer.challengers=[]"])
            .await;
    let (status, body) = get(&server, "/v2/models/breast-cancer").await;
    assert_eq!(status, 200);
    assert_eq!(body["platform"], "tract_onnx");
    assert_eq!(body["versions"], json!(["3"]));
    let (status, body) = get(&server, "/v2/models/breast-cancer/versions/4").await;
    assert_eq!(status, 404);
    let reason = body["error"].as_str().unwrap();
    assert!(reason.contains("refused at validation") && reason.contains("labels must match exactly"), "{reason}");
    let (_, body) = get(&server, "/v2/models/breast-cancer/versions/1").await;
    assert!(body["error"].as_str().unwrap().contains("refused at backend"), "{body}");

    let rows = reference_rows("breast-cancer", "3");
    let (status, response) = post_json(&server, "/v2/models/breast-cancer/infer", &infer_body(&rows)).await;
    assert_eq!(status, 200);
    assert_eq!(response["model_version"], "3");
    assert_close(
        &response["outputs"][1]["data"],
        &manifest("breast-cancer", "3")["reference"]["outputs"]["probabilities"],
        1e-5,
    );
}

#[tokio::test]
async fn a_champion_that_cannot_serve_stops_startup() {
    let config = common::config(&["backend=tract", "models.breast-cancer.challengers=[]"]);
    let error = gauntlet::Server::bind(config).await.err().expect("breast-cancer/1 needs ONNX Runtime");
    let message = format!("{error:#}");
    assert!(message.contains("breast-cancer/1 refused at backend"), "{message}");
}

/// The document is generated from the handlers; this checks the other direction: every operation
/// it lists is routed (none falls through to "no route" or "method not allowed").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed() {
    let server = TestServer::start(&[]).await;
    let (status, document) = get(&server, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(document["openapi"], "3.1.0");
    let client = reqwest::Client::new();
    let mut operations = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        let concrete = path.replace("{name}", "diabetes").replace("{version}", "2");
        for method in item.as_object().unwrap().keys() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            // Deletes and loads work on a version nothing else in this test needs.
            let response = client.request(method.clone(), server.url(&concrete)).send().await.unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            assert!(
                status != StatusCode::METHOD_NOT_ALLOWED && !body.contains("no route for"),
                "{method} {path}: {status} {body}"
            );
            operations += 1;
        }
    }
    assert_eq!(operations, 25);
    // The old hand-kept list of routes, now read from the router's own document.
    let paths: Vec<&str> = document["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    for path in [
        "/v2/models/{name}/infer",
        "/v2/models/{name}/feedback",
        "/admin/models/{name}/promote",
        "/admin/models/{name}/drift",
        "/admin/models/{name}/versions/{version}",
        "/admin/cluster",
        "/admin/repository",
        "/openapi.json",
        "/metrics",
    ] {
        assert!(paths.contains(&path), "{path} missing from {paths:?}");
    }
    // Every error response, declared once, has the one error shape.
    let mut errors = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for (code, response) in operation["responses"].as_object().unwrap() {
                if code.starts_with('4') || code.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {code}: {response}");
                    errors += 1;
                }
            }
        }
    }
    assert!(errors > 40, "{errors} error responses");
    for schema in [
        "ErrorBody",
        "InferRequest",
        "InferResponse",
        "ModelView",
        "Report",
        "DriftReport",
        "FeedbackRequest",
        "SearchView",
    ] {
        assert!(document["components"]["schemas"][schema].is_object(), "{schema} missing from the components");
    }
}

/// The console's files carry the strict Content-Security-Policy; the audit endpoint lists changes
/// newest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_with_its_policy_and_the_audit_log_newest_first() {
    let server = TestServer::start(&[]).await;
    let client = reqwest::Client::new();
    for (path, kind) in [("/ui/", "text/html"), ("/ui/console.js", "text/javascript"), ("/ui/console.css", "text/css")]
    {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        assert!(headers[reqwest::header::CONTENT_TYPE].to_str().unwrap().starts_with(kind), "{path}");
        let policy = headers[reqwest::header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(policy.contains("script-src 'self'") && policy.contains("default-src 'none'"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
        assert_eq!(headers[reqwest::header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
    let redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let response = redirect.get(server.url("/ui")).send().await.unwrap();
    assert_eq!(response.headers()[reqwest::header::LOCATION], "/ui/");
    for (action, body) in [
        ("promote", serde_json::json!({ "version": "2", "reason": "first" })),
        ("rollback", serde_json::json!({ "reason": "second" })),
    ] {
        let response =
            client.post(server.url(&format!("/admin/models/diabetes/{action}"))).json(&body).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let (status, audit) = get(&server, "/admin/models/diabetes/audit?limit=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(audit["entries"].as_array().unwrap().len(), 1);
    assert_eq!(
        (&audit["entries"][0]["action"], &audit["entries"][0]["reason"]),
        (&serde_json::json!("rollback"), &serde_json::json!("second"))
    );
    let (_, audit) = get(&server, "/admin/models/diabetes/audit").await;
    let reasons: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["second", "first"]);
    assert_eq!(get(&server, "/admin/models/nope/audit").await.0, StatusCode::NOT_FOUND);
    for bad in ["limit=many", "limit=-1", "colour=red"] {
        let (status, body) = get(&server, &format!("/admin/models/diabetes/audit?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
}
