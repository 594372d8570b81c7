//! Reading a GGUF header (metadata and tensor index) with every count, length, shape and byte
//! range checked before anything is allocated for it.
//!
//! A GGUF file comes from strangers. candle's reader trusts a few fields (an alignment of 0
//! divides by zero; a tensor's dimensions can overflow their product), so this one builds
//! candle's [`Content`] itself and then checks the tensor index as a whole: each tensor's
//! bytes lie inside the file's data section, start on the file's alignment, hold whole blocks
//! of their type, and overlap no other tensor's.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::quantized::GgmlDType;

/// Most tensors a file may declare (a 70B llama has ~720; MoE models a few thousand).
pub const MAX_TENSORS: u64 = 1 << 16;
/// Most metadata entries a file may declare.
pub const MAX_METADATA: u64 = 1 << 16;
/// Longest metadata string (chat templates are tens of KiB; token strings a few bytes).
pub const MAX_STRING: u64 = 16 << 20;
/// Most array elements in one file, all arrays together (Llama 3's tokenizer has ~660K).
pub const MAX_ARRAY_ELEMENTS: u64 = 8 << 20;
/// Most elements in one tensor (2^40: 4 TiB of f32).
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 40;
/// Deepest nesting of arrays.
const MAX_DEPTH: usize = 4;
/// Largest alignment accepted (the spec's default is 32).
const MAX_ALIGNMENT: u64 = 1 << 16;

/// Reads and checks the header of a GGUF file of `file_size` bytes. The error is a sentence
/// about the file's content, without the path (the caller adds it).
pub fn read<R: Read + Seek>(reader: &mut R, file_size: u64) -> Result<Content, String> {
    reader.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut r = Reader {
        inner: reader,
        pos: 0,
        size: file_size,
        elements: 0,
        wide: true,
    };
    let magic = r.u32()?;
    if magic != 0x4655_4747 {
        return Err(format!(
            "it does not start with GGUF's magic bytes (found {magic:#010x})"
        ));
    }
    let magic = match r.u32()? {
        1 => VersionedMagic::GgufV1,
        2 => VersionedMagic::GgufV2,
        3 => VersionedMagic::GgufV3,
        v => return Err(format!("GGUF version {v} is not supported (1 to 3 are)")),
    };
    r.wide = !matches!(magic, VersionedMagic::GgufV1);
    let tensor_count = r.length()?;
    let kv_count = r.length()?;
    if tensor_count > MAX_TENSORS {
        return Err(format!(
            "the header declares {tensor_count} tensors (at most {MAX_TENSORS} are accepted)"
        ));
    }
    if kv_count > MAX_METADATA {
        return Err(format!(
            "the header declares {kv_count} metadata entries (at most {MAX_METADATA} are accepted)"
        ));
    }
    let mut metadata = HashMap::new();
    for _ in 0..kv_count {
        let key = r.string(MAX_STRING.min(1 << 16), "a metadata key")?;
        let ty = r.u32()?;
        let value = r
            .value(ty, 0)
            .map_err(|e| format!("metadata key {key}: {e}"))?;
        metadata.insert(key, value);
    }
    let mut tensors = Vec::new();
    let mut names = std::collections::HashSet::new();
    for _ in 0..tensor_count {
        let name = r.string(1 << 16, "a tensor name")?;
        let n_dims = r.u32()?;
        if !(1..=4).contains(&n_dims) {
            return Err(format!(
                "tensor {name} has {n_dims} dimensions (GGUF allows 1 to 4)"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.length()?);
        }
        let ty = r.u32()?;
        let dtype = dtype(ty).ok_or_else(|| format!("tensor {name} has unknown type {ty}"))?;
        let offset = r.u64()?;
        let elems = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= MAX_TENSOR_ELEMENTS);
        let Some(elems) = elems else {
            return Err(format!(
                "tensor {name} has dimensions {dims:?}, over {MAX_TENSOR_ELEMENTS} elements"
            ));
        };
        if elems == 0 {
            return Err(format!(
                "tensor {name} has dimensions {dims:?}: it is empty"
            ));
        }
        // GGUF lists the innermost dimension first; rows are made of whole blocks.
        let block = dtype.block_size() as u64;
        if !dims[0].is_multiple_of(block) {
            return Err(format!(
                "tensor {name} is {dtype:?} with rows of {} values, not a multiple of its block of {block}",
                dims[0]
            ));
        }
        let bytes = elems / block * dtype.type_size() as u64;
        dims.reverse();
        let dims = dims
            .into_iter()
            .map(usize::try_from)
            .collect::<Result<Vec<usize>, _>>()
            .map_err(|_| format!("tensor {name} is too large for this machine"))?;
        if !names.insert(name.clone()) {
            return Err(format!("tensor {name} is listed twice"));
        }
        tensors.push((name, dims, dtype, offset, bytes));
    }
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(v) => match v.to_u64() {
            Ok(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => a,
            _ => {
                return Err(format!(
                    "metadata key general.alignment is {v:?}: it must be a power of two up to {MAX_ALIGNMENT}"
                ))
            }
        },
    };
    let data_offset = r
        .pos
        .checked_next_multiple_of(alignment)
        .filter(|&o| o <= file_size)
        .ok_or_else(|| {
            "the file ends before its tensor data starts (is it truncated?)".to_string()
        })?;
    check_layout(&tensors, data_offset, alignment, file_size)?;
    let tensor_infos = tensors
        .into_iter()
        .map(|(name, dims, ggml_dtype, offset, _)| {
            let info = TensorInfo {
                ggml_dtype,
                shape: dims.into(),
                offset,
            };
            (name, info)
        })
        .collect();
    Ok(Content {
        magic,
        metadata,
        tensor_infos,
        tensor_data_offset: data_offset,
    })
}

/// Every tensor's bytes start on the alignment, lie inside the data section and overlap no
/// other tensor's; the data section ends at the file's end (give or take the padding).
fn check_layout(
    tensors: &[(String, Vec<usize>, GgmlDType, u64, u64)],
    data_offset: u64,
    alignment: u64,
    file_size: u64,
) -> Result<(), String> {
    let data_len = file_size - data_offset;
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(tensors.len());
    for (name, _, _, offset, bytes) in tensors {
        if !offset.is_multiple_of(alignment) {
            return Err(format!(
                "tensor {name} starts at offset {offset}, not a multiple of the file's alignment {alignment}"
            ));
        }
        match offset.checked_add(*bytes) {
            Some(end) if end <= data_len => spans.push((*offset, end, name)),
            _ => {
                return Err(format!(
                    "tensor {name} needs {bytes} bytes at offset {offset}, but the data section holds {data_len} \
                     (the file is truncated or its tensor index is damaged: download it again)"
                ))
            }
        }
    }
    // Writers pack tensors one after the other, each padded to the alignment: a gap is a
    // tensor whose type or offset does not match the bytes it was written with.
    spans.sort_unstable();
    if let Some(&(start, _, name)) = spans.first() {
        if start >= alignment {
            return Err(format!(
                "the first tensor, {name}, starts {start} bytes into the data section \
                 (its offset or type is damaged: download the file again)"
            ));
        }
    }
    for pair in spans.windows(2) {
        let ((_, end, a), (start, _, b)) = (pair[0], pair[1]);
        if start < end {
            return Err(format!(
                "tensors {a} and {b} overlap in the file (its tensor index is damaged: download it again)"
            ));
        }
        if start - end >= alignment {
            return Err(format!(
                "{} unused bytes lie between tensors {a} and {b}: the type or offset of one of \
                 them does not match its data (download the file again)",
                start - end
            ));
        }
    }
    let used = spans.last().map_or(0, |s| s.1);
    if !spans.is_empty() && data_len - used >= alignment {
        return Err(format!(
            "{} bytes follow the last tensor's data, more than the alignment's padding \
             (a wrong general.alignment or a damaged tensor index)",
            data_len - used
        ));
    }
    Ok(())
}

/// GGML's type numbers for the types candle reads.
fn dtype(ty: u32) -> Option<GgmlDType> {
    Some(match ty {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// Little-endian reads that know how many bytes are left.
struct Reader<'a, R> {
    inner: &'a mut R,
    pos: u64,
    size: u64,
    /// Array elements read so far, all arrays together.
    elements: u64,
    /// GGUF v2+ lengths are 64-bit; v1's 32-bit.
    wide: bool,
}

impl<R: Read> Reader<'_, R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        if self.size.saturating_sub(self.pos) < N as u64 {
            return Err("the header runs past the end of the file (is it truncated?)".into());
        }
        self.inner
            .read_exact(&mut b)
            .map_err(|e| format!("reading the header: {e}"))?;
        self.pos += N as u64;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, String> {
        self.bytes().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, String> {
        self.bytes().map(u64::from_le_bytes)
    }
    fn length(&mut self) -> Result<u64, String> {
        if self.wide {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }

    fn string(&mut self, max: u64, what: &str) -> Result<String, String> {
        let len = self.length()?;
        if len > max {
            return Err(format!(
                "{what} is {len} bytes long (at most {max} are accepted)"
            ));
        }
        if len > self.size.saturating_sub(self.pos) {
            return Err(format!(
                "{what} is {len} bytes long, past the end of the file (is it truncated?)"
            ));
        }
        let mut v = vec![0u8; len as usize];
        self.inner
            .read_exact(&mut v)
            .map_err(|e| format!("reading the header: {e}"))?;
        self.pos += len;
        // Some writers end strings with NULs; GGUF strings should be UTF-8 but are not always.
        while v.last() == Some(&0) {
            v.pop();
        }
        Ok(String::from_utf8_lossy(&v).into_owned())
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.bytes()?)),
            1 => Value::I8(i8::from_le_bytes(self.bytes()?)),
            2 => Value::U16(u16::from_le_bytes(self.bytes()?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.bytes()?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes()?)),
            7 => match self.bytes::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("a bool holds {b}")),
            },
            8 => Value::String(self.string(MAX_STRING, "a string")?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(format!("arrays nested deeper than {MAX_DEPTH}"));
                }
                let ty = self.u32()?;
                let len = self.length()?;
                // Every element takes at least one byte of the file.
                if len > self.size.saturating_sub(self.pos) {
                    return Err(format!(
                        "an array of {len} elements runs past the end of the file"
                    ));
                }
                self.elements = self.elements.saturating_add(len);
                if self.elements > MAX_ARRAY_ELEMENTS {
                    return Err(format!(
                        "the metadata's arrays hold over {MAX_ARRAY_ELEMENTS} elements"
                    ));
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(ty, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.bytes()?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes()?)),
            t => return Err(format!("unknown value type {t}")),
        })
    }
}
