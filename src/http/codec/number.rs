//! Reading JSON numbers: the token's extent, and its value by Clinger's fast path when that is exact.

/// The powers of ten that are exact doubles.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

/// The number token at the start of `bytes` (valid JSON: serde checked it): its length, and its value
/// when it is a plain decimal that [`clinger`] converts exactly (the value `str::parse` gives). Most
/// numbers in requests are such (`-12.345`, `0.007509`); the rest (exponents, more than 15 digits)
/// take `str::parse`.
pub(super) fn number(bytes: &[u8]) -> (usize, Option<f64>) {
    let negative = bytes.first() == Some(&b'-');
    let start = usize::from(negative);
    let mut mantissa = 0u64;
    let mut i = digits(bytes, start, &mut mantissa);
    let mut count = i - start;
    let mut scale = 0;
    if bytes.get(i) == Some(&b'.') {
        let fraction = i + 1;
        i = digits(bytes, fraction, &mut mantissa);
        scale = i - fraction;
        count += scale;
    }
    let plain_end = i;
    while matches!(bytes.get(i), Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')) {
        i += 1;
    }
    let value = if i == plain_end { clinger(negative, mantissa, count, scale) } else { None };
    (i, value)
}

/// The digits from `at`, accumulated into `mantissa` (wrapping: `clinger` refuses more than 19); the
/// index after them.
pub(super) fn digits(bytes: &[u8], mut at: usize, mantissa: &mut u64) -> usize {
    while let Some(d) = bytes.get(at).map(|b| b.wrapping_sub(b'0')).filter(|&d| d < 10) {
        *mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d));
        at += 1;
    }
    at
}

/// `±mantissa / 10^scale` when Clinger's fast path makes it exact: at most 19 digits read (so the
/// mantissa did not wrap), a mantissa of at most 2^53 and a power of ten of at most 10^22, both
/// exact doubles, so their quotient is correctly rounded. The one place both readers convert.
pub(super) fn clinger(negative: bool, mantissa: u64, count: usize, scale: usize) -> Option<f64> {
    let exact = count <= 19 && mantissa <= 1 << 53 && scale < POW10.len();
    exact.then(|| {
        let magnitude = mantissa as f64 / POW10[scale];
        if negative { -magnitude } else { magnitude }
    })
}
