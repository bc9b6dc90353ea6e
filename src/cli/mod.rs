//! The commands besides `serve`: what data scientists run against a running gateway or its logs
//! (`admin`: status, promote, rollback, load, unload, report), and `loadtest`.

pub mod admin;
pub mod loadtest;
