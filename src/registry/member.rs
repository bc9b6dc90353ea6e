//! A deployment member's part in a request: the role it plays, and what became of its run when it
//! shadowed one. Records, the comparison, drift and the shadow's metrics all speak these.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Champion,
    Challenger,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Self::Champion => "champion",
            Self::Challenger => "challenger",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// The model returned an error.
    Error,
    /// The model panicked.
    Panic,
    /// It did not finish within the shadow deadline.
    Timeout,
    /// Shadow capacity was full: it never ran.
    Shed,
}

impl Status {
    /// Position in `metrics::SHADOW_STATUSES`.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Panic => "panic",
            Self::Timeout => "timeout",
            Self::Shed => "shed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_indexes_match_the_metric_labels() {
        for status in [Status::Ok, Status::Error, Status::Panic, Status::Timeout, Status::Shed] {
            assert_eq!(crate::metrics::SHADOW_STATUSES[status.index()], status.label());
        }
    }
}
