//! Comparison of champion and challengers over paired outcomes.

pub mod stats;
