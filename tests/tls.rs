//! TLS on both listeners, on a real gateway with certificates from a private CA made here: REST and
//! gRPC (our clients, the load generator and the official Triton clients) with the CA, refused
//! without it; mutual TLS refusing a client without a certificate; a rotated certificate served
//! without a restart.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::TestServer;
use gauntlet::grpc::GrpcInferenceServiceClient;
use gauntlet::grpc::pb::ServerReadyRequest;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use serde_json::Value;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A private CA and the files a gateway and its clients use, in a directory of their own.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Names of their own (rcgen gives every certificate the same one, and OpenSSL then takes
        // a leaf for self-signed).
        params.distinguished_name.push(DnType::CommonName, "gauntlet test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Self { dir: tempfile::tempdir().unwrap(), ca };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem()).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A server certificate for 127.0.0.1 into `server.pem`/`server.key`; its DER.
    fn server(&self) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "gauntlet");
        let certificate = params.signed_by(&key, &self.ca).unwrap();
        // The key first: a reload in between sees a pair that does not match and keeps the old one.
        std::fs::write(self.path("server.key"), key.serialize_pem()).unwrap();
        std::fs::write(self.path("server.pem"), certificate.pem()).unwrap();
        certificate.der().to_vec()
    }

    /// A client certificate and its key, PEM, one after the other.
    fn client(&self) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["a-client".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.distinguished_name.push(DnType::CommonName, "a-client");
        let certificate = params.signed_by(&key, &self.ca).unwrap();
        format!("{}{}", certificate.pem(), key.serialize_pem())
    }

    fn settings(&self) -> Vec<String> {
        vec![
            format!("tls.cert_file={}", self.path("server.pem").display()),
            format!("tls.key_file={}", self.path("server.key").display()),
        ]
    }

    fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.path("ca.pem")).unwrap()
    }
}

async fn start(pki: &Pki, extra: &[String]) -> TestServer {
    let sets: Vec<String> = pki.settings().into_iter().chain(extra.iter().cloned()).collect();
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    TestServer::start(&sets).await
}

fn https(server: &TestServer, path: &str) -> String {
    format!("https://{}{path}", server.addr)
}

fn client_with_ca(pki: &Pki) -> reqwest::ClientBuilder {
    reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(&pki.ca_pem()).unwrap())
}

async fn grpc_ready(server: &TestServer, tls: ClientTlsConfig) -> Result<bool, String> {
    let url = format!("https://{}", server.grpc.unwrap());
    let endpoint = Channel::from_shared(url).unwrap().tls_config(tls).map_err(|e| e.to_string())?;
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    let answer = GrpcInferenceServiceClient::new(channel).server_ready(ServerReadyRequest {}).await;
    answer.map(|r| r.into_inner().ready).map_err(|status| format!("{status:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_protocols_over_tls_and_a_client_without_the_ca_is_refused() {
    let pki = Pki::new();
    pki.server();
    let mut server = start(&pki, &[]).await;
    let client = client_with_ca(&pki).build().unwrap();
    let ready = client.get(https(&server, "/v2/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let row = &common::reference_rows("breast-cancer", "1")[0];
    let answer = client
        .post(https(&server, "/v2/models/breast-cancer/infer"))
        .json(&common::infer_body(std::slice::from_ref(row)))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    // Without the CA (the built-in roots only), and in clear text: no answer.
    let without = reqwest::Client::new().get(https(&server, "/v2/health/ready")).send().await;
    assert!(without.is_err(), "{without:?}");
    let clear = reqwest::Client::new().get(server.url("/v2/health/ready")).send().await;
    assert!(clear.is_err() || clear.unwrap().status() != 200);

    let with_ca = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pki.ca_pem()));
    assert_eq!(grpc_ready(&server, with_ca).await, Ok(true));
    let refused = grpc_ready(&server, ClientTlsConfig::new().with_webpki_roots()).await;
    assert!(refused.is_err(), "{refused:?}");

    // The load generator over both protocols, trusting the CA.
    let data = common::models_dir().join("breast-cancer").join("holdout.csv");
    for protocol in [gauntlet::cli::loadtest::Protocol::Http, gauntlet::cli::loadtest::Protocol::Grpc] {
        let args = gauntlet::cli::loadtest::LoadtestArgs {
            url: format!("https://{}", server.addr),
            grpc_url: Some(format!("https://{}", server.grpc.unwrap())),
            protocol,
            requests: Some(100),
            concurrency: Some(2),
            cacert: Some(pki.path("ca.pem")),
            ..common::loadtest_args(&server, "breast-cancer", data.clone())
        };
        let summary = gauntlet::cli::loadtest::run(&args).await.unwrap();
        assert_eq!((summary.ok, summary.errors), (100, 0), "{protocol:?}");
    }

    // The official clients.
    let python = tokio::task::spawn_blocking(common::python).await.unwrap();
    let output = tokio::process::Command::new(python)
        .arg(common::root().join("tests/python/check_tls.py"))
        .args(["--rest", &server.addr.to_string(), "--grpc", &server.grpc.unwrap().to_string()])
        .arg("--ca")
        .arg(pki.path("ca.pem"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let result: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!((&result["http_ready"], &result["grpc_ready"]), (&Value::Bool(true), &Value::Bool(true)), "{result}");
    assert_eq!(result["http_label"], result["grpc_label"], "{result}");
    for refused in ["http_without_ca", "grpc_without_ca"] {
        assert!(result[refused].as_str().unwrap().starts_with("refused"), "{result}");
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let pki = Pki::new();
    pki.server();
    let ca = format!("tls.client_ca_file={}", pki.path("ca.pem").display());
    let mut server = start(&pki, &[ca]).await;
    let identity = pki.client();
    let anonymous = client_with_ca(&pki).build().unwrap();
    let refused = anonymous.get(https(&server, "/v2/health/ready")).send().await;
    assert!(refused.is_err(), "{refused:?}");
    let known =
        client_with_ca(&pki).identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap()).build().unwrap();
    assert_eq!(known.get(https(&server, "/v2/health/ready")).send().await.unwrap().status(), 200);

    let tls = || ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pki.ca_pem()));
    assert!(grpc_ready(&server, tls()).await.is_err());
    let (certificate, key) = identity.split_at(identity.find("-----BEGIN PRIVATE KEY").unwrap());
    assert_eq!(grpc_ready(&server, tls().identity(Identity::from_pem(certificate, key))).await, Ok(true));
    server.stop().await.unwrap();
}

/// The certificate the gateway presents to a new connection.
async fn presented(server: &TestServer, pki: &Pki) -> Vec<u8> {
    // No pooled connection: every request makes its own handshake.
    let client = client_with_ca(pki).tls_info(true).pool_max_idle_per_host(0).build().unwrap();
    let response = client.get(https(server, "/v2/health/live")).send().await.unwrap();
    let info = response.extensions().get::<reqwest::tls::TlsInfo>().expect("tls_info is on");
    info.peer_certificate().expect("the server presents a certificate").to_vec()
}

/// `gauntlet_tls_reloads_total{result}` as the gateway exports it (plain HTTP is not served: over TLS).
async fn reloads(server: &TestServer, pki: &Pki, result: &str) -> f64 {
    let client = client_with_ca(pki).build().unwrap();
    let text = client.get(https(server, "/metrics")).send().await.unwrap().text().await.unwrap();
    let prefix = format!("gauntlet_tls_reloads_total{{result=\"{result}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok()).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let pki = Pki::new();
    let first = pki.server();
    let mut server = start(&pki, &["tls.reload_interval_ms=50".to_owned()]).await;
    assert_eq!(presented(&server, &pki).await, first);
    let second = pki.server();
    assert_ne!(first, second);
    common::eventually("the new certificate is presented", Duration::from_secs(30), || async {
        (presented(&server, &pki).await == second).then_some(())
    })
    .await;
    // Files that do not load (a key of another certificate) leave the last good one in place.
    let failed = || async { reloads(&server, &pki, "failed").await };
    let before = failed().await;
    std::fs::write(pki.path("server.key"), KeyPair::generate().unwrap().serialize_pem()).unwrap();
    common::eventually("the watcher tries the broken pair", Duration::from_secs(30), || async {
        (failed().await > before).then_some(())
    })
    .await;
    assert_eq!(presented(&server, &pki).await, second);
    assert!(reloads(&server, &pki, "ok").await >= 2.0, "both listeners reloaded the second certificate");
    server.stop().await.unwrap();
}
