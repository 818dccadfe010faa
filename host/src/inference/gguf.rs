//! A reader for GGUF files (version 2 and 3): the metadata key/values and
//! the tensor table. Tensor data is left in the file; [`GgufFile::data_offset`]
//! and each [`TensorInfo::offset`] locate it.

use std::collections::BTreeMap;

use bytes::Bytes;
use std::fmt;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Longest string the reader accepts: a guard against a corrupt length
/// asking for gigabytes.
const MAX_STRING_BYTES: u64 = 64 * 1024 * 1024;
/// Most elements in one metadata array.
const MAX_ARRAY_LEN: u64 = 16 * 1024 * 1024;
/// Deepest nesting of metadata arrays (real files nest none): deeper would
/// recurse once per 12 bytes of file.
const MAX_ARRAY_DEPTH: u32 = 4;
/// Elements reserved up front for an array: the length is the file's
/// word, so memory grows only as elements are actually read.
const ARRAY_RESERVE: usize = 4096;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Unsigned integer (u8, u16, u32, u64).
    U64(u64),
    /// Signed integer (i8, i16, i32, i64).
    I64(i64),
    /// Float (f32, f64).
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    String(String),
    /// Array of values.
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// How a tensor's elements are stored (ggml's type ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    BF16,
    /// 4-bit, blocks of 32 with an f16 scale.
    Q4_0,
    /// 4-bit, blocks of 32 with f16 scale and minimum.
    Q4_1,
    /// 5-bit, blocks of 32.
    Q5_0,
    /// 5-bit with minimum, blocks of 32.
    Q5_1,
    /// 8-bit, blocks of 32 with an f16 scale.
    Q8_0,
    /// 2-bit k-quant.
    Q2K,
    /// 3-bit k-quant.
    Q3K,
    /// 4-bit k-quant, super-blocks of 256.
    Q4K,
    /// 5-bit k-quant.
    Q5K,
    /// 6-bit k-quant, super-blocks of 256.
    Q6K,
    /// 8-bit k-quant.
    Q8K,
    /// Any other ggml type, by id.
    Other(u32),
}

impl TensorType {
    fn from_id(id: u32) -> TensorType {
        match id {
            0 => TensorType::F32,
            1 => TensorType::F16,
            2 => TensorType::Q4_0,
            3 => TensorType::Q4_1,
            6 => TensorType::Q5_0,
            7 => TensorType::Q5_1,
            8 => TensorType::Q8_0,
            10 => TensorType::Q2K,
            11 => TensorType::Q3K,
            12 => TensorType::Q4K,
            13 => TensorType::Q5K,
            14 => TensorType::Q6K,
            15 => TensorType::Q8K,
            30 => TensorType::BF16,
            other => TensorType::Other(other),
        }
    }

    /// (elements per block, bytes per block), where known.
    pub fn block_layout(self) -> Option<(u64, u64)> {
        Some(match self {
            TensorType::F32 => (1, 4),
            TensorType::F16 | TensorType::BF16 => (1, 2),
            TensorType::Q4_0 => (32, 18),
            TensorType::Q4_1 => (32, 20),
            TensorType::Q5_0 => (32, 22),
            TensorType::Q5_1 => (32, 24),
            TensorType::Q8_0 => (32, 34),
            TensorType::Q2K => (256, 84),
            TensorType::Q3K => (256, 110),
            TensorType::Q4K => (256, 144),
            TensorType::Q5K => (256, 176),
            TensorType::Q6K => (256, 210),
            TensorType::Q8K => (256, 292),
            TensorType::Other(_) => return None,
        })
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorType::Other(id) => write!(f, "ggml type {id}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name, for example `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost (fastest-varying) first, as GGUF stores them.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: TensorType,
    /// Offset of its data from [`GgufFile::data_offset`].
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims
            .iter()
            .try_fold(1u64, |n, d| n.checked_mul(*d))
            .unwrap_or(u64::MAX)
    }

    /// Size of its data in bytes, if the type's layout is known.
    pub fn byte_size(&self) -> Option<u64> {
        let (per_block, bytes) = self.ty.block_layout()?;
        self.elements().div_ceil(per_block).checked_mul(bytes)
    }
}

/// A GGUF file's header: metadata and tensor table.
#[derive(Debug, Clone)]
pub struct GgufFile {
    /// The file it was read from.
    pub path: PathBuf,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata key/values.
    pub metadata: BTreeMap<String, Value>,
    /// The tensor table, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Where tensor data starts in the file.
    pub data_offset: u64,
}

/// Why a GGUF file cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// Reading failed (or the file ended early).
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: std::io::Error,
    },
    /// Not a GGUF file, or a version this reader does not know.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

struct Reader<R> {
    inner: R,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn u32(&mut self) -> std::io::Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> std::io::Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn string(&mut self) -> std::io::Result<String> {
        let len = self.u64()?;
        if len > MAX_STRING_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a string of {len} bytes is longer than any GGUF string should be"),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        self.inner.read_exact(&mut buf)?;
        String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    fn value(&mut self, ty: u32) -> std::io::Result<Value> {
        self.value_at(ty, 0)
    }

    fn value_at(&mut self, ty: u32, depth: u32) -> std::io::Result<Value> {
        Ok(match ty {
            0 => Value::U64(u64::from(self.bytes::<1>()?[0])),
            1 => Value::I64(i64::from(self.bytes::<1>()?[0] as i8)),
            2 => Value::U64(u64::from(u16::from_le_bytes(self.bytes()?))),
            3 => Value::I64(i64::from(i16::from_le_bytes(self.bytes()?))),
            4 => Value::U64(u64::from(self.u32()?)),
            5 => Value::I64(i64::from(i32::from_le_bytes(self.bytes()?))),
            6 => Value::F64(f64::from(f32::from_le_bytes(self.bytes()?))),
            7 => Value::Bool(self.bytes::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                let elem = self.u32()?;
                let len = self.u64()?;
                if len > MAX_ARRAY_LEN {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "an array of {len} elements is longer than any GGUF array should be"
                        ),
                    ));
                }
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("arrays nested more than {MAX_ARRAY_DEPTH} deep"),
                    ));
                }
                let mut items = Vec::with_capacity((len as usize).min(ARRAY_RESERVE));
                for _ in 0..len {
                    items.push(self.value_at(elem, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.bytes()?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes()?)),
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unknown metadata value type {other}"),
                ));
            }
        })
    }
}

impl GgufFile {
    /// Read the header of the GGUF file at `path`.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let file = std::fs::File::open(path).map_err(|reason| GgufError::Io {
            path: path.to_path_buf(),
            reason,
        })?;
        Self::from_reader(BufReader::new(file), path)
    }

    /// Read a GGUF header from `reader` (positioned at the start); `path`
    /// names it in errors. Every length in the file is checked before it
    /// is trusted: this is what the fuzz target `gguf` drives.
    pub fn from_reader(reader: impl Read + Seek, path: &Path) -> Result<GgufFile, GgufError> {
        let io = |reason| GgufError::Io {
            path: path.to_path_buf(),
            reason,
        };
        let format = |message: String| GgufError::Format {
            path: path.to_path_buf(),
            message,
        };
        let mut r = Reader { inner: reader };
        let magic: [u8; 4] = r.bytes().map_err(io)?;
        if &magic != MAGIC {
            return Err(format(
                "not a GGUF file (it does not start with \"GGUF\")".into(),
            ));
        }
        let version = r.u32().map_err(io)?;
        if !(2..=3).contains(&version) {
            return Err(format(format!(
                "GGUF version {version} is not supported (this reader knows versions 2 and 3)"
            )));
        }
        let tensor_count = r.u64().map_err(io)?;
        let kv_count = r.u64().map_err(io)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string().map_err(io)?;
            let ty = r.u32().map_err(io)?;
            let value = r
                .value(ty)
                .map_err(|e| format(format!("metadata `{key}`: {e}")))?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::new();
        for _ in 0..tensor_count {
            let name = r.string().map_err(io)?;
            let n_dims = r.u32().map_err(io)?;
            if n_dims > 8 {
                return Err(format(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64())
                .collect::<Result<Vec<_>, _>>()
                .map_err(io)?;
            let ty = TensorType::from_id(r.u32().map_err(io)?);
            let offset = r.u64().map_err(io)?;
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
            });
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .filter(|a| *a > 0)
            .unwrap_or(DEFAULT_ALIGNMENT);
        let header_end = r.inner.stream_position().map_err(io)?;
        let data_offset = header_end
            .div_ceil(alignment)
            .checked_mul(alignment)
            .ok_or_else(|| format(format!("alignment {alignment} is not usable")))?;
        let file_len = r.inner.seek(SeekFrom::End(0)).map_err(io)?;
        for t in &tensors {
            let end = t
                .byte_size()
                .and_then(|size| data_offset.checked_add(t.offset)?.checked_add(size));
            if t.ty.block_layout().is_some() && end.is_none_or(|end| end > file_len) {
                return Err(format(format!(
                    "tensor `{}` ends past the end of the file (the file is truncated?)",
                    t.name
                )));
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_offset,
        })
    }

    /// The metadata value `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The metadata value `key` as an integer, or an error naming it.
    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| GgufError::Format {
                path: self.path.clone(),
                message: format!("metadata `{key}` is missing or not an integer"),
            })
    }

    /// The model architecture (`general.architecture`).
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Tensor `name` and its size in bytes, or why it cannot be read.
    fn sized_tensor(&self, name: &str) -> Result<(TensorInfo, u64), GgufError> {
        let format = |message: String| GgufError::Format {
            path: self.path.clone(),
            message,
        };
        let info = self
            .tensor(name)
            .ok_or_else(|| format(format!("no tensor named `{name}`")))?
            .clone();
        let size = info.byte_size().ok_or_else(|| {
            format(format!(
                "tensor `{name}` has type {}, which is not supported",
                info.ty
            ))
        })?;
        Ok((info, size))
    }

    /// The raw bytes of tensor `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<(TensorInfo, Vec<u8>), GgufError> {
        let (info, size) = self.sized_tensor(name)?;
        let io = |reason| GgufError::Io {
            path: self.path.clone(),
            reason,
        };
        let mut file = std::fs::File::open(&self.path).map_err(io)?;
        file.seek(SeekFrom::Start(self.data_offset + info.offset))
            .map_err(io)?;
        let mut bytes = vec![0u8; size as usize];
        file.read_exact(&mut bytes).map_err(io)?;
        Ok((info, bytes))
    }

    /// The whole file, memory-mapped read-only: tensors sliced from it with
    /// [`tensor_slice`](Self::tensor_slice) share the page cache instead of
    /// being copied, and pages are read in when first touched (tensors
    /// copied at load, then released, never hold their pages all at once).
    pub fn map(&self) -> Result<Bytes, GgufError> {
        let io = |reason| GgufError::Io {
            path: self.path.clone(),
            reason,
        };
        let file = std::fs::File::open(&self.path).map_err(io)?;
        // SAFETY: the map is read-only and private. Writing the file while
        // it is mapped changes the weights the model computes with, as
        // replacing it before loading would; truncating it makes reads of
        // the lost pages fault (SIGBUS), as with llama.cpp's mmap. The
        // model directory is the operator's, not a client's or a plugin's.
        let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(io)?;
        Ok(Bytes::from_owner(map))
    }

    /// The bytes of tensor `name` within `map` (this file's
    /// [`map`](Self::map)), shared, not copied.
    pub fn tensor_slice(&self, map: &Bytes, name: &str) -> Result<(TensorInfo, Bytes), GgufError> {
        let (info, size) = self.sized_tensor(name)?;
        // Checked at open against the file's length then; checked again
        // against the map, in case the file shrank since.
        let range = self
            .data_offset
            .checked_add(info.offset)
            .and_then(|start| Some(start..start.checked_add(size)?))
            .filter(|r| r.end <= map.len() as u64)
            .ok_or_else(|| GgufError::Format {
                path: self.path.clone(),
                message: format!(
                    "tensor `{name}` ends past the end of the file (the file is truncated?)"
                ),
            })?;
        Ok((info, map.slice(range.start as usize..range.end as usize)))
    }

    /// Tensor `name` dequantized to f32, in GGUF order (innermost dimension
    /// fastest).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let (info, bytes) = self.tensor_bytes(name)?;
        super::quant::dequantize(info.ty, &bytes, info.elements() as usize).map_err(|e| {
            GgufError::Format {
                path: self.path.clone(),
                message: format!("tensor `{name}`: {e}"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_gguf(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        f
    }

    fn header(version: u32, tensors: u64, kvs: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(version.to_le_bytes());
        b.extend(tensors.to_le_bytes());
        b.extend(kvs.to_le_bytes());
        b
    }

    fn string(s: &str) -> Vec<u8> {
        let mut b = (s.len() as u64).to_le_bytes().to_vec();
        b.extend(s.as_bytes());
        b
    }

    #[test]
    fn reads_metadata_and_tensor_table() {
        let mut b = header(3, 1, 2);
        b.extend(string("general.architecture"));
        b.extend(8u32.to_le_bytes());
        b.extend(string("llama"));
        b.extend(string("llama.block_count"));
        b.extend(4u32.to_le_bytes());
        b.extend(30u32.to_le_bytes());
        b.extend(string("w"));
        b.extend(2u32.to_le_bytes());
        b.extend(4u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(0u32.to_le_bytes()); // F32
        b.extend(0u64.to_le_bytes());
        let data_start = b.len().div_ceil(32) * 32;
        b.resize(data_start + 32, 0);
        let f = write_gguf(&b);
        let g = GgufFile::open(f.path()).unwrap();
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.require_u64("llama.block_count").unwrap(), 30);
        let w = g.tensor("w").unwrap();
        assert_eq!(
            (w.dims.clone(), w.ty, w.byte_size()),
            (vec![4, 2], TensorType::F32, Some(32))
        );
        assert_eq!(g.data_offset, data_start as u64);
        let err = g.require_u64("llama.nope").unwrap_err().to_string();
        assert!(err.contains("`llama.nope` is missing"), "{err}");
    }

    #[test]
    fn mapped_tensors_are_the_file_bytes_and_a_shrunk_file_is_refused() {
        let mut b = header(3, 1, 0);
        b.extend(string("w"));
        b.extend(2u32.to_le_bytes());
        b.extend(4u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(0u32.to_le_bytes()); // F32
        b.extend(0u64.to_le_bytes());
        let data_start = b.len().div_ceil(32) * 32;
        b.resize(data_start, 0);
        b.extend((0..8).flat_map(|i| (i as f32).to_le_bytes()));
        let f = write_gguf(&b);
        let g = GgufFile::open(f.path()).unwrap();
        let map = g.map().unwrap();
        let (_, mapped) = g.tensor_slice(&map, "w").unwrap();
        assert_eq!(&mapped[..], &g.tensor_bytes("w").unwrap().1[..]);
        let err = g.tensor_slice(&map, "nope").unwrap_err().to_string();
        assert!(err.contains("no tensor named `nope`"), "{err}");

        // The file loses its last bytes after the header was read.
        f.as_file().set_len(b.len() as u64 - 4).unwrap();
        let map = g.map().unwrap();
        let err = g.tensor_slice(&map, "w").unwrap_err().to_string();
        assert!(err.contains("`w` ends past the end of the file"), "{err}");
    }

    #[test]
    fn refuses_bad_magic_version_and_truncation() {
        let f = write_gguf(b"GGML....");
        let err = GgufFile::open(f.path()).unwrap_err().to_string();
        assert!(err.contains("not a GGUF file"), "{err}");

        let f = write_gguf(&header(9, 0, 0));
        let err = GgufFile::open(f.path()).unwrap_err().to_string();
        assert!(err.contains("version 9"), "{err}");

        let mut b = header(3, 1, 0);
        b.extend(string("w"));
        b.extend(1u32.to_le_bytes());
        b.extend(1024u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        let f = write_gguf(&b);
        let err = GgufFile::open(f.path()).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");

        let f = write_gguf(&header(3, 0, 1)[..20]);
        assert!(matches!(
            GgufFile::open(f.path()),
            Err(GgufError::Io { .. })
        ));
    }
}
