//! Metric names, buckets and the Prometheus recorder, in one place.
//!
//! Labels are small fixed sets: model and version (from configuration, never from the request), the
//! backend, and an outcome from `ErrorKind::label`. Gateway time (`request_duration`) and model time
//! (`model_duration`) are separate histograms, so overhead is their difference.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "gauntlet_inference_requests_total";
pub const REQUEST_DURATION: &str = "gauntlet_inference_request_duration_seconds";
pub const MODEL_DURATION: &str = "gauntlet_model_inference_duration_seconds";
pub const BATCH_ROWS: &str = "gauntlet_batch_rows";
pub const REQUESTS_BY_PROTOCOL: &str = "gauntlet_inference_requests_by_protocol_total";
pub const REJECTED: &str = "gauntlet_requests_rejected_total";
pub const MODEL_LOADED: &str = "gauntlet_model_version_loaded";
pub const MODEL_LOAD_FAILURES: &str = "gauntlet_model_version_load_failures_total";
pub const SHADOW_RESULTS: &str = "gauntlet_shadow_results_total";
pub const SHADOW_RECORDS: &str = "gauntlet_shadow_records_total";
pub const SHADOW_COVERAGE: &str = "gauntlet_shadow_coverage_ratio";
pub const OUTCOME_RECORDS: &str = "gauntlet_outcome_records_total";
pub const OUTCOME_WRITE_ERRORS: &str = "gauntlet_outcome_write_errors_total";
pub const OUTCOME_FILES_REPAIRED: &str = "gauntlet_outcome_files_repaired_total";
pub const FEEDBACK: &str = "gauntlet_feedback_total";
pub const COMPARISON_DROPPED: &str = "gauntlet_comparison_records_dropped_total";
pub const REPOSITORY_FETCHED_BYTES: &str = "gauntlet_repository_fetched_bytes_total";
pub const REPOSITORY_FETCHES: &str = "gauntlet_repository_fetches_total";
pub const REPOSITORY_ALIAS_WRITES: &str = "gauntlet_repository_alias_writes_total";
pub const SLICES_OVERFLOW: &str = "gauntlet_slices_overflow_total";
pub const REPOSITORY_EVICTIONS: &str = "gauntlet_repository_cache_evictions_total";
pub const COMPARISON_MODEL: &str = "gauntlet_comparison_model_metric";
pub const COMPARISON_LABELLED: &str = "gauntlet_comparison_labelled_pairs";
pub const COMPARISON_AGREEMENT: &str = "gauntlet_comparison_agreement_ratio";
pub const COMPARISON_IMPROVEMENT: &str = "gauntlet_comparison_improvement";
pub const COMPARISON_P_VALUE: &str = "gauntlet_comparison_p_value";
pub const COMPARISON_SEQUENTIAL_P_VALUE: &str = "gauntlet_comparison_sequential_p_value";
pub const DRIFT_PSI: &str = "gauntlet_drift_psi";
pub const DRIFT_KS: &str = "gauntlet_drift_ks";
pub const DRIFT_STATE: &str = "gauntlet_drift_state";
pub const DRIFT_ALERTING: &str = "gauntlet_drift_alerting";
pub const DRIFT_WINDOW_ROWS: &str = "gauntlet_drift_window_rows";
pub const DRIFT_CHAMPION: &str = "gauntlet_drift_champion_metric";
pub const DRIFT_CHAMPION_HOLDOUT: &str = "gauntlet_drift_champion_holdout_metric";
pub const DRIFT_TRANSITIONS: &str = "gauntlet_drift_alert_transitions_total";
pub const DRIFT_SAMPLES_DROPPED: &str = "gauntlet_drift_samples_dropped_total";
pub const DRIFT_WEBHOOK: &str = "gauntlet_drift_webhook_events_total";
pub const CLUSTER_STORE_UP: &str = "gauntlet_cluster_store_up";
pub const CLUSTER_CONVERGED: &str = "gauntlet_cluster_converged";
pub const CLUSTER_REVISION: &str = "gauntlet_cluster_deployment_revision";
pub const CLUSTER_FOLLOW_FAILURES: &str = "gauntlet_cluster_follow_failures_total";
pub const CLUSTER_FORWARDED: &str = "gauntlet_cluster_forwarded_total";
pub const CLUSTER_SPOOL_BYTES: &str = "gauntlet_cluster_spool_bytes";
pub const CLUSTER_SPOOL_DROPPED: &str = "gauntlet_cluster_spool_dropped_total";
pub const CHECKPOINTS: &str = "gauntlet_checkpoints_total";
pub const CHECKPOINT_BYTES: &str = "gauntlet_checkpoint_bytes";
pub const CHECKPOINT_SECONDS: &str = "gauntlet_checkpoint_seconds";
pub const TLS_RELOADS: &str = "gauntlet_tls_reloads_total";
pub const BUILD_INFO: &str = "gauntlet_build_info";

/// From 25 µs (a one-row linear model) to 10 s (the default request timeout).
const BUCKETS: [f64; 18] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Rows per batched call: powers of two up to the largest shadow batch.
const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// The process-wide Prometheus recorder, installed on first use (several gateways in one test
/// process share it).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
            .expect("BUCKETS is not empty")
            .set_buckets_for_metric(Matcher::Full(BATCH_ROWS.into()), &BATCH_BUCKETS)
            .expect("BATCH_BUCKETS is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first, and then that one records.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

fn describe() {
    describe_counter!(REQUESTS, "Inference requests by model, version and outcome.");
    describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Inference request time inside the gateway: decode, model, encode."
    );
    describe_counter!(REQUESTS_BY_PROTOCOL, "Inference requests by the protocol they came in by (rest, grpc).");
    describe_histogram!(
        MODEL_DURATION,
        metrics::Unit::Seconds,
        "Time in the model's backend alone, per call (a batch of requests is one call)."
    );
    describe_histogram!(
        BATCH_ROWS,
        "Rows per model call, by path: champion (requests run together by [models.x.batching]) or shadow."
    );
    describe_counter!(
        REJECTED,
        "Requests refused before reaching a model, by kind (overloaded, invalid_input, not_found, ...)."
    );
    describe_gauge!(MODEL_LOADED, "1 for each loaded model version, by role and backend.");
    describe_counter!(MODEL_LOAD_FAILURES, "Model versions refused at load, by step.");
    describe_counter!(
        SHADOW_RESULTS,
        "Shadow scorings by model, version and status (ok, error, panic, timeout, shed)."
    );
    describe_counter!(SHADOW_RECORDS, "Paired records by model; complete=true when every version finished.");
    describe_gauge!(SHADOW_COVERAGE, "Share of shadowed requests, since start, in which every version finished.");
    describe_counter!(OUTCOME_RECORDS, "Outcome records by result: written, dropped (queue full), lost (disk error).");
    describe_counter!(OUTCOME_WRITE_ERRORS, "Disk errors of the outcome log; serving goes on.");
    describe_counter!(OUTCOME_FILES_REPAIRED, "Outcome files whose torn last line was cut at start.");
    describe_counter!(
        FEEDBACK,
        "Ground-truth labels by model and result: joined, joined_late, held, duplicate, expired, unknown."
    );
    describe_counter!(COMPARISON_DROPPED, "Paired records the comparison could not take (its queue was full).");
    describe_counter!(
        REPOSITORY_FETCHES,
        "Model files fetched from object storage or MLflow into the cache (verified)."
    );
    describe_counter!(
        SLICES_OVERFLOW,
        "Shadowed requests whose slice value was beyond max_slices distinct values, recorded in the slice other."
    );
    describe_counter!(
        REPOSITORY_ALIAS_WRITES,
        "Champion aliases written back to the MLflow registry after a promotion or rollback, by result (ok, failed)."
    );
    describe_counter!(REPOSITORY_FETCHED_BYTES, "Bytes of model files fetched from object storage.");
    describe_counter!(REPOSITORY_EVICTIONS, "Model files the repository cache evicted to stay within its bound.");
    describe_gauge!(COMPARISON_MODEL, "Each version's accuracy (classification) or MAE (regression) on labelled rows.");
    describe_gauge!(COMPARISON_LABELLED, "Labelled pairs of champion and challenger.");
    describe_gauge!(COMPARISON_AGREEMENT, "Share of rows on which champion and challenger agree.");
    describe_gauge!(COMPARISON_IMPROVEMENT, "Challenger's improvement over the champion (accuracy, or MAE saved).");
    describe_gauge!(COMPARISON_P_VALUE, "Two-sided p-value of the paired test (fixed-sample: read once).");
    describe_gauge!(COMPARISON_SEQUENTIAL_P_VALUE, "Always-valid p-value (mixture SPRT): safe to watch continuously.");
    describe_gauge!(
        DRIFT_PSI,
        "Population stability index of a feature or prediction against the training profile, per window."
    );
    describe_gauge!(
        DRIFT_KS,
        "Kolmogorov-Smirnov statistic of a numeric feature or prediction against the training profile, per window."
    );
    describe_gauge!(DRIFT_STATE, "Worst drift level of the deployment: -1 insufficient data, 0 ok, 1 warn, 2 alert.");
    describe_gauge!(DRIFT_ALERTING, "1 while the deployment is in the drift alert state (left when back under warn).");
    describe_gauge!(DRIFT_WINDOW_ROWS, "Rows in each drift window.");
    describe_gauge!(DRIFT_CHAMPION, "The champion's accuracy or MAE over each window's labelled rows (concept drift).");
    describe_gauge!(DRIFT_CHAMPION_HOLDOUT, "The champion's accuracy or MAE on the holdout rows, from its manifest.");
    describe_counter!(DRIFT_TRANSITIONS, "Entries into and exits from the drift alert state.");
    describe_counter!(DRIFT_SAMPLES_DROPPED, "Drift samples dropped because the monitor's queue was full.");
    describe_counter!(
        DRIFT_WEBHOOK,
        "Drift webhook events: delivered, retried, failed, dropped (queue full), abandoned (shutdown)."
    );
    describe_gauge!(CLUSTER_STORE_UP, "1 while this replica's follower is connected to the cluster store.");
    describe_gauge!(
        CLUSTER_CONVERGED,
        "1 when this replica serves the cluster store's latest revision of every model it has."
    );
    describe_gauge!(
        CLUSTER_REVISION,
        "The cluster store's revision of each model's deployment that this replica serves."
    );
    describe_counter!(
        CLUSTER_FOLLOW_FAILURES,
        "Revisions from the cluster store this replica could not apply, by model."
    );
    describe_counter!(
        CLUSTER_FORWARDED,
        "Lines of the outcome log loaded into the cluster store, by kind (record, label, unreadable)."
    );
    describe_gauge!(CLUSTER_SPOOL_BYTES, "Bytes of the outcome log not yet in the cluster store.");
    describe_counter!(CHECKPOINTS, "Checkpoints of the comparison written (the analyst's, or one node's).");
    describe_gauge!(CHECKPOINT_BYTES, "Size of the latest checkpoint of the comparison.");
    describe_counter!(
        TLS_RELOADS,
        "Times a listener read its changed TLS files again, by result (ok, failed: the previous ones still serve)."
    );
    describe_gauge!(CHECKPOINT_SECONDS, "Time the latest checkpoint of the comparison took to encode and write.");
    describe_counter!(
        CLUSTER_SPOOL_DROPPED,
        "Lines of the outcome log given up on for the cluster store (the spool was past cluster.spool_bytes)."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the gateway's version as a label.");
}

/// Pre-registered handles for one model version's successful requests: the hot path touches no
/// registry lookup or label allocation.
#[derive(Clone)]
pub struct VersionMetrics {
    model: String,
    version: String,
    ok: Counter,
    ok_duration: Histogram,
    model_duration: Histogram,
    /// Rows per call: requests batched on the pool (champion), a challenger's scored batches (shadow).
    batch_rows: [Histogram; 2],
    /// Shadow results by status, in `SHADOW_STATUSES` order.
    shadow: Vec<Counter>,
}

/// The statuses of a shadow result, in the order `VersionMetrics::shadow` indexes them.
pub const SHADOW_STATUSES: [&str; 5] = ["ok", "error", "panic", "timeout", "shed"];

impl VersionMetrics {
    pub fn new(model: &str, version: &str, backend: &str) -> Self {
        let labels = |outcome: &'static str| {
            [("model", model.to_owned()), ("version", version.to_owned()), ("outcome", outcome.to_owned())]
        };
        Self {
            model: model.to_owned(),
            version: version.to_owned(),
            ok: counter!(REQUESTS, &labels("ok")),
            ok_duration: histogram!(REQUEST_DURATION, &labels("ok")),
            model_duration: histogram!(MODEL_DURATION, "model" => model.to_owned(), "version" => version.to_owned(), "backend" => backend.to_owned()),
            batch_rows: ["champion", "shadow"]
                .map(|path| histogram!(BATCH_ROWS, "model" => model.to_owned(), "version" => version.to_owned(), "path" => path)),
            shadow: SHADOW_STATUSES
                .iter()
                .map(|&status| counter!(SHADOW_RESULTS, "model" => model.to_owned(), "version" => version.to_owned(), "status" => status))
                .collect(),
        }
    }

    pub fn model_time(&self, elapsed: Duration) {
        self.model_duration.record(elapsed);
    }

    /// A batched call of `rows` rows on the request path (pool requests run together).
    pub fn batch(&self, rows: usize) {
        self.batch_rows[0].record(rows as f64);
    }

    /// A challenger's scored batch of `rows` rows.
    pub fn shadow_batch(&self, rows: usize) {
        self.batch_rows[1].record(rows as f64);
    }

    pub fn request_ok(&self, elapsed: Duration) {
        self.ok.increment(1);
        self.ok_duration.record(elapsed);
    }

    /// A request to this version that failed (rare: the labels are built here).
    pub fn request_failed(&self, outcome: &'static str, elapsed: Duration) {
        let labels =
            [("model", self.model.clone()), ("version", self.version.clone()), ("outcome", outcome.to_owned())];
        counter!(REQUESTS, &labels).increment(1);
        histogram!(REQUEST_DURATION, &labels).record(elapsed);
    }

    /// This version's shadow result counter for `status` (pre-registered: see `ShadowCounters`).
    pub fn shadow(&self, status: usize) -> &Counter {
        &self.shadow[status]
    }

    /// 1 for the version's current role (`None`: unloaded), 0 for the others.
    pub fn loaded(&self, backend: &str, role: Option<&'static str>) {
        for r in ["champion", "challenger", "available"] {
            let value = if Some(r) == role { 1.0 } else { 0.0 };
            gauge!(MODEL_LOADED, "model" => self.model.clone(), "version" => self.version.clone(), "backend" => backend.to_owned(), "role" => r).set(value);
        }
    }
}

/// A request refused before a model version was chosen (unknown model, overload, bad body).
/// The counter of inference requests that came in by `protocol` (`inference` keeps one per protocol).
pub fn requests_by_protocol(protocol: &'static str) -> Counter {
    counter!(REQUESTS_BY_PROTOCOL, "protocol" => protocol)
}

pub fn rejected(kind: &'static str) {
    counter!(REJECTED, "kind" => kind).increment(1);
}

pub fn load_failed(model: &str, step: &'static str) {
    counter!(MODEL_LOAD_FAILURES, "model" => model.to_owned(), "step" => step).increment(1);
}

/// One model's shadow coverage: shadowed requests, and those in which every version finished.
/// Atomics and pre-registered handles only: request threads update it too.
pub struct ShadowCoverage {
    shadowed: std::sync::atomic::AtomicU64,
    complete: std::sync::atomic::AtomicU64,
    complete_counter: Counter,
    incomplete_counter: Counter,
    ratio: metrics::Gauge,
}

impl ShadowCoverage {
    pub fn new(model: &str) -> Self {
        Self {
            shadowed: Default::default(),
            complete: Default::default(),
            complete_counter: counter!(SHADOW_RECORDS, "model" => model.to_owned(), "complete" => "true"),
            incomplete_counter: counter!(SHADOW_RECORDS, "model" => model.to_owned(), "complete" => "false"),
            ratio: gauge!(SHADOW_COVERAGE, "model" => model.to_owned()),
        }
    }

    pub fn record(&self, complete: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let shadowed = self.shadowed.fetch_add(1, Relaxed) + 1;
        let complete_total =
            if complete { self.complete.fetch_add(1, Relaxed) + 1 } else { self.complete.load(Relaxed) };
        if complete { &self.complete_counter } else { &self.incomplete_counter }.increment(1);
        self.ratio.set(complete_total as f64 / shadowed as f64);
    }
}

pub fn outcome_records(result: &'static str, n: u64) {
    outcome_records_counter(result).increment(n);
}

/// The handle behind `outcome_records`, for a caller that counts once a record.
pub fn outcome_records_counter(result: &'static str) -> Counter {
    counter!(OUTCOME_RECORDS, "result" => result)
}

pub fn outcome_write_error() {
    counter!(OUTCOME_WRITE_ERRORS).increment(1);
}

pub fn outcome_files_repaired(n: usize) {
    counter!(OUTCOME_FILES_REPAIRED).increment(n as u64);
}

pub fn feedback(model: &str, result: &'static str) {
    counter!(FEEDBACK, "model" => model.to_owned(), "result" => result).increment(1);
}

/// A checkpoint of the comparison was written, `bytes` long.
pub fn checkpoint_written(bytes: usize, took: std::time::Duration) {
    counter!(CHECKPOINTS).increment(1);
    gauge!(CHECKPOINT_BYTES).set(bytes as f64);
    gauge!(CHECKPOINT_SECONDS).set(took.as_secs_f64());
}

/// A model file fetched from object storage, `bytes` long.
pub fn repository_fetched(bytes: u64) {
    counter!(REPOSITORY_FETCHES).increment(1);
    counter!(REPOSITORY_FETCHED_BYTES).increment(bytes);
}

/// A file the repository cache evicted.
pub fn slice_overflowed() {
    counter!(SLICES_OVERFLOW).increment(1);
}

pub fn repository_alias_written(ok: bool) {
    counter!(REPOSITORY_ALIAS_WRITES, "result" => if ok { "ok" } else { "failed" }).increment(1);
}

pub fn repository_evicted() {
    counter!(REPOSITORY_EVICTIONS).increment(1);
}

pub fn comparison_records_dropped() {
    counter!(COMPARISON_DROPPED).increment(1);
}

/// The counter of drift samples the monitor's queue could not take.
pub fn drift_samples_dropped() -> Counter {
    counter!(DRIFT_SAMPLES_DROPPED)
}

pub fn drift_transition(model: &str, entered: bool) {
    let transition = if entered { "entered" } else { "left" };
    counter!(DRIFT_TRANSITIONS, "model" => model.to_owned(), "transition" => transition).increment(1);
}

/// A webhook event's fate: delivered, retried (per extra try), failed, dropped or abandoned.
pub fn drift_webhook(result: &'static str) {
    counter!(DRIFT_WEBHOOK, "result" => result).increment(1);
}
