//! A GGUF header taken apart for tests that craft damaged model files: every metadata value
//! and tensor entry, where each length, count and offset field sits in the file, and writing a
//! (changed) header back in front of the original tensor data.

use std::ops::Range;

/// One metadata entry: its key, GGUF value type and the value's raw bytes.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: String,
    pub ty: u32,
    pub raw: Vec<u8>,
    /// Where the value's bytes sit in the original file.
    pub at: Range<usize>,
}

/// One tensor entry (dimensions innermost first, as GGUF stores them).
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub name: String,
    pub dims: Vec<u64>,
    pub dtype: u32,
    pub offset: u64,
    /// Where the dtype and offset fields sit in the original file.
    pub dtype_at: usize,
    pub offset_at: usize,
    /// Where each dimension sits.
    pub dims_at: Vec<usize>,
}

/// A length, count, dimension or offset field: its position and width in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub at: usize,
    pub width: usize,
}

#[derive(Debug, Clone)]
pub struct Gguf {
    pub version: u32,
    pub kvs: Vec<Kv>,
    pub tensors: Vec<TensorEntry>,
    /// Every length/count/offset/dimension field of the header.
    pub fields: Vec<Field>,
    /// Where the header ends and (aligned to 32) the data starts, in the original file.
    pub header_end: usize,
    pub data_start: usize,
}

struct Cur<'a> {
    b: &'a [u8],
    pos: usize,
    fields: Vec<Field>,
}

impl Cur<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn len(&mut self) -> u64 {
        self.fields.push(Field {
            at: self.pos,
            width: 8,
        });
        self.u64()
    }
    fn string(&mut self) -> String {
        let n = self.len() as usize;
        String::from_utf8_lossy(self.take(n)).into_owned()
    }
    /// Skips a value of type `ty`.
    fn skip(&mut self, ty: u32) {
        match ty {
            0 | 1 | 7 => self.pos += 1,
            2 | 3 => self.pos += 2,
            4..=6 => self.pos += 4,
            10..=12 => self.pos += 8,
            8 => {
                let n = self.len() as usize;
                self.pos += n;
            }
            9 => {
                let et = self.u32();
                let n = self.len();
                for _ in 0..n {
                    self.skip(et);
                }
            }
            t => panic!("unknown type {t}"),
        }
    }
}

impl Gguf {
    /// Takes a GGUF v2/v3 file's header apart.
    pub fn parse(b: &[u8]) -> Self {
        let mut c = Cur {
            b,
            pos: 0,
            fields: Vec::new(),
        };
        assert_eq!(c.u32(), 0x4655_4747, "not a GGUF file");
        let version = c.u32();
        let n_tensors = c.len();
        let n_kv = c.len();
        let mut kvs = Vec::new();
        for _ in 0..n_kv {
            let key = c.string();
            let ty = c.u32();
            let start = c.pos;
            c.skip(ty);
            kvs.push(Kv {
                key,
                ty,
                raw: b[start..c.pos].to_vec(),
                at: start..c.pos,
            });
        }
        let mut tensors = Vec::new();
        for _ in 0..n_tensors {
            let name = c.string();
            let nd = c.u32();
            let mut dims = Vec::new();
            let mut dims_at = Vec::new();
            for _ in 0..nd {
                dims_at.push(c.pos);
                dims.push(c.len());
            }
            let dtype_at = c.pos;
            let dtype = c.u32();
            let offset_at = c.pos;
            c.fields.push(Field {
                at: c.pos,
                width: 8,
            });
            let offset = c.u64();
            tensors.push(TensorEntry {
                name,
                dims,
                dtype,
                offset,
                dtype_at,
                offset_at,
                dims_at,
            });
        }
        let header_end = c.pos;
        Self {
            version,
            kvs,
            tensors,
            fields: c.fields,
            header_end,
            data_start: header_end.div_ceil(32) * 32,
        }
    }

    pub fn tensor_mut(&mut self, name: &str) -> &mut TensorEntry {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    pub fn tensor(&self, name: &str) -> &TensorEntry {
        self.tensors.iter().find(|t| t.name == name).unwrap()
    }

    /// Sets (or adds) a metadata value of type `ty` with these raw bytes.
    pub fn set(&mut self, key: &str, ty: u32, raw: Vec<u8>) {
        match self.kvs.iter_mut().find(|k| k.key == key) {
            Some(k) => {
                k.ty = ty;
                k.raw = raw;
            }
            None => self.kvs.push(Kv {
                key: key.into(),
                ty,
                raw,
                at: 0..0,
            }),
        }
    }

    pub fn set_u32(&mut self, key: &str, v: u32) {
        self.set(key, 4, v.to_le_bytes().to_vec());
    }

    pub fn set_f32(&mut self, key: &str, v: f32) {
        self.set(key, 6, v.to_le_bytes().to_vec());
    }

    /// The header written back, padded with zeros to `pad` bytes, followed by `original`'s
    /// tensor data.
    pub fn write(&self, original: &[u8], pad: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(original.len() + 4096);
        let s = |out: &mut Vec<u8>, t: &str| {
            out.extend_from_slice(&(t.len() as u64).to_le_bytes());
            out.extend_from_slice(t.as_bytes());
        };
        out.extend_from_slice(&0x4655_4747u32.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for kv in &self.kvs {
            s(&mut out, &kv.key);
            out.extend_from_slice(&kv.ty.to_le_bytes());
            out.extend_from_slice(&kv.raw);
        }
        for t in &self.tensors {
            s(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.dtype.to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        out.resize(out.len().div_ceil(pad) * pad, 0);
        out.extend_from_slice(&original[self.data_start..]);
        out
    }
}
