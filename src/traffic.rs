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

use crate::model::Tensor;
use crate::repository::profile::Distribution;
use crate::repository::{Manifest, VersionId};

/// `[models.<name>.slices]`: the segments the comparison is broken down by: a request header's
/// value, or the bin of one input feature.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SliceSettings {
    /// A request header (REST) or metadata entry (gRPC) whose value names the slice, such as
    /// `x-region`; a request without it falls in the slice `(no <header>)`.
    pub header: Option<String>,
    /// Or an input feature, by its name in the manifest's training profile (`mean radius`): the
    /// slice is the bin its value (the request's first row's) falls in.
    pub feature: Option<String>,
    /// The feature's bin edges, ascending; unset: `bins` quantile bins of its training profile.
    pub edges: Vec<f64>,
    pub bins: usize,
    /// Distinct slices at most, per model and replica; the values beyond them fall in `other`,
    /// counted (`gauntlet_slices_overflow_total`).
    pub max_slices: usize,
}

impl Default for SliceSettings {
    fn default() -> Self {
        Self { header: None, feature: None, edges: Vec::new(), bins: 4, max_slices: 20 }
    }
}

/// The longest slice key kept: a header value beyond it is cut (on a character boundary).
pub const MAX_SLICE_BYTES: usize = 64;
/// Where the values beyond `max_slices` go.
pub const OTHER_SLICE: &str = "other";

/// One model's slicer: the slice key of a shadowed request, out of a bounded set.
#[derive(Debug)]
pub struct Slicer {
    source: Source,
    max: usize,
    seen: RwLock<HashSet<String>>,
}

#[derive(Debug)]
enum Source {
    /// The header's name, and `(no <header>)`, computed once.
    Header { name: String, absent: String },
    /// Where the feature is in the inputs (tensor, column), its bin edges and each bin's name.
    Feature { tensor: usize, column: usize, edges: Vec<f64>, names: Vec<String> },
}

impl Slicer {
    /// `Ok(None)` when the settings name no source of slices; an error says what does not fit the
    /// model (`manifest`: the champion's, whose training profile names the features).
    pub fn new(settings: &SliceSettings, manifest: &Manifest) -> Result<Option<Self>, String> {
        let max = settings.max_slices.max(1);
        let source = match (&settings.header, &settings.feature) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => return Err("set header or feature, not both".into()),
            (Some(header), None) => {
                let name = header.to_ascii_lowercase();
                Source::Header { absent: format!("(no {name})"), name }
            }
            (None, Some(feature)) => feature_source(feature, settings, manifest)?,
        };
        Ok(Some(Self { source, max, seen: RwLock::default() }))
    }

    /// The header (or metadata entry) it reads, if it reads one.
    pub fn header(&self) -> Option<&str> {
        match &self.source {
            Source::Header { name, .. } => Some(name),
            Source::Feature { .. } => None,
        }
    }

    /// The slice of a request: its header's value (cut to `MAX_SLICE_BYTES`) or `(no <header>)`,
    /// bounded to `max_slices` distinct values (then `other`); or its feature's bin (the first
    /// row's value; a bounded set already).
    pub fn key(&self, header: Option<&str>, inputs: &[Tensor]) -> String {
        let value = match &self.source {
            Source::Header { absent, .. } => {
                let Some(value) = header else { return absent.clone() };
                let mut end = value.len().min(MAX_SLICE_BYTES);
                while !value.is_char_boundary(end) {
                    end -= 1;
                }
                &value[..end]
            }
            Source::Feature { tensor, column, edges, names } => {
                return match inputs.get(*tensor).and_then(|t| t.data().get_f64(*column)) {
                    // Bin i holds the values with exactly i edges at or below them, as the profile's.
                    Some(v) if v.is_finite() => names[edges.partition_point(|e| *e <= v)].clone(),
                    _ => "(no value)".to_owned(),
                };
            }
        };
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

/// Where `feature` is in the inputs, from the manifest's profile, and its bins: `edges`, or `bins`
/// quantile bins of its training values.
fn feature_source(feature: &str, settings: &SliceSettings, manifest: &Manifest) -> Result<Source, String> {
    let profile =
        manifest.profile.as_ref().ok_or("the champion's manifest has no training profile to find features in")?;
    let series = profile.features.iter().find(|s| s.name == feature).ok_or_else(|| {
        let names: Vec<&str> = profile.features.iter().map(|s| s.name.as_str()).collect();
        format!("no feature '{feature}' in the training profile; its features: {names:?}")
    })?;
    let tensor = manifest
        .inputs
        .iter()
        .position(|i| i.name == series.tensor)
        .ok_or("the profile names an input the model does not have")?;
    let column = series.column.unwrap_or(0);
    let edges = if settings.edges.is_empty() {
        let Distribution::Numeric { quantiles, .. } = &series.distribution else {
            return Err(format!("'{feature}' is categorical in the profile: give edges"));
        };
        let bins = settings.bins.clamp(2, 20);
        let mut edges: Vec<f64> = (1..bins).map(|k| quantiles[(k * (quantiles.len() - 1)) / bins]).collect();
        edges.dedup();
        edges
    } else {
        if settings.edges.windows(2).any(|w| w[0] >= w[1]) || settings.edges.iter().any(|e| !e.is_finite()) {
            return Err("edges must be finite and ascending".into());
        }
        settings.edges.clone()
    };
    let number = |v: f64| {
        let text = format!("{v:.4}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    };
    let mut names = Vec::with_capacity(edges.len() + 1);
    names.push(format!("{feature} < {}", number(edges[0])));
    for w in edges.windows(2) {
        names.push(format!("{} ≤ {feature} < {}", number(w[0]), number(w[1])));
    }
    names.push(format!("{feature} ≥ {}", number(edges[edges.len() - 1])));
    Ok(Source::Feature { tensor, column, edges, names })
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

    fn manifest() -> Manifest {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/breast-cancer/1/manifest.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn a_slicer_keeps_its_bound_and_names_the_absent_header() {
        let settings = SliceSettings { header: Some("X-Region".into()), max_slices: 2, ..Default::default() };
        let slicer = Slicer::new(&settings, &manifest()).unwrap().unwrap();
        assert_eq!(slicer.header(), Some("x-region"));
        let key = |value| slicer.key(value, &[]);
        assert_eq!(key(Some("eu")), "eu");
        assert_eq!(key(Some("us")), "us");
        assert_eq!(key(Some("apac")), OTHER_SLICE);
        assert_eq!(key(Some("eu")), "eu");
        assert_eq!(key(None), "(no x-region)");
        let long = "é".repeat(40);
        assert_eq!(key(Some(&long)), OTHER_SLICE, "cut, then bounded like any other value");
        assert!(Slicer::new(&SliceSettings::default(), &manifest()).unwrap().is_none());
    }

    #[test]
    fn a_feature_is_binned_by_its_edges_or_its_training_quantiles() {
        let row = |radius: f64| {
            let mut values = vec![0.0f32; 30];
            values[0] = radius as f32;
            vec![Tensor::new(vec![1, 30], crate::model::TensorData::Fp32(values)).unwrap()]
        };
        let edges =
            SliceSettings { feature: Some("mean radius".into()), edges: vec![12.0, 15.5], ..Default::default() };
        let slicer = Slicer::new(&edges, &manifest()).unwrap().unwrap();
        assert_eq!(slicer.header(), None);
        assert_eq!(slicer.key(None, &row(11.0)), "mean radius < 12");
        assert_eq!(slicer.key(None, &row(12.0)), "12 ≤ mean radius < 15.5");
        assert_eq!(slicer.key(None, &row(20.0)), "mean radius ≥ 15.5");
        let quartiles = SliceSettings { feature: Some("mean radius".into()), ..Default::default() };
        let slicer = Slicer::new(&quartiles, &manifest()).unwrap().unwrap();
        assert!(slicer.key(None, &row(5.0)).starts_with("mean radius < "));
        for bad in [
            SliceSettings { feature: Some("radius".into()), ..Default::default() },
            SliceSettings { feature: Some("mean radius".into()), edges: vec![2.0, 1.0], ..Default::default() },
            SliceSettings { feature: Some("mean radius".into()), header: Some("x".into()), ..Default::default() },
        ] {
            assert!(Slicer::new(&bad, &manifest()).is_err(), "{bad:?}");
        }
    }

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
