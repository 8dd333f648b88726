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

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::rc::Rc;
use tch::{Kind, Tensor};

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

// ----------------------------------------------------------------------------- unpickler

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    zip: &'a mut Zip,
    /// Storages already read, by key: views of one storage share its data.
    storages: HashMap<String, Tensor>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8], zip: &'a mut Zip) -> Self {
        Unpickler {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            zip,
            storages: HashMap::new(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or("data.pkl ends in the middle of an opcode")?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("unterminated line in data.pkl")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> Result<Value, String> {
        let bytes = self.take(n)?;
        Ok(Value::Str(String::from_utf8_lossy(bytes).into_owned()))
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".into())
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        self.stack
            .last_mut()
            .ok_or_else(|| "pickle stack underflow".into())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("pickle MARK missing")?;
        if mark > self.stack.len() {
            return Err("pickle MARK past the stack".into());
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_get(&mut self, i: u32) -> Result<(), String> {
        let v = self
            .memo
            .get(&i)
            .cloned()
            .ok_or_else(|| format!("pickle memo {i} unset"))?;
        self.stack.push(v);
        Ok(())
    }

    fn memo_put(&mut self, i: u32) -> Result<(), String> {
        let v = self.top()?.clone();
        self.memo.insert(i, v);
        Ok(())
    }

    fn run(mut self) -> Result<Value, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.u64()?; // FRAME
                }
                b'.' => return self.pop(), // STOP
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v.into()));
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?;
                    if n > 8 {
                        self.stack
                            .push(Value::Other("int wider than 64 bits".into()));
                    } else {
                        let mut buf = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
                            [0xffu8; 8]
                        } else {
                            [0u8; 8]
                        };
                        buf[..n].copy_from_slice(bytes);
                        self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                    }
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.stack.push(Value::Float(v));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.u64()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                b'U' => {
                    // SHORT_BINSTRING (protocol 0-2 str of Python 2)
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let v = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(v));
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let v = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(v));
                }
                b'}' => self.stack.push(Value::Dict(Default::default())),
                b']' => self.stack.push(Value::List(Default::default())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b'(' => self.marks.push(self.stack.len()),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("pickle stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    self.stack.push(Value::Dict(Rc::new(RefCell::new(pairs))));
                }
                b'q' => {
                    let i = self.u8()?.into();
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u32; // MEMOIZE
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()?.into();
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    if let Value::List(l) = self.top()? {
                        l.borrow_mut().push(v);
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    if let Value::List(l) = self.top()? {
                        l.borrow_mut().extend(items);
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.borrow_mut().push((k, v)),
                        other => return Err(format!("SETITEM on a {}", other.describe())),
                    }
                }
                b'u' => {
                    let items = pairs(self.pop_mark()?)?;
                    match self.top()? {
                        Value::Dict(d) => d.borrow_mut().extend(items),
                        other => return Err(format!("SETITEMS on a {}", other.describe())),
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(format!("{module}.{name}")));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err("STACK_GLOBAL without strings".into());
                    };
                    self.stack.push(Value::Global(format!("{module}.{name}")));
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.stack.push(v);
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.call(func, args)?;
                    self.stack.push(v);
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args)
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    self.stack.push(Value::Other(cls.describe()));
                }
                b'b' => {
                    // BUILD: an OrderedDict's `_metadata` or an object's state; neither
                    // carries tensors of the state dict.
                    self.pop()?;
                }
                0x8f => self.stack.push(Value::Other("set".into())), // EMPTY_SET
                0x90 => {
                    // ADDITEMS
                    self.pop_mark()?;
                }
                0x91 => {
                    self.pop_mark()?; // FROZENSET
                    self.stack.push(Value::Other("frozenset".into()));
                }
                b'0' => {
                    self.pop()?; // POP
                }
                b'1' => {
                    self.pop_mark()?; // POP_MARK
                }
                b'2' => {
                    let v = self.top()?.clone(); // DUP
                    self.stack.push(v);
                }
                _ => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{op:02x} at byte {} of data.pkl",
                        self.pos - 1
                    ))
                }
            }
        }
    }

    /// `('storage', torch.<Kind>Storage, key, location, numel)`: the record `data/<key>`.
    fn persistent_load(&mut self, pid: Value) -> Result<Value, String> {
        let Value::Tuple(items) = pid else {
            return Err(format!("persistent id is a {}", pid.describe()));
        };
        match items.as_slice() {
            [Value::Str(tag), Value::Global(ty), Value::Str(key), _location, _numel]
                if tag == "storage" =>
            {
                let kind = storage_kind(ty).ok_or_else(|| format!("unsupported storage {ty}"))?;
                Ok(Value::Storage(key.clone(), kind))
            }
            _ => Err("persistent id is not a torch.save storage".into()),
        }
    }

    fn storage(&mut self, key: &str, kind: Kind) -> Result<Tensor, String> {
        if let Some(t) = self.storages.get(key) {
            return Ok(t.shallow_clone());
        }
        let entry = self.zip.find(&format!("data/{key}"))?.clone();
        let bytes = self.zip.read(&entry)?;
        let size = kind.elt_size_in_bytes();
        if bytes.len() % size != 0 {
            return Err(format!(
                "storage {key}: {} bytes is not a whole number of {kind:?}",
                bytes.len()
            ));
        }
        let numel = (bytes.len() / size) as i64;
        let t = Tensor::f_from_data_size(&bytes, &[numel], kind)
            .map_err(|e| format!("storage {key}: {e}"))?;
        self.storages.insert(key.to_string(), t.shallow_clone());
        Ok(t)
    }

    fn call(&mut self, func: Value, args: Value) -> Result<Value, String> {
        let Value::Global(name) = &func else {
            return Ok(Value::Other(format!("call of a {}", func.describe())));
        };
        let Value::Tuple(args) = args else {
            return Ok(Value::Other(name.clone()));
        };
        match name.as_str() {
            "collections.OrderedDict" | "builtins.dict" if args.is_empty() => {
                Ok(Value::Dict(Default::default()))
            }
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
                let [Value::Storage(key, kind), Value::Int(offset), Value::Tuple(size), Value::Tuple(stride), ..] =
                    args.as_slice()
                else {
                    return Err(format!("{name}: unexpected arguments"));
                };
                let ints = |t: &[Value]| -> Result<Vec<i64>, String> {
                    t.iter()
                        .map(|v| match v {
                            Value::Int(i) => Ok(*i),
                            _ => Err(format!("{name}: size or stride is not all ints")),
                        })
                        .collect()
                };
                let (size, stride) = (ints(size)?, ints(stride)?);
                let storage = self.storage(key, *kind)?;
                // Check the view lies inside the storage before asking libtorch for it.
                let last: i64 = size
                    .iter()
                    .zip(&stride)
                    .map(|(&n, &s)| (n - 1).max(0) * s)
                    .sum();
                let numel: i64 = size.iter().product();
                if numel > 0 && (*offset < 0 || offset + last >= storage.size()[0]) {
                    return Err(format!(
                        "{name}: view {size:?} at {offset} exceeds storage {key}"
                    ));
                }
                let t = storage
                    .f_as_strided(&size, &stride, Some(*offset))
                    .map_err(|e| format!("{name}: {e}"))?;
                Ok(Value::Tensor(t))
            }
            // TorchScript's pickler (tch's save_multi) tags dicts and lists with their type.
            "torch.jit._pickle.restore_type_tag"
            | "torch._utils._rebuild_parameter"
            | "torch._utils._rebuild_parameter_with_state" => {
                Ok(args.into_iter().next().unwrap_or(Value::None))
            }
            _ => Ok(Value::Other(name.clone())),
        }
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("odd number of items for a dict".into());
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
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

// ----------------------------------------------------------------------------- zip

#[derive(Clone)]
struct Entry {
    name: String,
    /// Offset of the entry's local header.
    header: u64,
    size: u64,
}

struct Zip {
    file: File,
    entries: Vec<Entry>,
}

fn le16(b: &[u8], at: usize) -> u64 {
    u16::from_le_bytes([b[at], b[at + 1]]).into()
}

fn le32(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()).into()
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl Zip {
    fn open(path: &Path) -> Result<Zip, String> {
        let mut file = File::open(path).map_err(|e| e.to_string())?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        let tail_len = len.min(65_557 + 20);
        let mut tail = vec![0u8; tail_len as usize];
        file.seek(SeekFrom::Start(len - tail_len))
            .and_then(|_| file.read_exact(&mut tail))
            .map_err(|e| e.to_string())?;
        let eocd = (0..tail.len().saturating_sub(21))
            .rev()
            .find(|&i| tail[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
            .ok_or("not a zip archive (no end of central directory)")?;
        let mut count = le16(&tail, eocd + 10);
        let mut cd_size = le32(&tail, eocd + 12);
        let mut cd_offset = le32(&tail, eocd + 16);
        if cd_offset == 0xffff_ffff || count == 0xffff || cd_size == 0xffff_ffff {
            // Zip64: the locator sits right before the end record.
            let loc = eocd
                .checked_sub(20)
                .filter(|&l| tail[l..l + 4] == [0x50, 0x4b, 0x06, 0x07])
                .ok_or("zip64 archive without its locator")?;
            let mut rec = [0u8; 56];
            file.seek(SeekFrom::Start(le64(&tail, loc + 8)))
                .and_then(|_| file.read_exact(&mut rec))
                .map_err(|e| e.to_string())?;
            if rec[..4] != [0x50, 0x4b, 0x06, 0x06] {
                return Err("bad zip64 end of central directory".into());
            }
            count = le64(&rec, 32);
            cd_size = le64(&rec, 40);
            cd_offset = le64(&rec, 48);
        }
        if cd_offset.checked_add(cd_size).is_none_or(|end| end > len) {
            return Err("zip central directory lies outside the file".into());
        }
        let mut cd = vec![0u8; cd_size as usize];
        file.seek(SeekFrom::Start(cd_offset))
            .and_then(|_| file.read_exact(&mut cd))
            .map_err(|e| e.to_string())?;
        let mut entries = Vec::new();
        let mut at = 0usize;
        for _ in 0..count {
            if at + 46 > cd.len() || cd[at..at + 4] != [0x50, 0x4b, 0x01, 0x02] {
                return Err("bad zip central directory entry".into());
            }
            let method = le16(&cd, at + 10);
            let mut size = le32(&cd, at + 24);
            let compressed = le32(&cd, at + 20);
            let name_len = le16(&cd, at + 28) as usize;
            let extra_len = le16(&cd, at + 30) as usize;
            let comment_len = le16(&cd, at + 32) as usize;
            let mut header = le32(&cd, at + 42);
            let end = at + 46 + name_len + extra_len + comment_len;
            if end > cd.len() {
                return Err("bad zip central directory entry".into());
            }
            let name = String::from_utf8_lossy(&cd[at + 46..at + 46 + name_len]).into_owned();
            // Zip64 extra field: the 64-bit values of the fields that hold 0xffffffff.
            let mut extra = &cd[at + 46 + name_len..at + 46 + name_len + extra_len];
            while extra.len() >= 4 {
                let (id, n) = (le16(extra, 0), le16(extra, 2) as usize);
                let body = &extra[4..(4 + n).min(extra.len())];
                if id == 1 {
                    let mut i = 0;
                    let mut next = |v: &mut u64| {
                        if *v == 0xffff_ffff && i + 8 <= body.len() {
                            *v = le64(body, i);
                            i += 8;
                        }
                    };
                    let mut c = compressed;
                    next(&mut size);
                    next(&mut c);
                    next(&mut header);
                }
                extra = &extra[(4 + n).min(extra.len())..];
            }
            if method != 0 {
                return Err(format!("{name} is compressed (method {method}); torch.save stores entries uncompressed"));
            }
            entries.push(Entry { name, header, size });
            at = end;
        }
        Ok(Zip { file, entries })
    }

    /// The entry `<top folder>/<name>`.
    fn find(&self, name: &str) -> Result<&Entry, String> {
        self.entries
            .iter()
            .find(|e| e.name.split_once('/').is_some_and(|(_, rest)| rest == name))
            .ok_or_else(|| format!("no {name} in the archive: not a torch.save file"))
    }

    fn read_range(&mut self, entry: &Entry, len: u64) -> Result<Vec<u8>, String> {
        let mut local = [0u8; 30];
        self.file
            .seek(SeekFrom::Start(entry.header))
            .and_then(|_| self.file.read_exact(&mut local))
            .map_err(|e| e.to_string())?;
        if local[..4] != [0x50, 0x4b, 0x03, 0x04] {
            return Err(format!("{}: bad zip local header", entry.name));
        }
        let data = entry.header + 30 + le16(&local, 26) + le16(&local, 28);
        let mut bytes = vec![0u8; len as usize];
        self.file
            .seek(SeekFrom::Start(data))
            .and_then(|_| self.file.read_exact(&mut bytes))
            .map_err(|e| format!("{}: {e}", entry.name))?;
        Ok(bytes)
    }

    fn read(&mut self, entry: &Entry) -> Result<Vec<u8>, String> {
        self.read_range(entry, entry.size)
    }
}

/// Writes stored (uncompressed) entries, each entry's data aligned to 64 bytes as torch's
/// own writer does (padding in the local header's extra field). No zip64: archives must
/// stay under 4 GiB (ViT-L/14 in f32 is 1.7 GB).
struct ZipWriter<W: Write> {
    out: W,
    /// Bytes written so far.
    pos: u64,
    central: Vec<u8>,
    count: u16,
}

impl<W: Write> ZipWriter<W> {
    fn new(out: W) -> Self {
        ZipWriter {
            out,
            pos: 0,
            central: Vec::new(),
            count: 0,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.out.write_all(bytes).map_err(|e| e.to_string())?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn add(&mut self, name: &str, data: &[u8]) -> Result<(), String> {
        let offset = self.pos;
        let base = offset as usize + 30 + name.len();
        let pad = (64 - (base + 4) % 64) % 64;
        let end = base + 4 + pad + data.len();
        if end as u64 >= u32::MAX as u64 || data.len() as u64 >= u32::MAX as u64 {
            return Err("archive over 4 GiB: not supported".into());
        }
        let crc = crc32(data);
        let fields = |out: &mut Vec<u8>| {
            out.extend_from_slice(&20u16.to_le_bytes()); // version needed
            out.extend_from_slice(&0u16.to_le_bytes()); // flags
            out.extend_from_slice(&0u16.to_le_bytes()); // stored
            out.extend_from_slice(&0u16.to_le_bytes()); // time
            out.extend_from_slice(&0x21u16.to_le_bytes()); // date 1980-01-01
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        };
        let mut local = vec![0x50, 0x4b, 0x03, 0x04];
        fields(&mut local);
        local.extend_from_slice(&((4 + pad) as u16).to_le_bytes());
        local.extend_from_slice(name.as_bytes());
        local.extend_from_slice(b"FB");
        local.extend_from_slice(&(pad as u16).to_le_bytes());
        local.resize(local.len() + pad, b'Z');
        self.write(&local)?;
        self.write(data)?;

        self.central.extend_from_slice(&[0x50, 0x4b, 0x01, 0x02]);
        self.central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        fields(&mut self.central);
        self.central.extend_from_slice(&0u16.to_le_bytes()); // extra
        self.central.extend_from_slice(&0u16.to_le_bytes()); // comment
        self.central.extend_from_slice(&0u16.to_le_bytes()); // disk
        self.central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        self.central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        self.central
            .extend_from_slice(&(offset as u32).to_le_bytes());
        self.central.extend_from_slice(name.as_bytes());
        self.count = self
            .count
            .checked_add(1)
            .filter(|&c| c < u16::MAX)
            .ok_or("too many zip entries")?;
        Ok(())
    }

    fn finish(mut self) -> Result<(), String> {
        let cd_offset = self.pos;
        if cd_offset + self.central.len() as u64 >= u32::MAX as u64 {
            return Err("archive over 4 GiB: not supported".into());
        }
        let mut end = std::mem::take(&mut self.central);
        let cd_len = end.len() as u32;
        end.extend_from_slice(&[0x50, 0x4b, 0x05, 0x06]);
        end.extend_from_slice(&0u16.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        end.extend_from_slice(&self.count.to_le_bytes());
        end.extend_from_slice(&self.count.to_le_bytes());
        end.extend_from_slice(&cd_len.to_le_bytes());
        end.extend_from_slice(&(cd_offset as u32).to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        self.write(&end)?;
        self.out.flush().map_err(|e| e.to_string())
    }
}

fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_known_input() {
        // The standard check value of CRC-32 (IEEE).
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

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
