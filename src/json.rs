//! Writing JSON by hand on hot paths (the inference response, the outcome record), byte for byte as
//! `serde_json` writes it: constant keys as literals, strings copied when nothing needs escaping.

use serde::Serialize;

/// A JSON string: copied as it is when nothing in it needs escaping (the usual name, id or hash),
/// else escaped by serde.
pub fn write_str(out: &mut Vec<u8>, value: &str) {
    // A fold, not `all`: without the early exit the check runs on whole vector registers.
    let plain = !value.bytes().fold(false, |escape, b| escape | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if plain {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        write(out, value);
    }
}

/// Any value, through serde (numbers: serde's shortest round-trip digits, `null` when not finite).
pub fn write(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    serde_json::to_writer(out, value).expect("serializing to a Vec cannot fail");
}

/// A time as RFC 3339 UTC to the millisecond, as every log line, audit entry and alert writes it:
/// `#[serde(with = "crate::json::rfc3339")]`, or `serialize_with = "crate::json::rfc3339::serialize"`.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_millis(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn strings_are_written_as_serde_writes_them() {
        for s in ["breast-cancer", "", "a\"b", "a\\b", "tab\there", "line\n", "\u{1}", "\u{7f}", "ünï/cödé"] {
            let mut ours = Vec::new();
            super::write_str(&mut ours, s);
            assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }
}
