//! Sending: the connections that take request slots closed- or open-loop, and the recorder of
//! their latencies and errors.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

use super::data::Body;
use super::grpc::GrpcClients;
use super::labels::Label;
use super::{Latencies, LoadtestArgs, Summary};

#[derive(Clone)]
pub(super) struct Target {
    pub(super) sender: Sender,
    pub(super) bodies: Arc<Vec<Body>>,
    pub(super) recorder: Arc<Recorder>,
    /// With `--feedback`: where answered requests' labels go.
    pub(super) labels: Option<tokio::sync::mpsc::Sender<Label>>,
    pub(super) feedback_delay: Duration,
    pub(super) id_prefix: Arc<str>,
}

/// How requests go out.
#[derive(Clone)]
pub(super) enum Sender {
    Http {
        client: reqwest::Client,
        path: Arc<str>,
    },
    /// The clients, and the deadline each call carries (`grpc-timeout`) and is held to.
    Grpc(Arc<GrpcClients>, Duration),
}

impl Target {
    /// Sends request number `i`; its latency counts from `scheduled`.
    async fn send(&self, i: u64, scheduled: Instant) {
        let body = &self.bodies[(i % self.bodies.len() as u64) as usize];
        let id = self.labels.as_ref().map(|_| format!("{}-{i}", self.id_prefix));
        let outcome = match &self.sender {
            Sender::Http { client, path } => {
                let mut request = client.post(&**path).body(body.bytes.clone());
                if let Some(id) = &id {
                    // The gateway takes the request id from this header when the body has none.
                    request = request.header("x-request-id", id.as_str());
                }
                send_http(request).await
            }
            Sender::Grpc(clients, timeout) => clients.infer(i, &body.message, id.as_deref(), *timeout).await,
        };
        let ok = outcome.is_ok();
        self.recorder.record(scheduled.elapsed(), outcome);
        if ok && let (Some(labels), Some(id), Some(truth)) = (&self.labels, id, &body.truth) {
            let label = Label { due: Instant::now() + self.feedback_delay, id, truth: truth.clone() };
            if labels.try_send(label).is_err() {
                self.recorder.labels_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn send_http(request: reqwest::RequestBuilder) -> Result<(), String> {
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            match response.bytes().await {
                Ok(_) if status == 200 => Ok(()),
                Ok(_) => Err(status.to_string()),
                Err(e) if e.is_timeout() => Err("timeout".to_owned()),
                Err(_) => Err("read".to_owned()),
            }
        }
        Err(e) if e.is_timeout() => Err("timeout".to_owned()),
        Err(e) if e.is_connect() => Err("connect".to_owned()),
        Err(_) => Err("request".to_owned()),
    }
}

/// Runs `workers` connections, each taking the next request slot until the run's bound.
///
/// Closed loop (`interval` is `None`): a slot is sent as soon as a worker is free. Open loop, as wrk2
/// does it: slot `i` is due at `started + i * interval`. A slot that comes due while its worker is
/// idle is timed from its actual send, so the client's own timer lateness is not charged to the
/// server; one that passed while every worker was busy waiting on the server is timed from when it
/// was due, so the server's queueing is not hidden.
pub(super) async fn drive(
    target: &Target,
    workers: usize,
    interval: Option<Duration>,
    duration: Option<Duration>,
    requests: Option<u64>,
    started: Instant,
) {
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..workers)
        .map(|_| {
            let (target, next) = (target.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let due = interval.map_or_else(Instant::now, |interval| started + interval.mul_f64(i as f64));
                    if requests.is_some_and(|n| i >= n) || duration.is_some_and(|d| due.duration_since(started) >= d) {
                        break;
                    }
                    let from = if due > Instant::now() {
                        tokio::time::sleep_until(due.into()).await;
                        Instant::now()
                    } else {
                        due
                    };
                    target.send(i, from).await;
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
}

/// Progress on stderr until aborted: a live line (indicatif) on a terminal, else a plain line every
/// 5 s, so CI logs show it too.
pub(super) async fn progress(recorder: Arc<Recorder>, started: Instant) {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").expect("a valid template"),
    );
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0;
    loop {
        tick.tick().await;
        let (count, errors, p99) = recorder.snapshot();
        let line = format!("{count} requests, {} req/s, {errors} errors, p99 so far {p99:.2} ms", count - last);
        last = count;
        if terminal {
            bar.set_message(line);
            bar.tick();
        } else if started.elapsed().as_secs().is_multiple_of(5) {
            eprintln!("[{:>4.0}s] {line}", started.elapsed().as_secs_f64());
        }
    }
}

pub(super) struct Recorder {
    state: Mutex<RecorderState>,
    pub(super) labels_dropped: AtomicU64,
}

struct RecorderState {
    latency_us: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl Recorder {
    pub(super) fn new() -> Self {
        let latency_us = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        let state = Mutex::new(RecorderState { latency_us, ok: 0, errors: BTreeMap::new() });
        Self { state, labels_dropped: AtomicU64::new(0) }
    }

    fn record(&self, latency: Duration, outcome: Result<(), String>) {
        let mut state = self.state.lock();
        state.latency_us.saturating_record(latency.as_micros().max(1) as u64);
        match outcome {
            Ok(()) => state.ok += 1,
            Err(kind) => *state.errors.entry(kind).or_default() += 1,
        }
    }

    fn snapshot(&self) -> (u64, u64, f64) {
        let state = self.state.lock();
        let errors: u64 = state.errors.values().sum();
        (state.ok + errors, errors, state.latency_us.value_at_quantile(0.99) as f64 / 1000.0)
    }

    pub(super) fn summary(&self, mode: String, elapsed: Duration, args: &LoadtestArgs) -> Summary {
        let state = self.state.lock();
        let h = &state.latency_us;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let errors: u64 = state.errors.values().sum();
        let requests = state.ok + errors;
        let seconds = elapsed.as_secs_f64();
        let mut summary = Summary {
            mode,
            requests,
            ok: state.ok,
            errors,
            error_rate: if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
            seconds,
            rps: requests as f64 / seconds.max(1e-9),
            latency_ms: Latencies {
                p50: ms(0.5),
                p90: ms(0.9),
                p99: ms(0.99),
                p999: ms(0.999),
                max: h.max() as f64 / 1000.0,
                mean: h.mean() / 1000.0,
            },
            errors_by_kind: state.errors.clone(),
            feedback: None,
            slo_violations: Vec::new(),
            latency_buckets_us: h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect(),
        };
        if let Some(max) = args.max_p99_ms
            && summary.latency_ms.p99 > max
        {
            summary.slo_violations.push(format!("p99 {:.3} ms > --max-p99-ms {max}", summary.latency_ms.p99));
        }
        if let Some(max) = args.max_error_rate
            && summary.error_rate > max
        {
            summary.slo_violations.push(format!("error rate {:.4} > --max-error-rate {max}", summary.error_rate));
        }
        if let Some(min) = args.min_rps
            && summary.rps < min
        {
            summary.slo_violations.push(format!("{:.0} req/s < --min-rps {min}", summary.rps));
        }
        if requests == 0 {
            summary.slo_violations.push("no request completed".to_owned());
        }
        summary
    }
}
