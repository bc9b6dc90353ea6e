//! The common request read in one pass, without serde.
//!
//! What tritonclient and most clients send for tabular models: `{"id": …, "inputs": [{"name": …,
//! "shape": […], "datatype": "FP32" or "FP64", "data": [[…], …]}, …]}`, keys in any order, strings
//! without escapes, numbers in range. Serde would validate `data` while skipping it and `scan_data`
//! read it again; this reads it once. Anything
//! else (other keys, escapes, exponents, other datatypes, binary data, and every malformed request)
//! is `None` and goes through serde, which reads all of it and words every error. For a request
//! both accept, both give the same request (a property test checks).

use std::borrow::Cow;

use super::number::{clinger, digits};
use super::{Data, InputJson, RequestJson};

/// Deeper nesting goes to serde (whose own limit is 128).
const MAX_DEPTH: usize = 32;

pub(super) fn read(json: &[u8]) -> Option<RequestJson<'_>> {
    let mut cursor = Cursor { bytes: json, at: 0 };
    let (mut id, mut inputs) = (None, None);
    cursor.object(|c, key| {
        match key {
            b"id" if id.is_none() => id = Some(c.string()?),
            b"inputs" if inputs.is_none() => inputs = Some(c.inputs()?),
            _ => return None,
        }
        Some(())
    })?;
    cursor.skip_whitespace();
    (cursor.at == json.len()).then_some(())?;
    Some(RequestJson { id: id.map(Cow::Borrowed), parameters: None, inputs: inputs?, outputs: None })
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn skip_whitespace(&mut self) {
        while matches!(self.bytes.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.raw_string()?).ok()
    }

    /// A string without escapes or control characters, as bytes: keys are compared as such, so
    /// only the values kept are checked for UTF-8.
    fn raw_string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.at;
        let length = self.bytes[start..].iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        (self.bytes[start + length] == b'"').then_some(())?;
        self.at = start + length + 1;
        Some(&self.bytes[start..start + length])
    }

    /// After an item: `,` (true: another follows) or `close` (false: the end), consumed.
    fn separator(&mut self, close: u8) -> Option<bool> {
        let byte = self.peek()?;
        self.at += 1;
        match byte {
            b',' => Some(true),
            _ => (byte == close).then_some(false),
        }
    }

    /// `{"key": value, …}`, not empty; `field` reads each value.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        loop {
            let key = self.raw_string()?;
            self.eat(b':')?;
            field(self, key)?;
            if !self.separator(b'}')? {
                return Some(());
            }
        }
    }

    /// `[item, …]` or `[]`; `item` reads each item.
    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            item(self)?;
            if !self.separator(b']')? {
                return Some(());
            }
        }
    }

    fn inputs(&mut self) -> Option<Vec<InputJson<'a>>> {
        let mut inputs = Vec::with_capacity(1);
        self.array(|c| c.input().map(|input| inputs.push(input)))?;
        (!inputs.is_empty()).then_some(inputs)
    }

    fn input(&mut self) -> Option<InputJson<'a>> {
        let (mut name, mut shape, mut datatype, mut data) = (None, None, None, None);
        self.object(|c, key| {
            match key {
                b"name" if name.is_none() => name = Some(c.string()?),
                b"datatype" if datatype.is_none() => datatype = Some(c.string()?),
                b"shape" if shape.is_none() => {
                    let mut dims = Vec::with_capacity(2);
                    c.array(|c| c.integer().map(|d| dims.push(d)))?;
                    shape = Some(dims);
                }
                b"data" if data.is_none() => {
                    // About a number per 8 bytes of what is left: no regrowth for one row.
                    let mut values = Vec::with_capacity((c.bytes.len() - c.at) / 8);
                    c.values(&mut values, 0)?;
                    data = Some(values);
                }
                _ => return None,
            }
            Some(())
        })?;
        let datatype = datatype.filter(|d| matches!(*d, "FP32" | "FP64"))?;
        Some(InputJson {
            name: Cow::Borrowed(name?),
            shape: shape?,
            datatype: Cow::Borrowed(datatype),
            parameters: None,
            data: Some(Data::Plain(data?)),
        })
    }

    /// A nested array of plain decimals, flattened into `values` in row-major order.
    fn values(&mut self, values: &mut Vec<f64>, depth: usize) -> Option<()> {
        (depth < MAX_DEPTH).then_some(())?;
        self.array(
            |c| {
                if c.peek()? == b'[' { c.values(values, depth + 1) } else { c.decimal().map(|v| values.push(v)) }
            },
        )
    }

    fn digits(&self, at: usize, mantissa: &mut u64) -> usize {
        digits(self.bytes, at, mantissa)
    }

    /// A JSON number, `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`. Clinger's fast path when
    /// it applies (at most 19 digits, a mantissa of at most 2^53, at most 22 after the point, no
    /// exponent), else `str::parse` (numpy's float32 values print with 17 digits): either way the
    /// value `scan_data` gives. Out of range is serde's to refuse.
    fn decimal(&mut self) -> Option<f64> {
        let negative = self.peek()? == b'-';
        let whole_start = self.at + usize::from(negative);
        let mut mantissa = 0;
        let mut at = self.digits(whole_start, &mut mantissa);
        let whole = at - whole_start;
        (whole == 1 || (whole > 1 && self.bytes[whole_start] != b'0')).then_some(())?;
        let mut scale = 0;
        if self.bytes.get(at) == Some(&b'.') {
            let fraction_start = at + 1;
            at = self.digits(fraction_start, &mut mantissa);
            scale = at - fraction_start;
            (scale > 0).then_some(())?;
        }
        let mut exponent = false;
        if matches!(self.bytes.get(at), Some(b'e' | b'E')) {
            let mut digits_start = at + 1;
            if matches!(self.bytes.get(digits_start), Some(b'+' | b'-')) {
                digits_start += 1;
            }
            let mut ignored = 0;
            at = self.digits(digits_start, &mut ignored);
            (at > digits_start).then_some(())?;
            exponent = true;
        }
        let token = &self.bytes[self.at..at];
        self.at = at;
        if let Some(value) = (!exponent).then(|| clinger(negative, mantissa, whole + scale, scale)).flatten() {
            return Some(value);
        }
        let value: f64 = std::str::from_utf8(token).ok()?.parse().ok()?;
        value.is_finite().then_some(value)
    }

    /// `-?(0|[1-9][0-9]*)` of at most 18 digits, not followed by a fraction or exponent.
    fn integer(&mut self) -> Option<i64> {
        let negative = self.peek()? == b'-';
        let start = self.at + usize::from(negative);
        let mut magnitude = 0;
        let end = self.digits(start, &mut magnitude);
        let digits = end - start;
        (digits == 1 || ((2..=18).contains(&digits) && self.bytes[start] != b'0')).then_some(())?;
        (!matches!(self.bytes.get(end), Some(b'.' | b'e' | b'E'))).then_some(())?;
        self.at = end;
        let magnitude = i64::try_from(magnitude).ok()?;
        Some(if negative { -magnitude } else { magnitude })
    }
}
