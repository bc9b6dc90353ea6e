//! `gauntlet loadtest`: replays labelled rows (CSV) or logged requests (outcome log) against a
//! gateway, closed-loop at a concurrency or open-loop at a fixed rate, and checks objectives.
//!
//! Open-loop latency is measured from each request's *scheduled* send time, so a server that falls
//! behind cannot hide its queueing (no coordinated omission). Every run is bounded by a duration or
//! a request count, and sends traffic only to the URL it is given.
//!
//! The parts: `data` (the bodies, built once), `send` (the connections and the recorder), `grpc`
//! (`--protocol grpc`'s clients), `labels` (`--feedback`).

mod data;
mod grpc;
mod h2c;
mod hpack;
mod labels;
mod send;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde::Serialize;

use self::data::{bodies, input_of};
use self::grpc::GrpcClients;
use self::labels::{FEEDBACK_QUEUE, post_feedback};
use self::send::{Recorder, Sender, Target, drive, progress};

/// How requests are sent.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// REST, JSON bodies (`POST /v2/models/{name}/infer`).
    #[default]
    Http,
    /// gRPC ModelInfer with `raw_input_contents`, as tritonclient.grpc sends it.
    Grpc,
}

#[derive(clap::Args, Debug, Clone)]
pub struct LoadtestArgs {
    /// The gateway, e.g. http://127.0.0.1:8000 (REST; labels go here with --feedback).
    #[arg(long)]
    pub url: String,
    /// How to send the requests: http (REST, JSON) or grpc.
    #[arg(long, value_enum, default_value_t = Protocol::Http)]
    pub protocol: Protocol,
    /// The gateway's gRPC address with --protocol grpc, e.g. http://127.0.0.1:8001; default:
    /// --url's host, port 8001.
    #[arg(long)]
    pub grpc_url: Option<String>,
    /// The served model to call.
    #[arg(long)]
    pub model: String,
    /// Call this version directly instead of the champion.
    #[arg(long)]
    pub version: Option<String>,
    /// Rows to send: a CSV with a header (columns named label, target or truth are not features),
    /// or an outcome log (`*.jsonl`, inputs logged `full`).
    #[arg(long)]
    pub data: PathBuf,
    /// Closed loop: this many requests in flight, each sent when the last returned.
    #[arg(long, conflicts_with = "rate")]
    pub concurrency: Option<usize>,
    /// Open loop: this many requests a second, on schedule, whatever the server does.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: connections that carry the scheduled requests. gRPC: HTTP/2 connections the
    /// requests are spread over (at most one per request in flight).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Threads the generator runs on (default: one per core). `--threads 1` matches `wrk -t1` and
    /// `h2load -t1`: on a machine the gateway shares, each thread more is a core less for it.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Stop after this long (e.g. 30s, 2m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many requests.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Rows per request.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// A request unanswered after this counts as an error.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Print the summary as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Also write the latency histogram of the successful requests here, as CSV lines of
    /// `microseconds,count` (one per recorded bucket): runs written this way can be pooled.
    #[arg(long)]
    pub histogram: Option<PathBuf>,
    /// Objective: fail if p99 latency exceeds this.
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    /// Objective: fail if the share of failed requests exceeds this (0.01 = 1%).
    #[arg(long)]
    pub max_error_rate: Option<f64>,
    /// Objective: fail if throughput is below this.
    #[arg(long)]
    pub min_rps: Option<f64>,
    /// After each answered request, post its rows' truth (the CSV's label/target/truth column) to
    /// the model's feedback endpoint, so the comparison gets labels. Failed posts miss an objective.
    #[arg(long)]
    pub feedback: bool,
    /// How long after its answer a request's truth is posted.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub feedback_delay: Duration,
    /// A bearer token with the `infer` scope, sent with every request (REST and gRPC).
    #[arg(long, env = "GAUNTLET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A CA certificate (PEM) to trust for https:// URLs (REST and gRPC), beside the built-in roots.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// A bearer token with the `labels` scope for --feedback; default: --token.
    #[arg(long, env = "GAUNTLET_TOKEN_LABELS", hide_env_values = true)]
    pub labels_token: Option<String>,
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub mode: String,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub seconds: f64,
    pub rps: f64,
    pub latency_ms: Latencies,
    /// Failed requests by HTTP status, or by `timeout` / `connect` / `read` / `request`.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Labels posted with `--feedback`, and what the gateway did with them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback: Option<FeedbackSummary>,
    /// Objectives missed, empty when all are met.
    pub slo_violations: Vec<String>,
    /// The successful requests' latencies: (microseconds, count) per recorded bucket, ascending.
    #[serde(skip)]
    pub latency_buckets_us: Vec<(u64, u64)>,
}

#[derive(Debug, Default, Serialize)]
pub struct FeedbackSummary {
    pub posted: u64,
    pub joined: u64,
    pub held: u64,
    pub duplicate: u64,
    pub expired: u64,
    /// Labels whose POST failed, or that the client's bounded queue could not take.
    pub failed: u64,
}

#[derive(Debug, Serialize)]
pub struct Latencies {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// Runs the load test; the summary says whether the objectives were met.
pub async fn run(args: &LoadtestArgs) -> anyhow::Result<Summary> {
    ensure!(
        args.duration.is_some() || args.requests.is_some(),
        "refusing to run without a bound: give --duration or --requests"
    );
    ensure!(args.batch >= 1, "--batch must be at least 1");
    if let Some(rate) = args.rate {
        ensure!(rate > 0.0 && rate.is_finite(), "--rate must be positive");
    }
    let base = args.url.trim_end_matches('/').to_owned();
    // The token goes in every request's headers, built once here.
    let client_with = |token: Option<&String>| -> anyhow::Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the token is not a valid header value")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(crate::cli::admin::http_client(args.cacert.as_deref())?
            .timeout(Duration::from_millis(args.timeout_ms))
            .pool_max_idle_per_host(1024)
            .default_headers(headers)
            .build()?)
    };
    let client = client_with(args.token.as_ref())?;
    let grpc = match args.protocol {
        Protocol::Http => None,
        Protocol::Grpc => {
            let url = match &args.grpc_url {
                Some(url) => url.clone(),
                None => grpc_url_beside(&base)?,
            };
            let workers = args.rate.map_or(args.concurrency.unwrap_or(16), |_| args.connections).max(1);
            Some(
                GrpcClients::connect(
                    &url,
                    args.connections.clamp(1, workers),
                    args.token.as_deref(),
                    args.cacert.as_deref(),
                    Duration::from_millis(args.timeout_ms),
                )
                .await?,
            )
        }
    };
    let input = match &grpc {
        Some(grpc) => grpc.input_of(&args.model, args.version.as_deref()).await?,
        None => input_of(&client, &base, &args.model).await?,
    };
    let bodies = Arc::new(bodies(&args.data, &args.model, &input, args.batch, args.version.as_deref())?);
    if args.feedback {
        ensure!(
            bodies.iter().all(|b| b.truth.is_some()),
            "--feedback needs a CSV with a label, target or truth column; {} has none",
            args.data.display()
        );
    }
    ensure!(!bodies.is_empty(), "{} holds no rows for model {}", args.data.display(), args.model);
    let path = match &args.version {
        Some(v) => format!("{base}/v2/models/{}/versions/{v}/infer", args.model),
        None => format!("{base}/v2/models/{}/infer", args.model),
    };
    let sender = match grpc {
        Some(grpc) => Sender::Grpc(Arc::new(grpc), Duration::from_millis(args.timeout_ms)),
        None => Sender::Http { client: client.clone(), path: Arc::from(path) },
    };
    let recorder = Arc::new(Recorder::new());
    let started = Instant::now();
    let progress = (!args.quiet).then(|| tokio::spawn(progress(Arc::clone(&recorder), started)));
    let (labels, poster) = if args.feedback {
        let (sender, receiver) = tokio::sync::mpsc::channel(FEEDBACK_QUEUE);
        let url = format!("{base}/v2/models/{}/feedback", args.model);
        let labels_client = match &args.labels_token {
            Some(token) => client_with(Some(token))?,
            None => client.clone(),
        };
        (Some(sender), Some(tokio::spawn(post_feedback(labels_client, url, receiver))))
    } else {
        (None, None)
    };
    let id_prefix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let target = Target {
        sender,
        bodies,
        recorder: Arc::clone(&recorder),
        labels,
        feedback_delay: args.feedback_delay,
        id_prefix: Arc::from(id_prefix),
    };
    let mode = match args.rate {
        Some(rate) => {
            let connections = args.connections.max(1);
            let interval = Duration::from_secs_f64(1.0 / rate);
            drive(&target, connections, Some(interval), args.duration, args.requests, started).await;
            format!("open loop at {rate} req/s over {connections} connections")
        }
        None => {
            let concurrency = args.concurrency.unwrap_or(16).max(1);
            drive(&target, concurrency, None, args.duration, args.requests, started).await;
            format!("closed loop, {concurrency} in flight")
        }
    };
    let elapsed = started.elapsed();
    // The last labels are due `feedback_delay` after the last answer: wait for them.
    let dropped = target.labels.as_ref().map_or(0, |_| target.recorder.labels_dropped.load(Ordering::Relaxed));
    drop(target);
    let feedback = match poster {
        Some(poster) => {
            let mut summary = poster.await.context("the feedback poster failed")?;
            summary.failed += dropped;
            Some(summary)
        }
        None => None,
    };
    if let Some(p) = progress {
        p.abort();
    }
    let mut summary = recorder.summary(mode, elapsed, args);
    if let Some(f) = &feedback
        && f.failed > 0
    {
        summary.slo_violations.push(format!(
            "{} of {} labels were not taken by the gateway",
            f.failed,
            f.posted + f.failed
        ));
    }
    summary.feedback = feedback;
    Ok(summary)
}

/// The gRPC address beside a REST URL: the same host, port 8001 (as Triton and KServe pair them).
fn grpc_url_beside(base: &str) -> anyhow::Result<String> {
    let url = reqwest::Url::parse(base).with_context(|| format!("--url {base} is not a URL"))?;
    let host = url.host_str().with_context(|| format!("--url {base} has no host"))?;
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    Ok(format!("{}://{host}:8001", url.scheme()))
}

impl Summary {
    /// The table for people.
    pub fn table(&self) -> String {
        let l = &self.latency_ms;
        let mut out = String::new();
        let _ = writeln!(out, "mode        {}", self.mode);
        let _ = writeln!(out, "requests    {} in {:.1} s: {:.0} req/s", self.requests, self.seconds, self.rps);
        let _ = writeln!(out, "errors      {} ({:.2}%)", self.errors, self.error_rate * 100.0);
        for (kind, n) in &self.errors_by_kind {
            let _ = writeln!(out, "  {kind:<10} {n}");
        }
        let _ = writeln!(
            out,
            "latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        if let Some(f) = &self.feedback {
            let _ = writeln!(
                out,
                "feedback    {} labels posted: {} joined, {} held, {} duplicate, {} expired; {} failed",
                f.posted, f.joined, f.held, f.duplicate, f.expired, f.failed
            );
        }
        if self.slo_violations.is_empty() {
            let _ = writeln!(out, "objectives  met");
        } else {
            for v in &self.slo_violations {
                let _ = writeln!(out, "objective missed: {v}");
            }
        }
        out
    }
}

/// Runs, prints the summary (table, or JSON with `--json`) and returns whether every objective held.
pub async fn run_and_report(args: &LoadtestArgs) -> anyhow::Result<bool> {
    let summary = run(args).await?;
    if let Some(path) = &args.histogram {
        use std::fmt::Write as _;
        let mut csv = String::from("microseconds,count\n");
        for (us, count) in &summary.latency_buckets_us {
            let _ = writeln!(csv, "{us},{count}");
        }
        std::fs::write(path, csv).with_context(|| format!("writing the histogram to {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.table());
    }
    Ok(summary.slo_violations.is_empty())
}
