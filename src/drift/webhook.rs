//! Alert events, POSTed as JSON to the configured URL: the hook a team points at its retraining
//! pipeline.
//!
//! Invariants: never on the request path (the monitor thread hands events over without waiting);
//! bounded (a full queue drops the event, counted); each event is tried `webhook_attempts` times
//! with doubling backoff, then given up (counted). Every try carries the event's id as
//! `Idempotency-Key`, so a receiver can tell a retry from a new event. A 4xx other than 408 and 429
//! is not retried: the receiver refused the event itself.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::DriftSettings;
use super::report::DriftReport;
use super::window::Transition;
use crate::background::{self, Closing, Priority, Work, Worker};

/// One event: a deployment entered or left the alert state.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub id: String,
    /// `drift.alert` or `drift.resolved`.
    pub event: &'static str,
    pub model: String,
    pub version: Option<String>,
    #[serde(serialize_with = "crate::json::rfc3339::serialize")]
    pub at: SystemTime,
    /// The series at the alert level when the alert began (empty when it ends).
    pub drifted: Vec<String>,
    pub report: DriftReport,
}

impl Event {
    pub fn new(transition: Transition, report: &DriftReport) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            event: match transition {
                Transition::Entered => "drift.alert",
                Transition::Left => "drift.resolved",
            },
            model: report.model.clone(),
            version: report.version.clone(),
            at: SystemTime::now(),
            drifted: report.drifted.clone(),
            report: report.clone(),
        }
    }
}

pub struct Webhook {
    worker: Worker<Event>,
}

struct Delivery {
    url: String,
    bearer: Option<String>,
    client: reqwest::Client,
    attempts: u32,
    backoff: Duration,
    /// Runs each delivery's requests and backoff on the webhook's own thread.
    runtime: tokio::runtime::Runtime,
}

/// How long the webhook thread sleeps while no event waits: 10 ms, up to 100 ms.
const POLL: Duration = Duration::from_millis(10);
const POLL_IDLE: Duration = Duration::from_millis(100);

impl Webhook {
    pub fn start(url: String, settings: &DriftSettings) -> std::io::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.webhook_timeout_ms))
            .user_agent(concat!("gauntlet/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(std::io::Error::other)?;
        let delivery = Delivery {
            url,
            bearer: settings.webhook_bearer_token.as_ref().map(|t| t.expose().to_owned()),
            client,
            attempts: settings.webhook_attempts.max(1),
            backoff: Duration::from_millis(settings.webhook_backoff_ms),
            runtime: tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        };
        let thread = background::Settings {
            name: "drift-webhook",
            threads: 1,
            queue: settings.webhook_queue,
            batch: 1,
            priority: Priority::Low,
            poll: POLL,
            poll_idle: POLL_IDLE,
        };
        let worker = Worker::start_one(thread, delivery)?;
        Ok(Self { worker })
    }

    /// Queues without waiting; a full queue drops the event (counted).
    pub fn send(&self, event: Event) {
        if let Err(event) = self.worker.try_send(event) {
            tracing::warn!(model = event.model, event = event.event, "drift webhook queue full: event dropped");
            crate::metrics::drift_webhook("dropped");
        }
    }

    /// Ends retries, lets the current try finish, and stops. Events still queued are given up (counted).
    pub fn close(&self) {
        self.worker.close();
    }
}

impl Work for Delivery {
    type Message = Event;

    fn handle(&mut self, events: &mut Vec<Event>, closing: &Closing) {
        for event in events.drain(..) {
            if closing.is_closing() {
                tracing::warn!(model = event.model, event = event.event, "shutting down: drift event not sent");
                crate::metrics::drift_webhook("abandoned");
                continue;
            }
            self.runtime.block_on(self.deliver(&event, closing));
        }
    }
}

impl Delivery {
    async fn deliver(&self, event: &Event, closing: &Closing) {
        let mut wait = self.backoff;
        for attempt in 1..=self.attempts {
            let mut request = self.client.post(&self.url).header("idempotency-key", &event.id).json(event);
            if let Some(token) = &self.bearer {
                request = request.bearer_auth(token);
            }
            let sent = request.send().await;
            let retry = match sent {
                Ok(response) if response.status().is_success() => {
                    tracing::info!(model = event.model, event = event.event, attempt, "drift event delivered");
                    crate::metrics::drift_webhook("delivered");
                    return;
                }
                Ok(response) => {
                    let status = response.status();
                    tracing::warn!(model = event.model, event = event.event, attempt, %status, "drift webhook refused the event");
                    status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429
                }
                Err(error) => {
                    tracing::warn!(model = event.model, event = event.event, attempt, %error, "drift webhook unreachable");
                    true
                }
            };
            if !retry || attempt == self.attempts {
                break;
            }
            crate::metrics::drift_webhook("retried");
            if !back_off(wait, closing).await {
                tracing::warn!(model = event.model, event = event.event, "shutting down: drift event not retried");
                crate::metrics::drift_webhook("abandoned");
                return;
            }
            wait = (wait * 2).min(Duration::from_secs(60));
        }
        crate::metrics::drift_webhook("failed");
    }
}

/// Waits `wait` unless shutdown begins first (then returns false at once, so a backoff of up to a
/// minute cannot hold up shutdown).
async fn back_off(wait: Duration, closing: &Closing) -> bool {
    let until = tokio::time::Instant::now() + wait;
    loop {
        if closing.is_closing() {
            return false;
        }
        let now = tokio::time::Instant::now();
        if now >= until {
            return true;
        }
        tokio::time::sleep((until - now).min(Duration::from_millis(50))).await;
    }
}
