//! The HTTP floor for load comparisons: a bare hyper 1 server that reads each request body and
//! answers a fixed body the size of the gateway's one-row response. Nothing can be faster on the
//! same client, runtime and machine, so gateway figures are quoted as a ratio to it.
//!
//! `cargo run --release --example http_floor -- 127.0.0.1:9100`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

// The gateway's allocator too, so the ratio measures the gateway's work, not the allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BODY: &str = r#"{"model_name":"breast-cancer","model_version":"1","id":"00000000-0000-0000-0000-000000000000","outputs":[{"name":"label","datatype":"INT64","shape":[1],"data":[1]},{"name":"probabilities","datatype":"FP32","shape":[1,2],"data":[0.031017959,0.96898204]}]}"#;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9100".to_owned());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    eprintln!("http_floor listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|request: Request<hyper::body::Incoming>| async move {
                let _ = request.into_body().collect().await;
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
                        .expect("static response"),
                )
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
