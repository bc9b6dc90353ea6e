//! HPACK (RFC 7541) for the load generator's HTTP/2 client: the literals its requests' header
//! block is made of, and decoding: every representation, the static and dynamic tables,
//! Huffman-coded strings through httlib-huffman's table decoder. A field is handed out only when
//! its name is wanted, and a value that is neither wanted nor indexed is skipped undecoded (the
//! gateway's `x-request-id`, new every answer).
//!
//! Written here because the decoders on crates.io cost more than the whole call: loona-hpack builds
//! a hash map of the Huffman code for every coded string (2.4 s of CPU for 50k calls), httlib-hpack
//! allocates three vectors a field.

use std::collections::VecDeque;

use httlib_huffman::DecoderSpeed;

/// The dynamic table's size this side allows (SETTINGS_HEADER_TABLE_SIZE's default: never changed).
const MAX_TABLE: usize = 4096;

pub(super) type Error = &'static str;

/// A dynamic table entry: name and value.
type Field = (Box<[u8]>, Box<[u8]>);

pub(super) struct Decoder {
    /// Newest first, as HPACK indexes it.
    table: VecDeque<Field>,
    size: usize,
    max: usize,
    name: Vec<u8>,
    value: Vec<u8>,
}

impl Decoder {
    pub(super) fn new() -> Self {
        Self { table: VecDeque::new(), size: 0, max: MAX_TABLE, name: Vec::new(), value: Vec::new() }
    }

    /// Decodes one header block, calling `field` with each field whose name `wanted` accepts.
    pub(super) fn decode(
        &mut self,
        mut block: &[u8],
        wanted: impl Fn(&[u8]) -> bool,
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), Error> {
        while let Some(&first) = block.first() {
            if first & 0x80 != 0 {
                let (name, value) = self.entry(integer(&mut block, 7)?)?;
                if wanted(name) {
                    field(name, value);
                }
                continue;
            }
            if first & 0xE0 == 0x20 {
                let size = integer(&mut block, 5)?;
                if size > MAX_TABLE {
                    return Err("hpack table size");
                }
                self.max = size;
                self.evict(0);
                continue;
            }
            // A literal: with incremental indexing (01), or without / never indexed (0000, 0001).
            let indexing = first & 0x40 != 0;
            let index = integer(&mut block, if indexing { 6 } else { 4 })?;
            let mut name = std::mem::take(&mut self.name);
            name.clear();
            match index {
                0 => string(&mut block, &mut name)?,
                index => name.extend_from_slice(self.entry(index)?.0),
            }
            let keep = wanted(&name);
            let mut value = std::mem::take(&mut self.value);
            value.clear();
            if keep || indexing {
                string(&mut block, &mut value)?;
            } else {
                skip_string(&mut block)?;
            }
            if keep {
                field(&name, &value);
            }
            if indexing {
                self.insert(name.as_slice().into(), value.as_slice().into());
            }
            (self.name, self.value) = (name, value);
        }
        Ok(())
    }

    /// A field by its index: the static table's 61, then the dynamic table's, newest first.
    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), Error> {
        match index {
            0 => Err("hpack index 0"),
            1..=61 => {
                let (name, value) = STATIC[index - 1];
                Ok((name.as_bytes(), value.as_bytes()))
            }
            _ => self.table.get(index - 62).map(|(n, v)| (&n[..], &v[..])).ok_or("hpack index"),
        }
    }

    fn insert(&mut self, name: Box<[u8]>, value: Box<[u8]>) {
        let size = name.len() + value.len() + 32;
        self.evict(size);
        // An entry larger than the table empties it and is not kept (RFC 7541 §4.4).
        if size <= self.max {
            self.size += size;
            self.table.push_front((name, value));
        }
    }

    /// Evicts the oldest entries until `room` more fits.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            let Some((name, value)) = self.table.pop_back() else { break };
            self.size -= name.len() + value.len() + 32;
        }
    }
}

/// An integer with an `n`-bit prefix (RFC 7541 §5.1).
fn integer(block: &mut &[u8], n: u32) -> Result<usize, Error> {
    let (&first, rest) = block.split_first().ok_or("hpack integer")?;
    *block = rest;
    let max = (1usize << n) - 1;
    let mut value = usize::from(first) & max;
    if value < max {
        return Ok(value);
    }
    for shift in (0..28).step_by(7) {
        let (&byte, rest) = block.split_first().ok_or("hpack integer")?;
        *block = rest;
        value += usize::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("hpack integer too large")
}

/// A string's bytes and whether they are Huffman coded (RFC 7541 §5.2).
fn raw_string<'a>(block: &mut &'a [u8]) -> Result<(&'a [u8], bool), Error> {
    let huffman = block.first().ok_or("hpack string")? & 0x80 != 0;
    let length = integer(block, 7)?;
    if length > block.len() {
        return Err("hpack string");
    }
    let (bytes, rest) = block.split_at(length);
    *block = rest;
    Ok((bytes, huffman))
}

/// A string, decoded onto `out`.
fn string(block: &mut &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    match raw_string(block)? {
        (bytes, true) => httlib_huffman::decode(bytes, out, DecoderSpeed::FiveBits).map_err(|_| "hpack huffman"),
        (bytes, false) => {
            out.extend_from_slice(bytes);
            Ok(())
        }
    }
}

fn skip_string(block: &mut &[u8]) -> Result<(), Error> {
    raw_string(block).map(|_| ())
}

/// An integer with an `n`-bit prefix after `first`'s high bits, encoded (RFC 7541 §5.1).
fn put_integer(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A literal header field not added to the table (`first` 0x00: without indexing; 0x10: never
/// indexed), its name a static-table index or, with index 0, `name`; strings raw, not Huffman
/// coded (RFC 7541 §6.2).
pub(super) fn literal(out: &mut Vec<u8>, first: u8, index: usize, name: &[u8], value: &[u8]) {
    put_integer(out, first, 4, index);
    let strings = [name, value];
    for string in &strings[usize::from(index != 0)..] {
        put_integer(out, 0x00, 7, string.len());
        out.extend_from_slice(string);
    }
}

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(decoder: &mut Decoder, hex: &str) -> Vec<(String, String)> {
        let block = hex::decode(hex.replace(' ', "")).unwrap();
        let mut fields = Vec::new();
        decoder
            .decode(
                &block,
                |_| true,
                |n, v| fields.push((String::from_utf8(n.to_vec()).unwrap(), String::from_utf8(v.to_vec()).unwrap())),
            )
            .unwrap();
        fields
    }

    fn pairs(fields: &[(&str, &str)]) -> Vec<(String, String)> {
        fields.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    /// RFC 7541 C.4: three requests with Huffman coding, the dynamic table carried between them.
    #[test]
    fn the_rfcs_huffman_coded_requests_decode() {
        let mut decoder = Decoder::new();
        let first = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")];
        assert_eq!(decode_all(&mut decoder, "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"), pairs(&first));
        let second = [&first[..], &[("cache-control", "no-cache")]].concat();
        assert_eq!(decode_all(&mut decoder, "8286 84be 5886 a8eb 1064 9cbf"), pairs(&second));
        let third = [
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ];
        let block = "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf";
        assert_eq!(decode_all(&mut decoder, block), pairs(&third));
        assert_eq!(decoder.size, 164, "the table's size after C.4.3");
    }

    /// RFC 7541 C.6 with a 256-byte table: answers that evict the oldest entries.
    #[test]
    fn entries_are_evicted_oldest_first() {
        let mut decoder = Decoder::new();
        decoder.max = 256;
        let first = "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e \
                     919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3";
        let fields = decode_all(&mut decoder, first);
        assert_eq!(fields[0], (":status".to_owned(), "302".to_owned()));
        let second = decode_all(&mut decoder, "4883 640e ffc1 c0bf");
        assert_eq!(second[0], (":status".to_owned(), "307".to_owned()));
        assert_eq!(second[3], ("location".to_owned(), "https://www.example.com".to_owned()));
        assert_eq!(decoder.size, 222, "the table's size after C.6.2");
    }

    #[test]
    fn header_blocks_decode_as_written() {
        let mut block = vec![0x83, 0x86];
        literal(&mut block, 0x00, 4, b"", b"/inference.GRPCInferenceService/ModelInfer");
        literal(&mut block, 0x00, 0, b"grpc-timeout", b"10000m");
        let long = vec![b'x'; 300];
        literal(&mut block, 0x10, 23, b"", &long);
        let mut decoded = Vec::new();
        Decoder::new().decode(&block, |_| true, |n, v| decoded.push((n.to_vec(), v.to_vec()))).unwrap();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (b":path".to_vec(), b"/inference.GRPCInferenceService/ModelInfer".to_vec()),
            (b"grpc-timeout".to_vec(), b"10000m".to_vec()),
            (b"authorization".to_vec(), long),
        ];
        assert_eq!(decoded, expected);
    }

    #[test]
    fn unwanted_values_are_skipped_and_bad_blocks_refused() {
        let mut decoder = Decoder::new();
        // A never-indexed literal with a new name, then :status 200 (static 8).
        let mut block = vec![0x10, 12];
        block.extend_from_slice(b"x-request-id");
        block.push(3);
        block.extend_from_slice(b"abc");
        block.push(0x88);
        let mut seen = Vec::new();
        decoder.decode(&block, |n| n == b":status", |n, v| seen.push((n.to_vec(), v.to_vec()))).unwrap();
        assert_eq!(seen, vec![(b":status".to_vec(), b"200".to_vec())]);
        for bad in [&[0x80][..], &[0xBE], &[0x10, 5, b'a'], &[0x3F, 0xE2, 0x1F], &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]]
        {
            assert!(decoder.decode(bad, |_| true, |_, _| {}).is_err(), "{bad:?}");
        }
    }
}
