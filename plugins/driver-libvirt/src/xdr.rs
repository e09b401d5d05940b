//! A small synchronous XDR (RFC 4506) encoder and decoder: the subset libvirt's remote protocol
//! uses. Decoding never panics and never allocates more than the input can hold: every length
//! field is checked against its declared maximum and against the bytes actually left.

use thiserror::Error;

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum XdrError {
    #[error("truncated xdr data: {what} needs {needed} bytes, {available} left")]
    Truncated { what: &'static str, needed: usize, available: usize },
    #[error("xdr {what} length {length} exceeds its maximum {maximum}")]
    TooLong { what: &'static str, length: usize, maximum: usize },
    #[error("xdr string is not utf-8")]
    InvalidUtf8,
    #[error("xdr {what} has invalid value {value}")]
    InvalidValue { what: &'static str, value: u32 },
    #[error("{count} unexpected bytes after the xdr payload")]
    TrailingBytes { count: usize },
}

/// Appends XDR items to a growing buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    buffer: Vec<u8>,
}

fn padding_of(length: usize) -> usize {
    (4 - length % 4) % 4
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// An encoder whose output starts after `reserved` zero bytes (room for a frame header).
    pub fn with_reserved(reserved: usize) -> Self {
        Self { buffer: vec![0; reserved] }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buffer
    }

    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }

    pub fn put_u32(&mut self, value: u32) {
        self.buffer.extend_from_slice(&value.to_be_bytes());
    }

    pub fn put_i32(&mut self, value: i32) {
        self.buffer.extend_from_slice(&value.to_be_bytes());
    }

    pub fn put_u64(&mut self, value: u64) {
        self.buffer.extend_from_slice(&value.to_be_bytes());
    }

    pub fn put_i64(&mut self, value: i64) {
        self.buffer.extend_from_slice(&value.to_be_bytes());
    }

    pub fn put_bool(&mut self, value: bool) {
        self.put_u32(u32::from(value));
    }

    /// Fixed-length opaque data (`opaque name[N]`): the bytes and padding, no length.
    pub fn put_fixed_opaque(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
        self.buffer.extend(std::iter::repeat_n(0, padding_of(bytes.len())));
    }

    /// Variable-length opaque data (`opaque name<>`): a length, the bytes, padding.
    /// Lengths beyond `u32::MAX` cannot occur: callers cap messages far below that.
    pub fn put_opaque(&mut self, bytes: &[u8]) {
        self.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
        self.put_fixed_opaque(bytes);
    }

    pub fn put_string(&mut self, value: &str) {
        self.put_opaque(value.as_bytes());
    }

    /// An optional value (`type *name`): a boolean "present", then the value.
    pub fn put_optional_string(&mut self, value: Option<&str>) {
        self.put_bool(value.is_some());
        if let Some(value) = value {
            self.put_string(value);
        }
    }
}

/// Reads XDR items from a byte slice.
#[derive(Debug)]
pub struct Decoder<'input> {
    input: &'input [u8],
    position: usize,
}

impl<'input> Decoder<'input> {
    pub fn new(input: &'input [u8]) -> Self {
        Self { input, position: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.input.len() - self.position
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<(), XdrError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(XdrError::TrailingBytes { count }),
        }
    }

    fn take(&mut self, what: &'static str, length: usize) -> Result<&'input [u8], XdrError> {
        let available = self.remaining();
        if length > available {
            return Err(XdrError::Truncated { what, needed: length, available });
        }
        let bytes = &self.input[self.position..self.position + length];
        self.position += length;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], XdrError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(what, N)?);
        Ok(array)
    }

    pub fn get_u32(&mut self) -> Result<u32, XdrError> {
        Ok(u32::from_be_bytes(self.take_array("u32")?))
    }

    pub fn get_i32(&mut self) -> Result<i32, XdrError> {
        Ok(i32::from_be_bytes(self.take_array("i32")?))
    }

    pub fn get_u64(&mut self) -> Result<u64, XdrError> {
        Ok(u64::from_be_bytes(self.take_array("u64")?))
    }

    pub fn get_i64(&mut self) -> Result<i64, XdrError> {
        Ok(i64::from_be_bytes(self.take_array("i64")?))
    }

    pub fn get_bool(&mut self) -> Result<bool, XdrError> {
        match self.get_u32()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(XdrError::InvalidValue { what: "bool", value }),
        }
    }

    /// Fixed-length opaque data of `N` bytes plus padding.
    pub fn get_fixed_opaque<const N: usize>(&mut self) -> Result<[u8; N], XdrError> {
        let array = self.take_array::<N>("fixed opaque")?;
        self.take("padding", padding_of(N))?;
        Ok(array)
    }

    /// Variable-length opaque data of at most `maximum` bytes, borrowed from the input.
    pub fn get_opaque_slice(&mut self, maximum: usize) -> Result<&'input [u8], XdrError> {
        let length = self.get_length("opaque", maximum)?;
        let bytes = self.take("opaque", length)?;
        self.take("padding", padding_of(length))?;
        Ok(bytes)
    }

    pub fn get_opaque(&mut self, maximum: usize) -> Result<Vec<u8>, XdrError> {
        self.get_opaque_slice(maximum).map(<[u8]>::to_vec)
    }

    pub fn get_string(&mut self, maximum: usize) -> Result<String, XdrError> {
        let bytes = self.get_opaque_slice(maximum)?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| XdrError::InvalidUtf8)
    }

    /// An optional value (`type *name`).
    pub fn get_optional<T>(
        &mut self,
        decode: impl FnOnce(&mut Self) -> Result<T, XdrError>,
    ) -> Result<Option<T>, XdrError> {
        if self.get_bool()? { decode(self).map(Some) } else { Ok(None) }
    }

    /// A variable-length array of at most `maximum` elements. Every XDR element takes at least
    /// four bytes, so the count is also checked against what is left before allocating.
    pub fn get_array<T>(
        &mut self,
        maximum: usize,
        mut decode: impl FnMut(&mut Self) -> Result<T, XdrError>,
    ) -> Result<Vec<T>, XdrError> {
        let count = self.get_length("array", maximum)?;
        let available = self.remaining();
        if count.saturating_mul(4) > available {
            return Err(XdrError::Truncated { what: "array", needed: count.saturating_mul(4), available });
        }
        let mut elements = Vec::with_capacity(count);
        for _ in 0..count {
            elements.push(decode(self)?);
        }
        Ok(elements)
    }

    fn get_length(&mut self, what: &'static str, maximum: usize) -> Result<usize, XdrError> {
        let length = usize::try_from(self.get_u32()?).unwrap_or(usize::MAX);
        if length > maximum {
            return Err(XdrError::TooLong { what, length, maximum });
        }
        Ok(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_big_endian() -> Result<(), XdrError> {
        let mut encoder = Encoder::new();
        encoder.put_u32(0x2000_8086);
        encoder.put_i32(-2);
        encoder.put_u64(u64::MAX - 1);
        encoder.put_i64(i64::MIN);
        encoder.put_bool(true);
        let bytes = encoder.into_bytes();
        assert_eq!(&bytes[..4], &[0x20, 0x00, 0x80, 0x86]);
        assert_eq!(bytes.len(), 4 + 4 + 8 + 8 + 4);
        let mut decoder = Decoder::new(&bytes);
        assert_eq!(decoder.get_u32()?, 0x2000_8086);
        assert_eq!(decoder.get_i32()?, -2);
        assert_eq!(decoder.get_u64()?, u64::MAX - 1);
        assert_eq!(decoder.get_i64()?, i64::MIN);
        assert!(decoder.get_bool()?);
        decoder.finish()
    }

    #[test]
    fn strings_and_opaque_are_padded_to_four_bytes() -> Result<(), XdrError> {
        for (text, encoded_length) in [("", 4), ("a", 8), ("abcd", 8), ("abcde", 12), ("héllo", 12)] {
            let mut encoder = Encoder::new();
            encoder.put_string(text);
            let bytes = encoder.into_bytes();
            assert_eq!(bytes.len(), encoded_length, "{text:?}");
            assert!(bytes[4 + text.len()..].iter().all(|byte| *byte == 0), "padding of {text:?} is zero");
            let mut decoder = Decoder::new(&bytes);
            assert_eq!(decoder.get_string(64)?, text);
            decoder.finish()?;
        }
        let mut encoder = Encoder::new();
        encoder.put_fixed_opaque(&[7; 16]);
        encoder.put_fixed_opaque(&[1, 2, 3]);
        let bytes = encoder.into_bytes();
        assert_eq!(bytes.len(), 20);
        let mut decoder = Decoder::new(&bytes);
        assert_eq!(decoder.get_fixed_opaque::<16>()?, [7; 16]);
        assert_eq!(decoder.get_fixed_opaque::<3>()?, [1, 2, 3]);
        decoder.finish()
    }

    #[test]
    fn optionals_and_arrays_round_trip() -> Result<(), XdrError> {
        let mut encoder = Encoder::new();
        encoder.put_optional_string(Some("uri"));
        encoder.put_optional_string(None);
        encoder.put_u32(3);
        for value in [10, 20, 30] {
            encoder.put_i32(value);
        }
        let bytes = encoder.into_bytes();
        let mut decoder = Decoder::new(&bytes);
        assert_eq!(decoder.get_optional(|decoder| decoder.get_string(16))?, Some("uri".to_owned()));
        assert_eq!(decoder.get_optional(|decoder| decoder.get_string(16))?, None);
        assert_eq!(decoder.get_array(8, Decoder::get_i32)?, vec![10, 20, 30]);
        decoder.finish()
    }

    #[test]
    fn truncated_input_is_an_error() {
        let mut encoder = Encoder::new();
        encoder.put_string("hello");
        let bytes = encoder.into_bytes();
        for cut in 0..bytes.len() {
            let mut decoder = Decoder::new(&bytes[..cut]);
            assert!(
                matches!(decoder.get_string(64), Err(XdrError::Truncated { .. })),
                "cut at {cut} must be truncated"
            );
        }
        assert!(matches!(Decoder::new(&[0, 0]).get_u64(), Err(XdrError::Truncated { .. })));
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating() {
        // A string claiming 4 GiB, an array claiming a billion elements in 8 bytes.
        let huge_string = [0xff, 0xff, 0xff, 0xff, b'a', 0, 0, 0];
        assert!(matches!(
            Decoder::new(&huge_string).get_string(1 << 20),
            Err(XdrError::TooLong { length: 4_294_967_295, maximum: 1_048_576, .. })
        ));
        let huge_array = [0x3b, 0x9a, 0xca, 0x00, 0, 0, 0, 1];
        assert!(matches!(
            Decoder::new(&huge_array).get_array(usize::MAX, Decoder::get_u32),
            Err(XdrError::Truncated { .. })
        ));
        assert!(matches!(Decoder::new(&huge_array).get_array(16, Decoder::get_u32), Err(XdrError::TooLong { .. })));
    }

    #[test]
    fn invalid_values_are_errors() {
        assert!(matches!(Decoder::new(&[0, 0, 0, 2]).get_bool(), Err(XdrError::InvalidValue { value: 2, .. })));
        assert!(matches!(Decoder::new(&[0, 0, 0, 2, 0xff, 0xfe, 0, 0]).get_string(8), Err(XdrError::InvalidUtf8)));
        let mut decoder = Decoder::new(&[0, 0, 0, 1, 9]);
        assert!(decoder.get_u32().is_ok());
        assert_eq!(decoder.finish(), Err(XdrError::TrailingBytes { count: 1 }));
    }
}
