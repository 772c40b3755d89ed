//! LEB128 integers and a bounds-checked little reader, so that parsing hostile input
//! returns errors instead of panicking.

use super::FormatError;

/// Appends `v` as LEB128 (the shortest encoding: the only one readers accept).
pub fn put(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// A cursor over a byte slice; every read fails cleanly at the end of input. Its errors
/// name the part of the blob being read ([`Reader::section`]).
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    section: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `data`, in section `section`.
    pub fn new(data: &'a [u8], section: &'static str) -> Self {
        Reader {
            data,
            pos: 0,
            section,
        }
    }

    /// Names what is read from here on, for error messages.
    pub fn section(&mut self, section: &'static str) {
        self.section = section;
    }

    /// Bytes read so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.remaining() < n {
            return Err(FormatError::Truncated(self.section));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.bytes(1)?[0])
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16, FormatError> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, FormatError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A LEB128 value of at most 10 bytes. Overlong encodings (a final byte of zero
    /// after the first, as in `[0x80, 0x00]`) and values over `u64::MAX` are errors,
    /// so every value has exactly one encoding.
    pub fn varint(&mut self) -> Result<u64, FormatError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            let bits = (b & 0x7f) as u64;
            if i == 9 && b > 1 {
                return Err(FormatError::BadVarint {
                    section: self.section,
                    why: "overflows 64 bits",
                });
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(FormatError::BadVarint {
                        section: self.section,
                        why: "overlong encoding",
                    });
                }
                return Ok(v);
            }
        }
        // Not reached: the tenth byte either ends the value or is refused above.
        Err(FormatError::BadVarint {
            section: self.section,
            why: "overflows 64 bits",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read(bytes: &[u8]) -> Result<u64, FormatError> {
        Reader::new(bytes, "test").varint()
    }

    #[test]
    fn overlong_and_overflowing_encodings_are_refused() {
        assert_eq!(read(&[0x00]), Ok(0));
        assert_eq!(read(&[0x7f]), Ok(127));
        assert_eq!(read(&[0x80, 0x01]), Ok(128));
        for overlong in [&[0x80, 0x00][..], &[0xff, 0x80, 0x00], &[0x81, 0x00]] {
            assert!(
                matches!(
                    read(overlong),
                    Err(FormatError::BadVarint {
                        why: "overlong encoding",
                        ..
                    })
                ),
                "{overlong:?}"
            );
        }
        let mut max = Vec::new();
        put(&mut max, u64::MAX);
        assert_eq!(max.len(), 10);
        assert_eq!(read(&max), Ok(u64::MAX));
        let mut over = max.clone();
        over[9] = 0x02;
        assert!(matches!(
            read(&over),
            Err(FormatError::BadVarint {
                why: "overflows 64 bits",
                ..
            })
        ));
        let mut long = max;
        long[9] = 0x81;
        long.push(0x01);
        assert!(matches!(read(&long), Err(FormatError::BadVarint { .. })));
        assert_eq!(read(&[0x80]), Err(FormatError::Truncated("test")));
    }

    proptest! {
        #[test]
        fn roundtrip(v in any::<u64>()) {
            let mut out = Vec::new();
            put(&mut out, v);
            let mut r = Reader::new(&out, "test");
            prop_assert_eq!(r.varint().unwrap(), v);
            prop_assert_eq!(r.remaining(), 0);
        }

        #[test]
        fn every_accepted_encoding_is_the_canonical_one(bytes in proptest::collection::vec(any::<u8>(), 1..12)) {
            let mut r = Reader::new(&bytes, "test");
            if let Ok(v) = r.varint() {
                let mut canon = Vec::new();
                put(&mut canon, v);
                prop_assert_eq!(&canon[..], &bytes[..r.pos()]);
            }
        }
    }
}
