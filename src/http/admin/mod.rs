//! The admin API under `/admin`: what data scientists and operators ask of a running gateway, by
//! resource: `models` (what is deployed), `repository` (searching every version), `changes` (promote, roll back, challengers, load, unload),
//! `reports` (the comparison and drift), `cluster` (the replicas sharing the deployments).
//!
//! Access: reading needs the `read` scope, changing the `change` scope (`crate::auth`, checked by
//! the router before these handlers run).

pub mod changes;
pub mod cluster;
pub mod models;
pub mod reports;
pub mod repository;
