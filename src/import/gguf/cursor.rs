//! A bounds-checked little-endian reader over a GGUF file's bytes.
//!
//! Every read checks the remaining length first, so a truncated or lying file yields a message
//! ("needs 8 bytes at offset 120, 3 left") instead of a panic. Messages name no key or tensor:
//! the caller knows which one it was reading and adds it.

/// A position in a byte slice.
pub(super) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `bytes`.
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    /// The offset of the next byte to read.
    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left after the position.
    pub(super) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The next `n` bytes, or a truncation message naming `what` was being read.
    pub(super) fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], String> {
        let left = self.remaining();
        match usize::try_from(n) {
            Ok(n) if n <= left => {
                let out = &self.bytes[self.pos..self.pos + n];
                self.pos += n;
                Ok(out)
            }
            _ => Err(format!("truncated: {what} needs {n} bytes at offset {}, {left} left", self.pos)),
        }
    }

    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let bytes = self.take(N as u64, what)?;
        Ok(bytes.try_into().expect("take returned N bytes"))
    }

    pub(super) fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(super) fn u16(&mut self, what: &str) -> Result<u16, String> {
        self.array(what).map(u16::from_le_bytes)
    }

    pub(super) fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(super) fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    pub(super) fn f32(&mut self, what: &str) -> Result<f32, String> {
        self.array(what).map(f32::from_le_bytes)
    }

    pub(super) fn f64(&mut self, what: &str) -> Result<f64, String> {
        self.array(what).map(f64::from_le_bytes)
    }

    /// A GGUF string: `u64` length, then that many bytes of UTF-8 (no terminator).
    pub(super) fn string(&mut self, what: &str) -> Result<&'a str, String> {
        let len = self.u64(what)?;
        let at = self.pos;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes).map_err(|e| format!("{what} at offset {at} is not UTF-8 ({e})"))
    }
}

/// How many entries to reserve for a list that claims `count` entries of at least `min_entry`
/// bytes each in the file and `size_of::<T>()` bytes each in memory: never more than the remaining
/// bytes could hold, so that a lying count cannot allocate more than the file's size.
pub(super) fn capacity_for<T>(count: u64, remaining: usize, min_entry: usize) -> usize {
    let per_entry = min_entry.max(std::mem::size_of::<T>()).max(1);
    usize::try_from(count).unwrap_or(usize::MAX).min(remaining / per_entry)
}
