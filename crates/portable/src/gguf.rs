//! A reader of GGUF files (version 2 and 3): the metadata the forward pass needs and
//! the tensors' bytes, as they lie in the file.
//!
//! Every length and offset is checked against the file before it is used, so a
//! damaged or hostile file gives a [`GgufError`], never a panic or an allocation
//! sized by the file.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What is wrong with a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file (bad magic)")]
    Magic,
    /// A GGUF version this reader does not know.
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    Version(u32),
    /// The file ends inside a structure.
    #[error("GGUF file truncated at byte {0}")]
    Truncated(u64),
    /// A metadata value of a type this reader does not know.
    #[error("GGUF metadata {key}: unknown value type {ty}")]
    ValueType {
        /// The key.
        key: String,
        /// Its type number.
        ty: u32,
    },
    /// A string that is not UTF-8.
    #[error("GGUF string at byte {0} is not UTF-8")]
    Utf8(u64),
    /// A count or size that cannot be right for a file of this length.
    #[error("GGUF {what} of {n} does not fit the file")]
    TooLarge {
        /// What was counted.
        what: &'static str,
        /// The count.
        n: u64,
    },
    /// A key the model needs is missing or of another type.
    #[error("GGUF metadata {0} is missing or of the wrong type")]
    Key(String),
    /// A tensor the model needs is missing.
    #[error("GGUF tensor {0} is missing")]
    NoTensor(String),
    /// A model the portable engine cannot run yet (its architecture or tokenizer).
    #[error("{0} is not supported yet")]
    Unsupported(String),
    /// A tensor of a type or shape the model cannot use.
    #[error("GGUF tensor {name}: {why}")]
    Tensor {
        /// The tensor.
        name: String,
        /// What is wrong.
        why: String,
    },
}

/// A tensor element type (ggml's numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// 4-bit, blocks of 32 with an f16 scale and an f16 minimum (20 bytes a block).
    Q4_1,
    /// 8-bit, blocks of 32 with an f16 scale (34 bytes a block).
    Q8_0,
    /// Any other type, by number (not usable by the portable engine yet).
    Other(u32),
}

impl TensorType {
    fn from_u32(t: u32) -> TensorType {
        match t {
            0 => TensorType::F32,
            1 => TensorType::F16,
            3 => TensorType::Q4_1,
            8 => TensorType::Q8_0,
            n => TensorType::Other(n),
        }
    }

    /// Bytes taken by `n` elements, if the type is known and `n` fits its blocks.
    pub fn bytes(self, n: u64) -> Option<u64> {
        match self {
            TensorType::F32 => n.checked_mul(4),
            TensorType::F16 => n.checked_mul(2),
            TensorType::Q4_1 if n.is_multiple_of(32) => Some(n / 32 * 20),
            TensorType::Q8_0 if n.is_multiple_of(32) => Some(n / 32 * 34),
            _ => None,
        }
    }
}

/// A metadata value (arrays are kept only as their length, except arrays of strings).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Any unsigned or signed integer (bool as 0/1).
    Int(i128),
    /// f32 or f64.
    Float(f64),
    /// A string.
    Str(String),
    /// An array of strings (the vocabulary).
    Strings(Vec<String>),
    /// An array of integers (the token types).
    Ints(Vec<i128>),
    /// An array of anything else, by length.
    Array(u64),
}

/// A tensor's place in the file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Its element type.
    pub ty: TensorType,
    /// Its dimensions, innermost first (ggml's `ne`).
    pub dims: Vec<u64>,
    /// Its bytes within the file.
    pub range: Range<usize>,
}

/// A parsed GGUF file: metadata and tensor places; the tensors' bytes are read from
/// where they lie when they are asked for.
pub struct Gguf {
    data: Data,
    meta: HashMap<String, Value>,
    tensors: HashMap<String, TensorInfo>,
}

/// Where a GGUF's bytes are.
enum Data {
    /// All of them, in memory.
    Memory(Vec<u8>),
    /// In a file, read a tensor at a time: loading a model then holds the model it
    /// builds and one tensor of the file, not the whole file beside it.
    File(File),
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    /// The length of the whole file, of which `b` may be the start only: counts are
    /// checked against the file, and reading past `b` is [`GgufError::Truncated`].
    len: u64,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], GgufError> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.b.len())
            .ok_or(GgufError::Truncated(self.b.len() as u64))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }

    /// A count of items each at least `min` bytes long, checked against what is left.
    fn count(&mut self, what: &'static str, min: u64) -> Result<u64, GgufError> {
        let n = self.u64()?;
        let left = self.len.saturating_sub(self.pos as u64);
        if n.saturating_mul(min.max(1)) > left {
            return Err(GgufError::TooLarge { what, n });
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let at = self.pos as u64;
        let n = self.u64()?;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| GgufError::Utf8(at))
    }

    /// A scalar of type `ty`, or `None` for a type that is not a scalar.
    fn scalar(&mut self, ty: u32) -> Result<Option<Value>, GgufError> {
        Ok(Some(match ty {
            0 => Value::Int(self.arr::<1>()?[0] as i128),
            1 => Value::Int(self.arr::<1>()?[0] as i8 as i128),
            2 => Value::Int(u16::from_le_bytes(self.arr()?) as i128),
            3 => Value::Int(i16::from_le_bytes(self.arr()?) as i128),
            4 => Value::Int(self.u32()? as i128),
            5 => Value::Int(self.u32()? as i32 as i128),
            6 => Value::Float(f32::from_le_bytes(self.arr()?) as f64),
            7 => Value::Int(self.arr::<1>()?[0] as i128),
            8 => Value::Str(self.string()?),
            10 => Value::Int(self.u64()? as i128),
            11 => Value::Int(self.u64()? as i64 as i128),
            12 => Value::Float(f64::from_le_bytes(self.arr()?)),
            _ => return Ok(None),
        }))
    }

    fn value(&mut self, key: &str, ty: u32) -> Result<Value, GgufError> {
        if let Some(v) = self.scalar(ty)? {
            return Ok(v);
        }
        if ty != 9 {
            return Err(GgufError::ValueType {
                key: key.into(),
                ty,
            });
        }
        let ety = self.u32()?;
        let n = self.count("array", 1)?;
        if ety == 8 {
            // Grown as strings are read, not sized by the file's count.
            let mut v = Vec::with_capacity((n as usize).min(1 << 16));
            for _ in 0..n {
                v.push(self.string()?);
            }
            return Ok(Value::Strings(v));
        }
        let mut ints = Vec::with_capacity((n as usize).min(1 << 16));
        for _ in 0..n {
            match self.scalar(ety)? {
                Some(Value::Int(i)) => ints.push(i),
                Some(_) => {}
                None => {
                    return Err(GgufError::ValueType {
                        key: key.into(),
                        ty: ety,
                    })
                }
            }
        }
        Ok(if matches!(ety, 6 | 12) {
            Value::Array(n)
        } else {
            Value::Ints(ints)
        })
    }
}

/// The first bytes read of a GGUF file: its metadata and tensor table (SmolLM2's
/// vocabulary and merges take about 3 MB), read again four times larger while they go
/// on.
const HEAD_READ: usize = 4 << 20;

type Tables = (HashMap<String, Value>, HashMap<String, TensorInfo>);

impl Gguf {
    /// Parses `data`, the whole file.
    pub fn parse(data: Vec<u8>) -> Result<Gguf, GgufError> {
        let (meta, tensors) = Self::tables(&data, data.len() as u64)?;
        Ok(Gguf {
            data: Data::Memory(data),
            meta,
            tensors,
        })
    }

    /// Opens the GGUF file at `path`: reads its metadata and tensor table, and leaves
    /// the tensors in the file until they are asked for.
    pub fn open(path: &Path) -> std::io::Result<Result<Gguf, GgufError>> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut want = HEAD_READ;
        loop {
            let n = usize::try_from(len).map_or(want, |l| want.min(l));
            let mut head = vec![0; n];
            file.read_exact_at(&mut head, 0)?;
            match Self::tables(&head, len) {
                Err(GgufError::Truncated(_)) if (n as u64) < len => want = want.saturating_mul(4),
                Err(e) => return Ok(Err(e)),
                Ok((meta, tensors)) => {
                    return Ok(Ok(Gguf {
                        data: Data::File(file),
                        meta,
                        tensors,
                    }))
                }
            }
        }
    }

    /// The metadata and tensor table of a file of `len` bytes that starts with `head`.
    fn tables(head: &[u8], len: u64) -> Result<Tables, GgufError> {
        let mut c = Cursor {
            b: head,
            pos: 0,
            len,
        };
        if c.take(4).map_err(|_| GgufError::Magic)? != b"GGUF" {
            return Err(GgufError::Magic);
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let n_tensors = c.count("tensor count", 24)?;
        let n_kv = c.count("metadata count", 12)?;
        let mut meta = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let v = c.value(&key, ty)?;
            meta.insert(key, v);
        }
        let mut raw = Vec::with_capacity((n_tensors as usize).min(1 << 12));
        for _ in 0..n_tensors {
            let name = c.string()?;
            let nd = c.u32()?;
            if nd > 4 {
                return Err(GgufError::TooLarge {
                    what: "tensor dimensions",
                    n: nd as u64,
                });
            }
            let dims = (0..nd).map(|_| c.u64()).collect::<Result<Vec<_>, _>>()?;
            let ty = TensorType::from_u32(c.u32()?);
            let off = c.u64()?;
            raw.push((name, dims, ty, off));
        }
        let align = match meta.get("general.alignment") {
            Some(Value::Int(a)) if *a > 0 && (*a as u64).is_power_of_two() && *a <= 1 << 16 => {
                *a as usize
            }
            _ => 32,
        };
        let start = c.pos.div_ceil(align) * align;
        let mut tensors = HashMap::new();
        for (name, dims, ty, off) in raw {
            let n = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            let n_bytes = n.and_then(|n| ty.bytes(n));
            let range = n_bytes
                .and_then(|n_bytes| {
                    let s = (start as u64).checked_add(off)?;
                    let e = s.checked_add(n_bytes)?;
                    (e <= len).then_some(usize::try_from(s).ok()?..usize::try_from(e).ok()?)
                })
                // Tensors of unknown types get an empty range: usable by no one.
                .unwrap_or(0..0);
            if range.is_empty()
                && matches!(
                    ty,
                    TensorType::F32 | TensorType::F16 | TensorType::Q4_1 | TensorType::Q8_0
                )
            {
                return Err(GgufError::Tensor {
                    name,
                    why: "its bytes lie outside the file".into(),
                });
            }
            tensors.insert(name, TensorInfo { ty, dims, range });
        }
        Ok((meta, tensors))
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta.get(key)
    }

    /// An integer metadata value.
    pub fn int(&self, key: &str) -> Result<i128, GgufError> {
        match self.meta.get(key) {
            Some(Value::Int(v)) => Ok(*v),
            _ => Err(GgufError::Key(key.into())),
        }
    }

    /// A float metadata value.
    pub fn float(&self, key: &str) -> Result<f64, GgufError> {
        match self.meta.get(key) {
            Some(Value::Float(v)) => Ok(*v),
            _ => Err(GgufError::Key(key.into())),
        }
    }

    /// A string metadata value.
    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        match self.meta.get(key) {
            Some(Value::Str(v)) => Ok(v),
            _ => Err(GgufError::Key(key.into())),
        }
    }

    /// A tensor's place, if it is there.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// A tensor's bytes, checked to be of type `ty` and dimensions `dims` (read from
    /// the file, for a file opened with [`Gguf::open`]).
    pub fn tensor_bytes(
        &self,
        name: &str,
        ty: TensorType,
        dims: &[u64],
    ) -> Result<Cow<'_, [u8]>, GgufError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| GgufError::NoTensor(name.into()))?;
        if t.ty != ty || t.dims != dims {
            return Err(GgufError::Tensor {
                name: name.into(),
                why: format!(
                    "is {:?} {:?}, the model needs {:?} {:?}",
                    t.ty, t.dims, ty, dims
                ),
            });
        }
        match &self.data {
            Data::Memory(d) => Ok(Cow::Borrowed(&d[t.range.clone()])),
            Data::File(f) => {
                let mut b = vec![0; t.range.len()];
                f.read_exact_at(&mut b, t.range.start as u64)
                    .map_err(|_| GgufError::Truncated(t.range.end as u64))?;
                Ok(Cow::Owned(b))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The start of a version 3 file with these counts (other tests build files too).
    pub(crate) fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut v = b"GGUF".to_vec();
        v.extend(3u32.to_le_bytes());
        v.extend(n_tensors.to_le_bytes());
        v.extend(n_kv.to_le_bytes());
        v
    }

    /// Appends a GGUF string.
    pub(crate) fn string(v: &mut Vec<u8>, s: &str) {
        v.extend((s.len() as u64).to_le_bytes());
        v.extend(s.as_bytes());
    }

    #[test]
    fn a_small_file_parses_and_its_tensor_is_where_it_says() {
        let mut v = header(1, 2);
        string(&mut v, "a.n");
        v.extend(4u32.to_le_bytes());
        v.extend(7u32.to_le_bytes());
        string(&mut v, "a.s");
        v.extend(8u32.to_le_bytes());
        string(&mut v, "hi");
        string(&mut v, "w");
        v.extend(1u32.to_le_bytes());
        v.extend(2u64.to_le_bytes());
        v.extend(0u32.to_le_bytes());
        v.extend(0u64.to_le_bytes());
        while !v.len().is_multiple_of(32) {
            v.push(0);
        }
        v.extend(1.5f32.to_le_bytes());
        v.extend(2.5f32.to_le_bytes());
        // The same in memory and opened from a file (read a tensor at a time).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small.gguf");
        std::fs::write(&path, &v).unwrap();
        let want = v[v.len() - 8..].to_vec();
        for g in [Gguf::parse(v).unwrap(), Gguf::open(&path).unwrap().unwrap()] {
            assert_eq!(g.int("a.n").unwrap(), 7);
            assert_eq!(g.str("a.s").unwrap(), "hi");
            let b = g.tensor_bytes("w", TensorType::F32, &[2]).unwrap();
            assert_eq!(&b[..], &want[..]);
            assert!(g.tensor_bytes("w", TensorType::F16, &[2]).is_err());
            assert!(g.tensor_bytes("x", TensorType::F32, &[2]).is_err());
        }
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(matches!(
            Gguf::parse(b"GGU".to_vec()),
            Err(GgufError::Magic)
        ));
        let mut v = b"GGUF".to_vec();
        v.extend(9u32.to_le_bytes());
        assert!(matches!(Gguf::parse(v), Err(GgufError::Version(9))));
        // Counts no file of this length can hold.
        assert!(Gguf::parse(header(u64::MAX, 0)).is_err());
        assert!(Gguf::parse(header(0, 1 << 40)).is_err());
        // A tensor beyond the end.
        let mut v = header(1, 0);
        string(&mut v, "w");
        v.extend(1u32.to_le_bytes());
        v.extend(1000u64.to_le_bytes());
        v.extend(0u32.to_le_bytes());
        v.extend(0u64.to_le_bytes());
        assert!(matches!(Gguf::parse(v), Err(GgufError::Tensor { .. })));
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(v in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let mut f = header(2, 3);
            f.extend(v);
            let _ = Gguf::parse(f);
        }
    }
}
