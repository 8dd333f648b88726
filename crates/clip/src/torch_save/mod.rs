//! `torch.save` archives (the zip format of torch >= 1.6), read and written in Rust.
//!
//! libtorch's C++ unpickler (behind tch's `loadz`) turns `collections.OrderedDict`, the
//! type of every `model.state_dict()`, into `None`, so it can read neither a state dict
//! that Python saved as is nor one nested in a dict, as in
//! `torch.save({"model_state_dict": model.state_dict(), ...}, "best.pt")`. This module
//! runs the pickle opcodes such files use, builds tensors from the archive's storage
//! records, and writes archives that `torch.load` (also with `weights_only=True`) reads.
//!
//! An archive is a zip with one top folder (any name) holding `data.pkl` (the pickle),
//! `data/<key>` (one raw little-endian record per storage), `byteorder` and `version`,
//! every entry stored uncompressed.

mod unpickle;
mod zip;

use std::cell::RefCell;
use std::io::Write;
use std::path::Path;
use std::rc::Rc;
use tch::{Kind, Tensor};
use unpickle::Unpickler;
use zip::{Zip, ZipWriter};

/// A pickled value, as far as state dicts and the checkpoints around them need.
/// Anything else (objects of unknown classes, numpy scalars, ...) becomes `Other`,
/// which is fine as long as no tensor is looked for inside it.
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Tensor(Tensor),
    /// A storage record: its key under `data/` and its element type.
    Storage(String, Kind),
    /// A global (`module.name`), not called yet.
    Global(String),
    /// Something this reader does not model (named for error messages).
    Other(String),
}

// `Tensor` is not `Clone`; values are cloned the way Python shares them: by reference.
impl Clone for Value {
    fn clone(&self) -> Self {
        match self {
            Value::None => Value::None,
            Value::Bool(b) => Value::Bool(*b),
            Value::Int(i) => Value::Int(*i),
            Value::Float(f) => Value::Float(*f),
            Value::Str(s) => Value::Str(s.clone()),
            Value::Bytes(b) => Value::Bytes(b.clone()),
            Value::Tuple(t) => Value::Tuple(t.clone()),
            Value::List(l) => Value::List(l.clone()),
            Value::Dict(d) => Value::Dict(d.clone()),
            Value::Tensor(t) => Value::Tensor(t.shallow_clone()),
            Value::Storage(k, kind) => Value::Storage(k.clone(), *kind),
            Value::Global(g) => Value::Global(g.clone()),
            Value::Other(o) => Value::Other(o.clone()),
        }
    }
}

impl Value {
    fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::List(_) => "list".into(),
            Value::Dict(_) => "dict".into(),
            Value::Tensor(_) => "tensor".into(),
            Value::Storage(..) => "storage".into(),
            Value::Global(g) => g.clone(),
            Value::Other(o) => o.clone(),
        }
    }
}

/// Reads the tensors of the archive at `path`: those of the dict under `key` in the
/// top-level dict, or of the top-level dict itself when `key` is `None`. Other entries of
/// the top-level dict (optimizer state, epoch, ...) are not looked at.
pub(crate) fn load(path: &Path, key: Option<&str>) -> Result<Vec<(String, Tensor)>, String> {
    let mut zip = Zip::open(path)?;
    let pickle = zip.read(&zip.find("data.pkl")?.clone())?;
    if let Ok(entry) = zip.find("byteorder") {
        let order = zip.read(&entry.clone())?;
        if order != b"little" {
            return Err(format!(
                "byteorder {:?}: only little-endian archives are supported",
                String::from_utf8_lossy(&order)
            ));
        }
    }
    let top = Unpickler::new(&pickle, &mut zip).run()?;
    let dict = match key {
        None => top,
        Some(key) => {
            let Value::Dict(entries) = &top else {
                return Err(format!(
                    "the archive holds a {}, not a dict with {key:?}",
                    top.describe()
                ));
            };
            let entries = entries.borrow();
            let found = entries
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key));
            match found {
                Some((_, v)) => v.clone(),
                None => {
                    let keys: Vec<String> = entries
                        .iter()
                        .map(|(k, _)| match k {
                            Value::Str(s) => format!("{s:?}"),
                            other => other.describe(),
                        })
                        .collect();
                    return Err(format!(
                        "the top-level dict has no {key:?} (its keys: {})",
                        keys.join(", ")
                    ));
                }
            }
        }
    };
    let Value::Dict(entries) = dict else {
        return Err(format!(
            "expected a dict of tensors, found a {}",
            dict.describe()
        ));
    };
    let entries = entries.borrow();
    entries
        .iter()
        .map(|(k, v)| match (k, v) {
            (Value::Str(name), Value::Tensor(t)) => Ok((name.clone(), t.shallow_clone())),
            (Value::Str(name), other) => {
                Err(format!("{name} is a {}, not a tensor", other.describe()))
            }
            (other, _) => Err(format!(
                "a state dict key is a {}, not a str",
                other.describe()
            )),
        })
        .collect()
}

/// True when the pickle of the archive at `path` has `key` as a string within its first
/// bytes: how a top-level dict whose first key is `key` starts. Reads only the zip's
/// directory and the head of `data.pkl`.
pub(crate) fn starts_with_key(path: &Path, key: &str) -> bool {
    let Ok(mut zip) = Zip::open(path) else {
        return false;
    };
    let Ok(entry) = zip.find("data.pkl").cloned() else {
        return false;
    };
    let head = entry.size.min(256);
    let Ok(bytes) = zip.read_range(&entry, head) else {
        return false;
    };
    let mut binunicode = vec![b'X'];
    binunicode.extend_from_slice(&(key.len() as u32).to_le_bytes());
    binunicode.extend_from_slice(key.as_bytes());
    let mut short = vec![0x8c, key.len() as u8];
    short.extend_from_slice(key.as_bytes());
    // The top-level EMPTY_DICT comes right after PROTO (and FRAME in protocol 4).
    let dict_at = bytes.iter().take(16).position(|&b| b == b'}');
    dict_at.is_some_and(|at| {
        let rest = &bytes[at..];
        rest.windows(binunicode.len())
            .take(8)
            .any(|w| w == binunicode)
            || rest.windows(short.len()).take(8).any(|w| w == short)
    })
}

/// Writes an archive holding `{key: {name: tensor}}` (or the inner dict alone when `key`
/// is `None`) to `out`, tensors in the given order, each from a contiguous CPU copy in its
/// own kind (f32, f16, bf16, ...), one at a time. `folder` names the archive's top
/// folder, as torch.save names it after the file.
pub(crate) fn save(
    key: Option<&str>,
    tensors: &[(String, Tensor)],
    folder: &str,
    out: impl Write,
) -> Result<(), String> {
    let mut p = PickleWriter::default();
    p.out.extend_from_slice(&[0x80, 2]); // PROTO 2, as torch.save writes
    if let Some(key) = key {
        p.out.push(b'}');
        p.string(key);
    }
    p.out.push(b'}');
    let cpu = |t: &Tensor| t.detach().to_device(tch::Device::Cpu).contiguous();
    if !tensors.is_empty() {
        p.out.push(b'(');
        for (i, (name, t)) in tensors.iter().enumerate() {
            let t = cpu(t);
            let storage = storage_name(t.kind())
                .ok_or_else(|| format!("{name}: cannot save tensors of kind {:?}", t.kind()))?;
            p.string(name);
            p.tensor(&i.to_string(), storage, &t);
        }
        p.out.push(b'u'); // SETITEMS
    }
    if key.is_some() {
        p.out.push(b's'); // SETITEM
    }
    p.out.push(b'.');
    let mut zip = ZipWriter::new(out);
    zip.add(&format!("{folder}/data.pkl"), &p.out)?;
    zip.add(&format!("{folder}/byteorder"), b"little")?;
    for (i, (name, t)) in tensors.iter().enumerate() {
        let t = cpu(t);
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)
            .map_err(|e| format!("{name}: {e}"))?;
        zip.add(&format!("{folder}/data/{i}"), &bytes)?;
    }
    zip.add(&format!("{folder}/version"), b"3\n")?;
    zip.finish()
}

// ----------------------------------------------------------------------------- kinds

const STORAGES: &[(&str, Kind)] = &[
    ("FloatStorage", Kind::Float),
    ("HalfStorage", Kind::Half),
    ("BFloat16Storage", Kind::BFloat16),
    ("DoubleStorage", Kind::Double),
    ("LongStorage", Kind::Int64),
    ("IntStorage", Kind::Int),
    ("ShortStorage", Kind::Int16),
    ("CharStorage", Kind::Int8),
    ("ByteStorage", Kind::Uint8),
    ("BoolStorage", Kind::Bool),
];

fn storage_kind(global: &str) -> Option<Kind> {
    let name = global.strip_prefix("torch.")?;
    STORAGES.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

fn storage_name(kind: Kind) -> Option<&'static str> {
    STORAGES.iter().find(|(_, k)| *k == kind).map(|(n, _)| *n)
}

// ----------------------------------------------------------------------------- pickler

#[derive(Default)]
struct PickleWriter {
    out: Vec<u8>,
}

impl PickleWriter {
    fn string(&mut self, s: &str) {
        self.out.push(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: i64) {
        if let Ok(v) = i32::try_from(v) {
            self.out.push(b'J');
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            self.out.extend_from_slice(&[0x8a, 8]);
            self.out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }

    fn ints(&mut self, values: &[i64]) {
        self.out.push(b'(');
        for &v in values {
            self.int(v);
        }
        self.out.push(b't');
    }

    /// `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`,
    /// the storage being the persistent id `('storage', torch.<Kind>Storage, key, 'cpu', numel)`.
    fn tensor(&mut self, key: &str, storage: &str, t: &Tensor) {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.push(b'(');
        self.out.push(b'(');
        self.string("storage");
        self.global("torch", storage);
        self.string(key);
        self.string("cpu");
        self.int(t.numel() as i64);
        self.out.push(b't');
        self.out.push(b'Q');
        self.int(0);
        self.ints(&t.size());
        self.ints(&t.stride());
        self.out.push(0x89); // requires_grad False
        self.global("collections", "OrderedDict");
        self.out.push(b')');
        self.out.push(b'R');
        self.out.push(b't');
        self.out.push(b'R');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_names_kinds_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pt");
        let a = Tensor::from_slice(&[1.5f32, -2.0, 3.25, 0.0, 7.0, 8.0]).view([2, 3]);
        let b = Tensor::from_slice(&[1.0f32, 2.0]).to_kind(Kind::Half);
        let c = Tensor::from_slice(&[9i64, -1 << 40]);
        let tensors = vec![
            ("a.w".to_string(), a.tr()),
            ("b".into(), b),
            ("c".into(), c),
        ];
        let mut bytes = Vec::new();
        save(Some("model_state_dict"), &tensors, "x", &mut bytes).unwrap();
        std::fs::write(&path, bytes).unwrap();
        assert!(starts_with_key(&path, "model_state_dict"));
        assert!(!starts_with_key(&path, "state_dict"));
        let back = load(&path, Some("model_state_dict")).unwrap();
        assert_eq!(back.len(), 3);
        for ((n1, t1), (n2, t2)) in tensors.iter().zip(&back) {
            assert_eq!(n1, n2);
            assert_eq!(t1.kind(), t2.kind());
            assert_eq!(t1.size(), t2.size());
            assert!(t1.equal(t2), "{n1} differs");
        }
        let err = load(&path, Some("state_dict")).err().unwrap();
        assert!(err.contains("\"model_state_dict\""), "{err}");
        let err = load(&path, None).err().unwrap();
        assert!(err.contains("model_state_dict is a dict"), "{err}");
    }
}
