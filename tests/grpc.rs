//! The Open Inference Protocol over gRPC on a real server: metadata, health and reflection, answers
//! equal to REST's, the error codes, paired records, a hot swap under gRPC load, the load
//! generator's own HTTP/2 client, and a fuzz pass over ModelInfer.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{TestServer, holdout, infer_body};
use gauntlet::grpc::GrpcInferenceServiceClient;
use gauntlet::grpc::pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use gauntlet::grpc::pb::{
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelReadyRequest,
    ServerLiveRequest, ServerMetadataRequest, ServerReadyRequest,
};
use gauntlet::model::{Backend, Model, ModelError, Tensor};
use gauntlet::registry::ModelHook;
use gauntlet::repository::VersionId;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

type Client = GrpcInferenceServiceClient<Channel>;

async fn channel(server: &TestServer) -> Channel {
    let address = server.grpc.expect("the test server serves gRPC");
    Channel::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap()
}

async fn client(server: &TestServer) -> Client {
    GrpcInferenceServiceClient::new(channel(server).await)
}

/// A ModelInfer request for `rows` of the demo's single FP32 input, in `raw_input_contents`.
fn raw_request(model: &str, rows: &[Vec<f64>]) -> ModelInferRequest {
    let bytes: Vec<u8> = rows.iter().flatten().flat_map(|&v| (v as f32).to_le_bytes()).collect();
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![input("FP32", &[rows.len() as i64, rows[0].len() as i64], None)],
        raw_input_contents: vec![bytes.into()],
        ..Default::default()
    }
}

/// The same rows in typed `fp32_contents`.
fn typed_request(model: &str, rows: &[Vec<f64>]) -> ModelInferRequest {
    let values: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    let contents = InferTensorContents { fp32_contents: values, ..Default::default() };
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![input("FP32", &[rows.len() as i64, rows[0].len() as i64], Some(contents))],
        ..Default::default()
    }
}

fn input(datatype: &str, shape: &[i64], contents: Option<InferTensorContents>) -> InferInputTensor {
    InferInputTensor {
        name: "input".into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        contents,
        ..Default::default()
    }
}

/// A gRPC answer in REST's JSON shape (outputs with flat data), for comparing the two.
fn as_json(response: &ModelInferResponse) -> Value {
    assert_eq!(response.outputs.len(), response.raw_output_contents.len(), "one raw entry per output");
    let outputs: Vec<Value> = response
        .outputs
        .iter()
        .zip(&response.raw_output_contents)
        .map(|(output, raw)| {
            let data: Vec<Value> = match output.datatype.as_str() {
                "FP32" => raw.chunks_exact(4).map(|c| json!(f32::from_le_bytes(c.try_into().unwrap()))).collect(),
                "FP64" => raw.chunks_exact(8).map(|c| json!(f64::from_le_bytes(c.try_into().unwrap()))).collect(),
                "INT64" => raw.chunks_exact(8).map(|c| json!(i64::from_le_bytes(c.try_into().unwrap()))).collect(),
                other => panic!("unexpected output datatype {other}"),
            };
            json!({ "name": output.name, "datatype": output.datatype, "shape": output.shape, "data": data })
        })
        .collect();
    json!({ "model_name": response.model_name, "model_version": response.model_version, "outputs": outputs })
}

/// REST's answer with its floats read as the f32 they were written from.
fn rest_as_json(answer: &Value) -> Value {
    let outputs: Vec<Value> = answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let data: Vec<Value> = o["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| match o["datatype"].as_str().unwrap() {
                    "FP32" => json!(v.as_f64().unwrap() as f32),
                    _ => v.clone(),
                })
                .collect();
            json!({ "name": o["name"], "datatype": o["datatype"], "shape": o["shape"], "data": data })
        })
        .collect();
    json!({ "model_name": answer["model_name"], "model_version": answer["model_version"], "outputs": outputs })
}

async fn rest_infer(server: &TestServer, model: &str, rows: &[Vec<f64>]) -> Value {
    let url = server.url(&format!("/v2/models/{model}/infer"));
    let response = reqwest::Client::new().post(url).json(&infer_body(rows)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn health_metadata_and_reflection_answer_as_rest_does() {
    let mut server = TestServer::start(&[]).await;
    let mut grpc = client(&server).await;
    assert!(grpc.server_live(ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(grpc.server_ready(ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let ready = |name: &str, version: &str| ModelReadyRequest { name: name.into(), version: version.into() };
    for (name, version, expected) in
        [("breast-cancer", "", true), ("breast-cancer", "3", true), ("breast-cancer", "9", false), ("nope", "", false)]
    {
        let answer = grpc.model_ready(ready(name, version)).await.unwrap().into_inner().ready;
        assert_eq!(answer, expected, "{name} {version}");
    }
    let server_metadata = grpc.server_metadata(ServerMetadataRequest {}).await.unwrap().into_inner();
    assert_eq!(server_metadata.name, "gauntlet");

    for (name, version) in [("breast-cancer", ""), ("diabetes", ""), ("breast-cancer", "2")] {
        let request = ModelMetadataRequest { name: name.into(), version: version.into() };
        let metadata = grpc.model_metadata(request).await.unwrap().into_inner();
        let path = if version.is_empty() {
            format!("/v2/models/{name}")
        } else {
            format!("/v2/models/{name}/versions/{version}")
        };
        let rest: Value = reqwest::get(server.url(&path)).await.unwrap().json().await.unwrap();
        let tensors = |list: &[gauntlet::grpc::pb::model_metadata_response::TensorMetadata]| -> Value {
            list.iter().map(|t| json!({ "name": t.name, "datatype": t.datatype, "shape": t.shape })).collect()
        };
        let grpc_view = json!({
            "name": metadata.name, "versions": metadata.versions, "platform": metadata.platform,
            "inputs": tensors(&metadata.inputs), "outputs": tensors(&metadata.outputs),
        });
        assert_eq!(grpc_view, rest, "{name} {version}");
    }
    let unknown = grpc.model_metadata(ModelMetadataRequest { name: "nope".into(), version: String::new() }).await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);
    let unknown = grpc.model_metadata(ModelMetadataRequest { name: "diabetes".into(), version: "7".into() }).await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);

    // grpc.health.v1, as Kubernetes' gRPC probe asks it.
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let mut health = HealthClient::new(channel(&server).await);
    for service in ["", "inference.GRPCInferenceService"] {
        let status = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "nope".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // Server reflection lists the services (what `grpcurl list` asks).
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel(&server).await);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::once(ask)).await.unwrap().into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else { panic!("{answer:?}") };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["inference.GRPCInferenceService", "grpc.health.v1.Health"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn answers_equal_rest_for_one_and_many_rows_raw_or_typed() {
    let mut server = TestServer::start(&[]).await;
    let mut grpc = client(&server).await;
    for model in ["breast-cancer", "diabetes"] {
        let rows = holdout(model).rows;
        for n in [1, 2, 17] {
            let rows = &rows[..n];
            let rest = rest_as_json(&rest_infer(&server, model, rows).await);
            for request in [raw_request(model, rows), typed_request(model, rows)] {
                let answer = grpc.model_infer(request).await.unwrap().into_inner();
                assert_eq!(as_json(&answer), rest, "{model}, {n} rows");
                assert!(!answer.id.is_empty(), "a request without an id gets one");
            }
        }
    }
    // The request's id comes back, in the message and as x-request-id; outputs as requested.
    let mut request = raw_request("breast-cancer", &holdout("breast-cancer").rows[..3]);
    request.id = "grpc-id-1".into();
    request.outputs = vec![InferRequestedOutputTensor { name: "probabilities".into(), ..Default::default() }];
    let response = grpc.model_infer(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "grpc-id-1");
    let answer = response.into_inner();
    assert_eq!(answer.id, "grpc-id-1");
    assert_eq!(answer.outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["probabilities"]);
    assert_eq!(answer.outputs[0].shape, [3, 2]);
    // A direct call to one version.
    let mut request = raw_request("breast-cancer", &holdout("breast-cancer").rows[..1]);
    request.model_version = "3".into();
    assert_eq!(grpc.model_infer(request).await.unwrap().into_inner().model_version, "3");
    server.stop().await.unwrap();
}

#[track_caller]
fn refused(result: Result<tonic::Response<ModelInferResponse>, tonic::Status>, code: Code, needle: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(status.message().contains(needle), "{:?} does not say {needle:?}", status.message());
}

#[tokio::test]
async fn bad_requests_get_the_protocols_codes_and_say_why() {
    let mut server = TestServer::start(&["max_request_bytes=65536"]).await;
    let mut grpc = client(&server).await;
    let rows = holdout("breast-cancer").rows;
    let good = || raw_request("breast-cancer", &rows[..2]);
    let with = |f: &dyn Fn(&mut ModelInferRequest)| {
        let mut request = good();
        f(&mut request);
        request
    };
    let cases: Vec<(ModelInferRequest, Code, &str)> = vec![
        (
            with(&|r| r.inputs[0].shape = vec![2, 29]),
            Code::InvalidArgument,
            "shape [2, 29] but the model expects [-1, 30]",
        ),
        (
            with(&|r| r.inputs[0].datatype = "FP64".into()),
            Code::InvalidArgument,
            "datatype FP64 but the model expects FP32",
        ),
        (with(&|r| r.inputs[0].datatype = "FP16".into()), Code::InvalidArgument, "unsupported datatype 'FP16'"),
        (with(&|r| r.model_name = "nope".into()), Code::NotFound, "model 'nope' is not served"),
        (with(&|r| r.model_version = "9".into()), Code::NotFound, "no version '9'"),
        (with(&|r| r.inputs[0].name = "x".into()), Code::InvalidArgument, "unknown input 'x'"),
        (with(&|r| r.inputs[0].shape = vec![2, -30]), Code::InvalidArgument, "negative dimension"),
        (with(&|r| r.inputs[0].shape = vec![0, 30]), Code::InvalidArgument, "no rows"),
        (
            with(&|r| {
                r.inputs.clear();
                r.raw_input_contents.clear();
            }),
            Code::InvalidArgument,
            "missing input 'input'",
        ),
        // Truncated raw contents: not a whole number of FP32 elements.
        (
            with(&|r| r.raw_input_contents[0] = r.raw_input_contents[0].slice(..239)),
            Code::InvalidArgument,
            "raw_input_contents",
        ),
        // Whole elements, but fewer than the shape holds.
        (
            with(&|r| r.raw_input_contents[0] = r.raw_input_contents[0].slice(..120)),
            Code::InvalidArgument,
            "holds 60 elements but the data has 30",
        ),
        (
            with(&|r| r.raw_input_contents.push(vec![0u8; 4].into())),
            Code::InvalidArgument,
            "raw_input_contents has 2 entries but the request has 1 inputs",
        ),
        (
            with(&|r| {
                let mut bytes = r.raw_input_contents[0].to_vec();
                bytes[36..40].copy_from_slice(&f32::NAN.to_le_bytes());
                r.raw_input_contents[0] = bytes.into();
            }),
            Code::InvalidArgument,
            "NaN or infinity at element 9 (row 0)",
        ),
        (
            {
                let mut r = typed_request("breast-cancer", &rows[..2]);
                r.inputs[0].contents.as_mut().unwrap().fp32_contents[40] = f32::INFINITY;
                r
            },
            Code::InvalidArgument,
            "NaN or infinity at element 40 (row 1)",
        ),
        (
            {
                let mut r = typed_request("breast-cancer", &rows[..1]);
                let contents = InferTensorContents { fp64_contents: vec![0.0; 30], ..Default::default() };
                r.inputs[0].contents = Some(contents);
                r
            },
            Code::InvalidArgument,
            "goes in fp32_contents, not in fp64_contents",
        ),
        (
            with(&|r| {
                r.inputs[0].contents = Some(InferTensorContents { fp32_contents: vec![0.0; 60], ..Default::default() })
            }),
            Code::InvalidArgument,
            "both contents and raw_input_contents",
        ),
        (with(&|r| r.raw_input_contents.clear()), Code::InvalidArgument, "has no data"),
        (
            with(&|r| r.outputs = vec![InferRequestedOutputTensor { name: "nope".into(), ..Default::default() }]),
            Code::InvalidArgument,
            "unknown output 'nope'",
        ),
        // Over max_request_bytes: 600 rows of 30 FP32 values are 72,000 bytes.
        (
            raw_request("breast-cancer", &rows.iter().cycle().take(600).cloned().collect::<Vec<_>>()),
            Code::ResourceExhausted,
            "too large",
        ),
    ];
    for (request, code, needle) in cases {
        refused(grpc.model_infer(request).await, code, needle);
    }
    // Bytes that are not a ModelInferRequest at all.
    for garbage in [vec![0xff; 7], vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], b"not protobuf".to_vec()] {
        let status = raw_call(channel(&server).await, garbage).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    }
    // None of it cost the server anything.
    assert!(grpc.model_infer(good()).await.is_ok());
    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"gauntlet_inference_requests_by_protocol_total{protocol="grpc"}"#), "{metrics}");
    server.stop().await.unwrap();
}

/// Sends `bytes` as the body of a ModelInfer call, bypassing the message types.
async fn raw_call(channel: Channel, bytes: Vec<u8>) -> Result<tonic::Response<Vec<u8>>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/inference.GRPCInferenceService/ModelInfer");
    grpc.unary(tonic::Request::new(bytes), path, RawCodec).await
}

#[derive(Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = bytes::Buf::copy_to_bytes(buf, bytes::Buf::remaining(buf));
        Ok(Some(bytes.to_vec()))
    }
}

/// A real model that, once `armed`, says it started and then waits for the test to let it go.
struct Gated {
    inner: Box<dyn Model>,
    armed: Arc<AtomicBool>,
    started: tokio::sync::mpsc::UnboundedSender<()>,
    release: Arc<parking_lot::Mutex<std::sync::mpsc::Receiver<()>>>,
}

impl Model for Gated {
    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        if self.armed.load(Ordering::SeqCst) {
            let _ = self.started.send(());
            let _ = self.release.lock().recv_timeout(Duration::from_secs(30));
        }
        self.inner.infer(inputs)
    }

    fn backend(&self) -> Backend {
        self.inner.backend()
    }
}

struct Gate {
    armed: Arc<AtomicBool>,
    started: tokio::sync::mpsc::UnboundedReceiver<()>,
    release: std::sync::mpsc::Sender<()>,
}

/// Options whose breast-cancer champion (version 1) is gated.
fn gated() -> (gauntlet::ServerOptions, Gate) {
    let armed = Arc::new(AtomicBool::new(false));
    let (started_tx, started) = tokio::sync::mpsc::unbounded_channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let release_rx = Arc::new(parking_lot::Mutex::new(release_rx));
    let flag = Arc::clone(&armed);
    let hook: ModelHook = Arc::new(move |model: &str, version: &VersionId, inner: Box<dyn Model>| {
        if model == "breast-cancer" && version.as_str() == "1" {
            let (armed, started, release) = (Arc::clone(&flag), started_tx.clone(), Arc::clone(&release_rx));
            Box::new(Gated { inner, armed, started, release }) as Box<dyn Model>
        } else {
            inner
        }
    });
    (gauntlet::ServerOptions { model_hook: Some(hook) }, Gate { armed, started, release })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shedding_is_unavailable_and_a_timeout_is_deadline_exceeded() {
    let row = holdout("breast-cancer").rows[..1].to_vec();
    // Every model on the pool, so a gated run holds a pool thread, not an async worker.
    let common = ["inline_max_us=0", "models.breast-cancer.challengers=[]"];

    let (options, mut gate) = gated();
    let overrides = [&common[..], &["max_concurrent_requests=1", "request_timeout_ms=30000"]].concat();
    let mut server = TestServer::start_with_options(&overrides, options).await;
    gate.armed.store(true, Ordering::SeqCst);
    let first = tokio::spawn({
        let mut grpc = client(&server).await;
        let request = raw_request("breast-cancer", &row);
        async move { grpc.model_infer(request).await }
    });
    gate.started.recv().await.unwrap();
    // The one slot is taken: the next request is shed at once, REST's 503 being gRPC's UNAVAILABLE.
    refused(
        client(&server).await.model_infer(raw_request("breast-cancer", &row)).await,
        Code::Unavailable,
        "too many requests in flight",
    );
    gate.armed.store(false, Ordering::SeqCst);
    gate.release.send(()).unwrap();
    assert!(first.await.unwrap().is_ok(), "the request that held the slot is answered");
    server.stop().await.unwrap();

    let (options, mut gate) = gated();
    let overrides = [&common[..], &["request_timeout_ms=200"]].concat();
    let mut server = TestServer::start_with_options(&overrides, options).await;
    gate.armed.store(true, Ordering::SeqCst);
    refused(
        client(&server).await.model_infer(raw_request("breast-cancer", &row)).await,
        Code::DeadlineExceeded,
        "timed out",
    );
    gate.started.recv().await.unwrap();
    gate.armed.store(false, Ordering::SeqCst);
    gate.release.send(()).unwrap();
    assert!(client(&server).await.model_infer(raw_request("breast-cancer", &row)).await.is_ok());
    server.stop().await.unwrap();
}

/// A server whose breast-cancer champion is gated and run on the pool (so a held call holds a pool
/// thread, not an async worker), without challengers.
async fn held_champion_server() -> (TestServer, Gate) {
    let (options, gate) = gated();
    let overrides = ["inline_max_us=0", "models.breast-cancer.challengers=[]"];
    (TestServer::start_with_options(&overrides, options).await, gate)
}

/// A connection's calls run on its task: one that waits (here on a held model) holds up none of the
/// others on the same connection, and calls past the few run there are answered as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_call_holds_up_no_other_call_on_its_connection() {
    let (mut server, mut gate) = held_champion_server().await;
    let row = holdout("breast-cancer").rows[..1].to_vec();
    let grpc = client(&server).await;
    gate.armed.store(true, Ordering::SeqCst);
    let held = tokio::spawn({
        let (mut grpc, request) = (grpc.clone(), raw_request("breast-cancer", &row));
        async move { grpc.model_infer(request).await }
    });
    gate.started.recv().await.unwrap();
    gate.armed.store(false, Ordering::SeqCst);
    // Twelve more on the same connection (one channel), while the first is held.
    let others: Vec<_> = (0..12)
        .map(|i| {
            let mut grpc = grpc.clone();
            let mut request = raw_request("breast-cancer", &row);
            request.id = format!("other-{i}");
            tokio::spawn(async move { grpc.model_infer(request).await })
        })
        .collect();
    for (i, other) in others.into_iter().enumerate() {
        let answer = tokio::time::timeout(Duration::from_secs(30), other)
            .await
            .expect("a call on the held call's connection is answered while it is held")
            .unwrap()
            .unwrap();
        assert_eq!(answer.into_inner().id, format!("other-{i}"));
    }
    assert!(!held.is_finished(), "the held call is still held");
    gate.release.send(()).unwrap();
    assert!(held.await.unwrap().is_ok(), "the held call is answered once let go");
    server.stop().await.unwrap();
}

/// Shutdown, as for REST: a call under way is answered, and `serve` returns Ok once it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_under_way_at_shutdown_is_answered() {
    let (mut server, mut gate) = held_champion_server().await;
    let row = holdout("breast-cancer").rows[..1].to_vec();
    let mut grpc = client(&server).await;
    // The connection is up and has answered once before the call that will be under way.
    assert!(grpc.model_infer(raw_request("breast-cancer", &row)).await.is_ok());
    gate.armed.store(true, Ordering::SeqCst);
    let under_way = tokio::spawn({
        let request = raw_request("breast-cancer", &row);
        async move { grpc.model_infer(request).await }
    });
    gate.started.recv().await.unwrap();
    server.begin_shutdown();
    let address = server.grpc.unwrap();
    // Accepting stops: a new client is refused once the listener closes.
    common::eventually("the gRPC listener closes", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(address).await.is_err().then_some(())
    })
    .await;
    gate.armed.store(false, Ordering::SeqCst);
    gate.release.send(()).unwrap();
    let answer = under_way.await.unwrap().expect("the call under way at shutdown is answered");
    assert_eq!(answer.into_inner().model_version, "1");
    server.stop().await.expect("serve returns Ok after a graceful shutdown");
}

#[tokio::test]
async fn grpc_requests_leave_paired_records_as_rest_ones_do() {
    let mut server = TestServer::start(&["outcomes.log_inputs=full"]).await;
    let mut grpc = client(&server).await;
    let rows = holdout("breast-cancer").rows;
    for (i, row) in rows.iter().take(20).enumerate() {
        let mut request = raw_request("breast-cancer", std::slice::from_ref(row));
        request.id = format!("grpc-{i}");
        grpc.model_infer(request).await.unwrap();
        let mut body = infer_body(std::slice::from_ref(row));
        body["id"] = json!(format!("rest-{i}"));
        let response =
            reqwest::Client::new().post(server.url("/v2/models/breast-cancer/infer")).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    server.stop().await.unwrap();
    let records = server.records();
    let record = |id: &str| {
        let found: Vec<&Value> = records.iter().filter(|r| r["request_id"] == id).collect();
        assert_eq!(found.len(), 1, "one record for {id}");
        found[0].clone()
    };
    for i in 0..20 {
        let (mut by_grpc, mut by_rest) = (record(&format!("grpc-{i}")), record(&format!("rest-{i}")));
        // Everything but the id, the times and the line's number in the join's order is the same:
        // the same versions, inputs and outputs.
        for r in [&mut by_grpc, &mut by_rest] {
            let object = r.as_object_mut().unwrap();
            for key in ["request_id", "timestamp", "seq"] {
                object.remove(key);
            }
            // How long each version took, and the shadow batch it ran in, are the machine's.
            for result in object.get_mut("results").and_then(Value::as_array_mut).into_iter().flatten() {
                result.as_object_mut().unwrap().retain(|k, _| k != "latency_ms" && k != "batch");
            }
        }
        assert_eq!(by_grpc, by_rest, "row {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_swap_under_grpc_load_fails_no_request() {
    let mut server = TestServer::start(&[]).await;
    let data = common::models_dir().join("breast-cancer").join("holdout.csv");
    let args = gauntlet::cli::loadtest::LoadtestArgs {
        protocol: gauntlet::cli::loadtest::Protocol::Grpc,
        grpc_url: Some(format!("http://{}", server.grpc.unwrap())),
        concurrency: Some(4),
        connections: 2,
        requests: Some(100),
        ..common::loadtest_args(&server, "breast-cancer", data)
    };
    // Rounds of `loadtest --protocol grpc` until the changes below are done.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let (mut requests, mut errors) = (0, std::collections::BTreeMap::<String, u64>::new());
            while !stop.load(Ordering::Relaxed) {
                let summary = gauntlet::cli::loadtest::run(&args).await.unwrap();
                requests += summary.requests;
                for (kind, n) in summary.errors_by_kind {
                    *errors.entry(kind).or_default() += n;
                }
            }
            (requests, errors)
        }
    });
    let admin = reqwest::Client::new();
    for _ in 0..10 {
        for (action, body) in [("promote", json!({ "version": "2" })), ("rollback", json!({}))] {
            let url = server.url(&format!("/admin/models/breast-cancer/{action}"));
            let response = admin.post(url).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (requests, errors) = load.await.unwrap();
    assert!(errors.is_empty(), "{errors:?} of {requests} requests failed across 20 swaps");
    assert!(requests >= 100, "{requests}");
    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    let line =
        metrics.lines().find(|l| l.starts_with(r#"gauntlet_inference_requests_by_protocol_total{protocol="grpc"}"#));
    let counted: u64 = line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).expect("the gRPC request counter");
    // The recorder is the test process's, shared with the other tests: at least these.
    assert!(counted >= requests, "{counted} gRPC requests counted, {requests} sent");
    server.stop().await.unwrap();
}

/// `loadtest --protocol grpc` on its own HTTP/2 client: a request larger than a frame (sent in
/// several DATA frames as the server's windows allow: eight in flight on one connection are
/// twice its first connection window), calls that outlive their timeout counted as timeouts
/// (their streams reset) with the gateway serving on, and refusals counted by their gRPC status.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_grpc_load_generator_counts_what_the_server_answers() {
    let (options, mut gate) = gated();
    let overrides = ["inline_max_us=0", "models.breast-cancer.challengers=[]", "max_request_bytes=30000"];
    let mut server = TestServer::start_with_options(&overrides, options).await;
    let (addr, grpc) = (server.addr, server.grpc.unwrap());
    let args = |requests: u64, batch: usize, timeout_ms: u64| gauntlet::cli::loadtest::LoadtestArgs {
        protocol: gauntlet::cli::loadtest::Protocol::Grpc,
        grpc_url: Some(format!("http://{grpc}")),
        concurrency: Some(8),
        connections: 1,
        requests: Some(requests),
        batch,
        timeout_ms,
        max_error_rate: None,
        ..common::loadtest_args_at(addr, "breast-cancer", common::models_dir().join("breast-cancer/holdout.csv"))
    };
    let run = gauntlet::cli::loadtest::run;
    type LoadtestArgs = gauntlet::cli::loadtest::LoadtestArgs;
    // 140 rows of 30 FP32 values: 16,800 bytes of contents, more than a 16,384-byte frame.
    let large = run(&args(64, 140, 10_000)).await.unwrap();
    assert_eq!((large.ok, large.errors), (64, 0), "{:?}", large.errors_by_kind);
    // The champion held: every call outlives its 300 ms and is counted a timeout.
    gate.armed.store(true, Ordering::SeqCst);
    let held = run(&args(16, 1, 300)).await.unwrap();
    assert_eq!(held.errors_by_kind.get("timeout"), Some(&16), "{:?}", held.errors_by_kind);
    gate.armed.store(false, Ordering::SeqCst);
    while gate.started.try_recv().is_ok() {
        gate.release.send(()).unwrap();
    }
    // And the gateway serves on: a new run is whole.
    let after = run(&args(64, 1, 10_000)).await.unwrap();
    assert_eq!((after.ok, after.errors), (64, 0), "{:?}", after.errors_by_kind);
    server.stop().await.unwrap();

    // A gateway that takes at most 16,000 bytes refuses every such request, counted by its status.
    let mut server = TestServer::start(&["models.breast-cancer.challengers=[]", "max_request_bytes=16000"]).await;
    let refused = run(&LoadtestArgs {
        url: format!("http://{}", server.addr),
        grpc_url: Some(format!("http://{}", server.grpc.unwrap())),
        ..args(64, 140, 10_000)
    })
    .await
    .unwrap();
    assert_eq!(refused.ok, 0);
    let kinds: Vec<_> = refused.errors_by_kind.iter().collect();
    assert!(matches!(kinds[..], [(kind, 64)] if kind.starts_with("grpc ")), "{kinds:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn fuzzed_model_infer_requests_never_crash_or_fail_inside() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut server = TestServer::start(&["models.breast-cancer.challengers=[]"]).await;
    let mut grpc = client(&server).await;
    let names = prop_oneof![Just("breast-cancer".to_owned()), Just("diabetes".to_owned()), "[a-z-]{0,12}"];
    let datatypes = prop_oneof![
        Just("FP32".to_owned()),
        Just("FP64".to_owned()),
        Just("INT64".to_owned()),
        Just("BOOL".to_owned()),
        "[A-Z0-9]{0,5}"
    ];
    let shapes = prop::collection::vec(-3i64..40, 0..4);
    let floats =
        prop::collection::vec(prop_oneof![Just(f32::NAN), Just(f32::INFINITY), -1e3f32..1e3, Just(0.0f32)], 0..70);
    let raw = prop::option::of(prop::collection::vec(any::<u8>(), 0..300));
    let input = (prop_oneof![Just("input".to_owned()), "[a-z]{0,6}"], datatypes, shapes, floats, raw);
    let request = (names, "[0-9]{0,2}", prop::collection::vec(input, 0..3), any::<bool>());
    let mut runner = TestRunner::deterministic();
    let (mut ok, mut invalid) = (0, 0);
    for _ in 0..400 {
        let (model, version, inputs, typed_as_int) = request.new_tree(&mut runner).unwrap().current();
        let mut message = ModelInferRequest { model_name: model, model_version: version, ..Default::default() };
        for (name, datatype, shape, floats, raw) in inputs {
            let contents = (raw.is_none()).then(|| {
                if typed_as_int {
                    InferTensorContents {
                        int64_contents: floats.iter().map(|&f| f as i64).collect(),
                        ..Default::default()
                    }
                } else {
                    InferTensorContents { fp32_contents: floats, ..Default::default() }
                }
            });
            if let Some(raw) = raw {
                message.raw_input_contents.push(raw.into());
            }
            message.inputs.push(InferInputTensor { name, datatype, shape, contents, ..Default::default() });
        }
        match grpc.model_infer(message.clone()).await {
            Ok(_) => ok += 1,
            Err(status) => {
                assert!(
                    matches!(status.code(), Code::InvalidArgument | Code::NotFound),
                    "{message:?} got {:?}: {}",
                    status.code(),
                    status.message()
                );
                invalid += 1;
            }
        }
    }
    // Random bytes as the message itself.
    for _ in 0..200 {
        let bytes = prop::collection::vec(any::<u8>(), 0..200).new_tree(&mut runner).unwrap().current();
        if let Err(status) = raw_call(channel(&server).await, bytes).await {
            assert!(matches!(status.code(), Code::InvalidArgument | Code::NotFound), "{status:?}");
        }
    }
    assert!(invalid > 300, "the fuzz mostly sends bad input: {ok} ok, {invalid} refused");
    // Still serving.
    assert!(grpc.model_infer(raw_request("breast-cancer", &holdout("breast-cancer").rows[..1])).await.is_ok());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_requests_are_batched_on_the_pool_as_rest_ones_are() {
    // Every version on the pool, where concurrent requests run together (a batch waits up to 20 ms
    // for more: these models take microseconds).
    let mut server = TestServer::start(&[
        "inline_max_us=0",
        "models.breast-cancer.batching.max_batch=16",
        "models.breast-cancer.batching.max_queue_delay_us=20000",
    ])
    .await;
    let before = server.champion_batches("breast-cancer", "1").await;
    let rows = holdout("breast-cancer").rows;
    let n = 48;
    let grpc = client(&server).await;
    let calls = (0..n).map(|i| {
        let (mut grpc, mut request) = (grpc.clone(), raw_request("breast-cancer", &rows[i..i + 1]));
        request.id = format!("g{i}");
        tokio::spawn(async move { grpc.model_infer(request).await.unwrap().into_inner() })
    });
    let mut answers = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        answers.push(call.await.unwrap());
    }
    let after = server.champion_batches("breast-cancer", "1").await;
    let (calls, batched_rows) = (after.0 - before.0, after.1 - before.1);
    assert_eq!(batched_rows, n as f64, "each gRPC request's row ran once, batched");
    assert!(calls < batched_rows, "{n} concurrent gRPC requests ran in {calls} calls");
    // Each answer is its own request's: its id, and what REST answers for its row alone (labels
    // exactly; probabilities within the manifest's tolerance: a batched GEMM sums in another order).
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer.id, format!("g{i}"));
        let (grpc, rest) =
            (as_json(answer), rest_as_json(&rest_infer(&server, "breast-cancer", &rows[i..i + 1]).await));
        assert_eq!(grpc["outputs"][0], rest["outputs"][0], "row {i}: the label");
        common::assert_close(&grpc["outputs"][1]["data"], &rest["outputs"][1]["data"], 1e-4);
    }
    server.stop().await.unwrap();
}
