//! The pickle opcodes `torch.save` archives use, run into [`Value`]s; tensors are built
//! from the archive's storage records as the persistent ids name them.

use super::zip::Zip;
use super::{storage_kind, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use tch::{Kind, Tensor};

pub(super) struct Unpickler<'a> {
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
    pub(super) fn new(data: &'a [u8], zip: &'a mut Zip) -> Self {
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

    pub(super) fn run(mut self) -> Result<Value, String> {
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
