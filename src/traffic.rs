//! Per request: who answers (the champion, or a canary's share), whether challengers shadow it,
//! and which slice (segment) its record falls in.
//!
//! Invariants: no I/O; the slicer's set of keys is bounded (`max_slices`, the rest is `other`); the same request id gives the same decision on every replica
//! and every release, because the hash is fixed here (FNV-1a 64 with a splitmix64 finaliser), not
//! the standard library's randomly seeded one. Sampling and canary use different salts, so whether
//! a request is shadowed says nothing of whether it is a canary.

use std::collections::HashSet;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::repository::VersionId;

/// `[models.<name>.slices]`: the segments the comparison is broken down by.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SliceSettings {
    /// A request header (REST) or metadata entry (gRPC) whose value names the slice, such as
    /// `x-region`; a request without it falls in the slice `(no <header>)`.
    pub header: Option<String>,
    /// Distinct slices at most, per model and replica; the values beyond them fall in `other`,
    /// counted (`gauntlet_slices_overflow_total`).
    pub max_slices: usize,
}

impl Default for SliceSettings {
    fn default() -> Self {
        Self { header: None, max_slices: 20 }
    }
}

/// The longest slice key kept: a header value beyond it is cut (on a character boundary).
pub const MAX_SLICE_BYTES: usize = 64;
/// Where the values beyond `max_slices` go.
pub const OTHER_SLICE: &str = "other";

/// One model's slicer: the slice key of a request, from its header, out of a bounded set.
#[derive(Debug)]
pub struct Slicer {
    header: String,
    /// `(no <header>)`: computed once.
    absent: String,
    max: usize,
    seen: RwLock<HashSet<String>>,
}

impl Slicer {
    /// `None` when the settings name no source of slices.
    pub fn new(settings: &SliceSettings) -> Option<Self> {
        let header = settings.header.as_ref()?.to_ascii_lowercase();
        Some(Self {
            absent: format!("(no {header})"),
            header,
            max: settings.max_slices.max(1),
            seen: RwLock::default(),
        })
    }

    /// The header (or metadata entry) it reads.
    pub fn header(&self) -> &str {
        &self.header
    }

    /// The slice of a request whose header is `value`: its value (cut to `MAX_SLICE_BYTES`),
    /// `(no <header>)` without one, or `other` once `max_slices` distinct values were seen.
    pub fn key(&self, value: Option<&str>) -> String {
        let Some(value) = value else { return self.absent.clone() };
        let mut end = value.len().min(MAX_SLICE_BYTES);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        let value = &value[..end];
        if self.seen.read().contains(value) {
            return value.to_owned();
        }
        let mut seen = self.seen.write();
        if seen.contains(value) || seen.len() < self.max {
            seen.insert(value.to_owned());
            return value.to_owned();
        }
        crate::metrics::slice_overflowed();
        OTHER_SLICE.to_owned()
    }
}

/// A deployment's traffic settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrafficPlan {
    /// Share of requests, in [0, 1], that challengers shadow.
    pub shadow_sample_rate: f64,
    pub canary: Option<Canary>,
}

/// A challenger answering a share of requests instead of the champion.
#[derive(Clone, Debug, PartialEq)]
pub struct Canary {
    pub version: VersionId,
    /// Share of requests, in [0, 1].
    pub share: f64,
}

/// Who answers one request, and whether the others shadow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The canary answers instead of the champion (the deployment knows which version that is).
    pub canary: bool,
    pub shadow: bool,
}

const SHADOW_SALT: &str = "gauntlet/shadow/v1";
const CANARY_SALT: &str = "gauntlet/canary/v1";

impl TrafficPlan {
    /// `request_id` decides sampling; `canary_key` (a client-chosen key such as a user id) decides
    /// the canary when given, else the request id does, so a user can be kept on one version.
    pub fn decide(&self, request_id: &str, canary_key: Option<&str>) -> Decision {
        let canary =
            self.canary.as_ref().is_some_and(|c| in_share(c.share, CANARY_SALT, canary_key.unwrap_or(request_id)));
        let shadow = in_share(self.shadow_sample_rate, SHADOW_SALT, request_id);
        Decision { canary, shadow }
    }
}

/// Whether `key` falls in the first `share` of [0, 1) under `salt`. A share of 1 (the default
/// sampling) or 0 needs no hash: on the request path at 100% sampling the hash was about 800
/// instructions, 1.5% of a request.
fn in_share(share: f64, salt: &str, key: &str) -> bool {
    if share >= 1.0 {
        return true;
    }
    share > 0.0 && unit_interval(salt, key) < share
}

/// A stable hash of `key` under `salt`, mapped uniformly onto [0, 1).
pub fn unit_interval(salt: &str, key: &str) -> f64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in salt.bytes().chain([0xff]).chain(key.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    // splitmix64's finaliser: FNV's low bits are weak on short, similar keys ("req-1", "req-2").
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    // The top 53 bits fill an f64 mantissa exactly.
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn plan(rate: f64, canary_share: Option<f64>) -> TrafficPlan {
        TrafficPlan {
            shadow_sample_rate: rate,
            canary: canary_share.map(|share| Canary { version: VersionId::new("2"), share }),
        }
    }

    #[test]
    fn the_hash_is_fixed_across_releases() {
        // Changing these values re-buckets every request in every running deployment: don't.
        assert_ne!(unit_interval("s", "a"), unit_interval("t", "a"));
        let golden = unit_interval(SHADOW_SALT, "req-1");
        assert!((golden - 0.719_426_980_525_656_3).abs() < 1e-15, "{golden}");
    }

    #[test]
    fn rates_of_zero_and_one_are_exact() {
        for i in 0..1000 {
            let id = format!("r{i}");
            assert!(!plan(0.0, Some(0.0)).decide(&id, None).shadow);
            assert!(plan(1.0, None).decide(&id, None).shadow);
            assert!(plan(0.0, Some(1.0)).decide(&id, None).canary);
            assert!(!plan(0.0, Some(0.0)).decide(&id, None).canary);
        }
    }

    #[test]
    fn shares_follow_their_settings() {
        // 100,000 sequential ids: the share sampled is within 5 standard errors of each setting.
        let n = 100_000;
        for rate in [0.01, 0.1, 0.5, 0.9] {
            let p = plan(rate, Some(rate));
            let (mut shadowed, mut canaries) = (0, 0);
            for i in 0..n {
                let d = p.decide(&format!("req-{i}"), None);
                shadowed += usize::from(d.shadow);
                canaries += usize::from(d.canary);
            }
            let margin = 5.0 * (rate * (1.0 - rate) / n as f64).sqrt();
            for share in [shadowed, canaries] {
                let observed = share as f64 / n as f64;
                assert!((observed - rate).abs() < margin, "rate {rate}: observed {observed}");
            }
        }
    }

    #[test]
    fn sampling_and_canary_are_independent() {
        let p = plan(0.5, Some(0.5));
        let n = 40_000;
        let both =
            (0..n).filter(|i| p.decide(&format!("id{i}"), None) == Decision { canary: true, shadow: true }).count();
        let observed = both as f64 / n as f64;
        assert!((observed - 0.25).abs() < 5.0 * (0.25f64 * 0.75 / n as f64).sqrt(), "{observed}");
    }

    proptest! {
        #[test]
        fn a_decision_depends_on_the_request_id_or_key_alone(id in ".{0,64}", key in proptest::option::of(".{0,16}"), rate in 0.0f64..=1.0, share in 0.0f64..=1.0) {
            // Nothing but the fixed hash of the id (or the client's key) decides: no state, no
            // process seed, so every replica and release decides alike.
            let decision = plan(rate, Some(share)).decide(&id, key.as_deref());
            let canary_key = key.as_deref().unwrap_or(&id);
            prop_assert_eq!(decision.shadow, rate >= 1.0 || unit_interval(SHADOW_SALT, &id) < rate);
            prop_assert_eq!(decision.canary, share >= 1.0 || unit_interval(CANARY_SALT, canary_key) < share);
        }

        #[test]
        fn sampling_is_monotone_in_the_rate(id in ".{0,64}", low in 0.0f64..=1.0, high in 0.0f64..=1.0) {
            // A request sampled at some rate is sampled at every higher rate: raising the rate only adds requests.
            let (low, high) = if low <= high { (low, high) } else { (high, low) };
            prop_assert!(!plan(low, None).decide(&id, None).shadow || plan(high, None).decide(&id, None).shadow);
        }

        #[test]
        fn the_shortcuts_at_the_ends_decide_as_the_hash_does(id in ".{0,64}", share in prop_oneof![Just(0.0), Just(1.0), Just(1.5), 0.0f64..=1.0]) {
            prop_assert_eq!(in_share(share, SHADOW_SALT, &id), unit_interval(SHADOW_SALT, &id) < share);
        }

        #[test]
        fn a_canary_key_keeps_a_client_on_one_version(key in ".{1,32}", a in ".{0,32}", b in ".{0,32}", share in 0.0f64..=1.0) {
            let p = plan(0.0, Some(share));
            prop_assert_eq!(p.decide(&a, Some(&key)).canary, p.decide(&b, Some(&key)).canary);
        }
    }
}
