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
    use std::cell::Cell;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    /// The time, quoted, as `humantime::format_rfc3339_millis` writes it, into a record's line.
    /// Records come many a second: the part up to the second is formatted once a second per thread
    /// and the milliseconds by hand (through `fmt` the whole cost about 650 instructions a record,
    /// callgrind, issue 33). A time humantime cannot write (before 1970, after 9999) is clamped to
    /// the nearest it can, where `format_rfc3339_millis` would panic.
    pub fn write_millis(out: &mut Vec<u8>, time: SystemTime) {
        thread_local! {
            /// The last second formatted on this thread, and its `YYYY-MM-DDTHH:MM:SS`.
            static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
        }
        const LAST: Duration = Duration::new(253_402_300_799, 999_999_999);
        let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).min(LAST);
        let (seconds, millis) = (since.as_secs(), since.subsec_millis());
        let (cached, mut prefix) = SECOND.get();
        if cached != seconds {
            // `YYYY-MM-DDTHH:MM:SSZ`, always 20 bytes in humantime's range.
            let whole = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds)).to_string();
            prefix.copy_from_slice(&whole.as_bytes()[..19]);
            SECOND.set((seconds, prefix));
        }
        let digits = [b'0' + (millis / 100) as u8, b'0' + (millis / 10 % 10) as u8, b'0' + (millis % 10) as u8];
        out.push(b'"');
        out.extend_from_slice(&prefix);
        out.push(b'.');
        out.extend_from_slice(&digits);
        out.extend_from_slice(b"Z\"");
    }

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
    fn a_record_time_is_written_as_humantime_writes_it() {
        use std::time::{Duration, UNIX_EPOCH};
        let written = |time| {
            let mut out = Vec::new();
            super::rfc3339::write_millis(&mut out, time);
            String::from_utf8(out).unwrap()
        };
        // The same second twice (from the cache), then others, on and off whole milliseconds.
        for (seconds, nanos) in [
            (1_765_000_000, 5_000_000),
            (1_765_000_000, 999_999_999),
            (1_765_000_001, 0),
            (0, 1),
            (951_782_400, 120_000_000),
        ] {
            let time = UNIX_EPOCH + Duration::new(seconds, nanos);
            assert_eq!(written(time), format!("\"{}\"", humantime::format_rfc3339_millis(time)));
        }
        assert_eq!(written(UNIX_EPOCH - Duration::from_secs(1)), "\"1970-01-01T00:00:00.000Z\"");
        assert_eq!(written(UNIX_EPOCH + Duration::from_secs(300_000_000_000)), "\"9999-12-31T23:59:59.999Z\"");
    }

    #[test]
    fn strings_are_written_as_serde_writes_them() {
        for s in ["breast-cancer", "", "a\"b", "a\\b", "tab\there", "line\n", "\u{1}", "\u{7f}", "ünï/cödé"] {
            let mut ours = Vec::new();
            super::write_str(&mut ours, s);
            assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }
}
