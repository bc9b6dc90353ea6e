//! The default of every key that has one (`#[serde(default = "defaults::…")]`).

use std::net::SocketAddr;
use std::path::PathBuf;

pub fn listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8000))
}
pub fn grpc_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 8001)))
}
pub fn models_dir() -> PathBuf {
    PathBuf::from("models")
}
pub fn max_request_bytes() -> usize {
    4 << 20
}
pub fn request_timeout_ms() -> u64 {
    10_000
}
pub fn max_concurrent_requests() -> usize {
    512
}
pub fn inference_queue() -> usize {
    256
}
pub fn inline_max_us() -> u64 {
    250
}
pub fn max_batch() -> usize {
    32
}
pub fn warmup_runs() -> usize {
    20
}
pub fn shutdown_grace_ms() -> u64 {
    10_000
}
pub fn header_read_timeout_ms() -> u64 {
    30_000
}
pub fn log_level() -> String {
    "info".to_owned()
}
pub fn shadow_threads() -> usize {
    1
}
pub fn shadow_queue() -> usize {
    8192
}
pub fn shadow_queue_bytes() -> u64 {
    256 << 20
}
pub fn shadow_deadline_ms() -> u64 {
    1000
}
pub fn shadow_cpu_budget() -> f64 {
    0.05
}
pub fn shadow_sample_rate() -> f64 {
    1.0
}
pub fn state_dir() -> PathBuf {
    PathBuf::from("state")
}
pub fn outcomes_dir() -> PathBuf {
    PathBuf::from("outcomes")
}
pub fn outcomes_queue() -> usize {
    16_384
}
pub fn flush_interval_ms() -> u64 {
    1000
}
pub fn rotate_bytes() -> u64 {
    64 << 20
}
pub fn rotate_age_s() -> u64 {
    3600
}
