//! gauntlet: a champion-challenger model-serving gateway for ONNX models.
//!
//! This file only declares the modules and re-exports what `main.rs`, tests and embedders call:
//! `run(config, shutdown)` is the whole server (`server`). ARCHITECTURE.md maps the modules and
//! their invariants.

#![forbid(unsafe_code)]

pub mod analyst;
pub mod auth;
pub mod background;
pub mod cli;
pub mod cluster;
pub mod compare;
pub mod config;
pub mod drift;
pub mod error;
pub mod executor;
pub mod grpc;
pub mod history;
pub mod http;
pub mod inference;
pub mod join;
mod json;
pub mod metrics;
pub mod model;
pub mod outcomes;
pub mod promotion;
pub mod registry;
pub mod repository;
pub mod secret;
pub mod server;
pub mod shadow;
pub mod tls;
pub mod traffic;

pub use inference::{Gateway, ServerOptions};
pub use server::{Server, init_tracing, run, shutdown_signal};
