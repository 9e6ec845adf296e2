//! The subset of Python's pickle that `torch.save` writes for a state dict (protocols 2 to 5,
//! and Python 2's byte strings in old files): enough to rebuild dicts, lists, tuples, strings,
//! numbers and the tensors inside them, nothing that runs code. A global is never imported: the
//! few callables a state dict names (`torch._utils._rebuild_tensor_v2`, `collections.OrderedDict`,
//! ...) are recognised by name, and any other becomes an opaque [`Value::Object`], which is an
//! error only where a tensor is wanted.

use anyhow::{anyhow, bail, Result};

/// A value of the pickle machine. Containers refer to other values by their index in
/// [`Machine::values`], so that a memoised dict filled later (SETITEMS after BINPUT) is the same
/// dict wherever it is referred to.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i128),
    /// A float (a training checkpoint's learning rate, say): never a weight, so not kept.
    Float,
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<usize>),
    List(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    /// A global by module and name, not imported.
    Global(String, String),
    /// The persistent id of a storage: `('storage', type, key, location, numel[, view])`.
    Storage(Storage),
    /// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`.
    Tensor(TensorRef),
    /// The result of calling any other global (its name), or of a class without a recognised
    /// reduction.
    Object(String),
}

/// A storage named by a persistent id: the element type (from `torch.FloatStorage` and the
/// like), the key of its bytes in the file, its element count, and for a legacy view the
/// view's key, offset and length in elements within the root storage.
#[derive(Clone, Debug)]
pub struct Storage {
    pub dtype: String,
    pub key: String,
    pub numel: u64,
    pub view: Option<(String, u64, u64)>,
}

/// A tensor over a storage: offset, shape and strides in elements.
#[derive(Clone, Debug)]
pub struct TensorRef {
    pub storage: Storage,
    pub offset: u64,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A finished run of the machine: the values and the index of the pickled object.
pub struct Machine {
    pub values: Vec<Value>,
    pub root: usize,
}

impl Machine {
    pub fn get(&self, i: usize) -> &Value {
        &self.values[i]
    }

    /// The value at `i` as a string, if it is one (Python 3 `str` or a Python 2 byte string).
    pub fn str(&self, i: usize) -> Option<&str> {
        str_at(&self.values, i)
    }
}

fn str_at(values: &[Value], i: usize) -> Option<&str> {
    match &values[i] {
        Value::Str(s) => Some(s),
        Value::Bytes(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

fn u64_at(values: &[Value], i: usize) -> Option<u64> {
    match &values[i] {
        Value::Int(v) => u64::try_from(*v).ok(),
        Value::Bool(b) => Some(*b as u64),
        _ => None,
    }
}

fn usizes_at(values: &[Value], i: usize) -> Option<Vec<usize>> {
    match &values[i] {
        Value::Tuple(v) | Value::List(v) => v.iter().map(|&e| u64_at(values, e).map(|x| x as usize)).collect(),
        _ => None,
    }
}

/// Reads one pickle from the start of `data`; returns the machine and the bytes it used.
pub fn load(data: &[u8]) -> Result<(Machine, usize)> {
    let mut m = Run { data, pos: 0, values: vec![], stack: vec![], marks: vec![], memo: Default::default() };
    let root = m.run()?;
    Ok((Machine { values: m.values, root }, m.pos))
}

struct Run<'a> {
    data: &'a [u8],
    pos: usize,
    values: Vec<Value>,
    stack: Vec<usize>,
    marks: Vec<usize>,
    memo: std::collections::HashMap<u64, usize>,
}

impl Run<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| anyhow!("the pickle ends inside an operand at byte {} (truncated?)", self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn le(&mut self, n: usize) -> Result<u64> {
        Ok(self.take(n)?.iter().rev().fold(0u64, |a, &b| (a << 8) | b as u64))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| anyhow!("unterminated GLOBAL operand"))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
    fn push(&mut self, v: Value) {
        self.values.push(v);
        self.stack.push(self.values.len() - 1);
    }
    fn pop(&mut self) -> Result<usize> {
        self.stack.pop().ok_or_else(|| anyhow!("pickle stack underflow at byte {}", self.pos))
    }
    fn top(&self) -> Result<usize> {
        self.stack.last().copied().ok_or_else(|| anyhow!("pickle stack underflow at byte {}", self.pos))
    }
    /// The items above the last MARK, removed with it.
    fn pop_mark(&mut self) -> Result<Vec<usize>> {
        let m = self.marks.pop().ok_or_else(|| anyhow!("pickle MARK missing at byte {}", self.pos))?;
        if m > self.stack.len() {
            bail!("pickle MARK above the stack at byte {}", self.pos);
        }
        Ok(self.stack.split_off(m))
    }
    fn string(&mut self, n: usize, utf8: bool) -> Result<()> {
        let b = self.take(n)?.to_vec();
        let v = if utf8 {
            Value::Str(String::from_utf8(b).map_err(|_| anyhow!("a pickled str is not UTF-8"))?)
        } else {
            Value::Bytes(b)
        };
        self.push(v);
        Ok(())
    }
    fn memo_get(&mut self, k: u64) -> Result<()> {
        let i = *self.memo.get(&k).ok_or_else(|| anyhow!("pickle memo entry {k} read before it was written"))?;
        self.stack.push(i);
        Ok(())
    }
    fn set_items(&mut self, dict: usize, items: &[usize]) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            bail!("pickle SETITEMS with an odd number of items");
        }
        let pairs = items.chunks(2).map(|p| (p[0], p[1]));
        match &mut self.values[dict] {
            Value::Dict(d) => d.extend(pairs),
            // A dict subclass rebuilt as an object (a state dict's own class): its items matter.
            v @ Value::Object(_) => *v = Value::Dict(pairs.collect()),
            v => bail!("pickle SETITEMS on a {}", kind(v)),
        }
        Ok(())
    }

    /// APPEND / APPENDS: `items` onto the list at the top of the stack.
    fn append(&mut self, items: &[usize]) -> Result<()> {
        let l = self.top()?;
        match &mut self.values[l] {
            Value::List(v) => v.extend_from_slice(items),
            v => bail!("pickle APPEND(S) on a {}", kind(v)),
        }
        Ok(())
    }

    fn run(&mut self) -> Result<usize> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        bail!("pickle protocol {p} is newer than 5");
                    }
                }
                0x95 => {
                    self.le(8)?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'J' => {
                    let v = self.le(4)? as u32 as i32;
                    self.push(Value::Int(v as i128));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i128));
                }
                b'M' => {
                    let v = self.le(2)?;
                    self.push(Value::Int(v as i128));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? as usize } else { self.le(4)? as usize };
                    if n > 16 {
                        bail!("a pickled integer of {n} bytes (at most 16 are read)");
                    }
                    let b = self.take(n)?;
                    let mut v: i128 = b.iter().rev().fold(0i128, |a, &x| (a << 8) | x as i128);
                    if n > 0 && n < 16 && b[n - 1] & 0x80 != 0 {
                        v -= 1i128 << (8 * n); // two's complement of n bytes
                    }
                    self.push(Value::Int(v));
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Float);
                }
                b'X' => {
                    let n = self.le(4)? as usize;
                    self.string(n, true)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    self.string(n, true)?;
                }
                0x8d => {
                    let n = self.le(8)? as usize;
                    self.string(n, true)?;
                }
                // Python 2 `str` (BINSTRING, SHORT_BINSTRING) and bytes (BINBYTES, SHORT_BINBYTES).
                b'T' | b'B' => {
                    let n = self.le(4)? as usize;
                    self.string(n, false)?;
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    self.string(n, false)?;
                }
                b'}' => self.push(Value::Dict(vec![])),
                b']' => self.push(Value::List(vec![])),
                b')' => self.push(Value::Tuple(vec![])),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(vec![]));
                    let d = self.top()?;
                    self.set_items(d, &items)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        bail!("pickle stack underflow at byte {at}");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(items));
                }
                b'q' => {
                    let k = self.u8()? as u64;
                    self.memo.insert(k, self.top()?);
                }
                b'r' => {
                    let k = self.le(4)?;
                    self.memo.insert(k, self.top()?);
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo.insert(k, self.top()?);
                }
                b'h' => {
                    let k = self.u8()? as u64;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.le(4)?;
                    self.memo_get(k)?;
                }
                b'c' => {
                    let (module, name) = (self.line()?, self.line()?);
                    self.push(Value::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&self.values[module], &self.values[name]) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = Value::Global(m.clone(), n.clone());
                            self.push(g)
                        }
                        _ => bail!("pickle STACK_GLOBAL of non-strings at byte {at}"),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.push(v);
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.call(f, args)?;
                    self.push(v);
                }
                b'b' => {
                    // BUILD: an object's state (a state dict's `_metadata`, a Parameter's
                    // flags): nothing a tensor's values depend on.
                    self.pop()?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, &[k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?;
                    self.set_items(d, &items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(&[v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(&items)?;
                }
                _ => bail!("pickle opcode 0x{op:02x} at byte {at} is not one a saved state dict uses"),
            }
        }
    }

    /// `('storage', torch.FloatStorage, key, location, numel[, view_metadata])`.
    fn persistent(&self, pid: usize) -> Result<Value> {
        let v = &self.values;
        let Value::Tuple(t) = &v[pid] else { bail!("a persistent id that is not a tuple") };
        let bad = || anyhow!("a persistent id that names no storage");
        if t.len() < 5 || str_at(v, t[0]) != Some("storage") {
            // ('module', class, source file, source): a pickled nn.Module (torch.save(model)).
            if t.first().and_then(|&i| str_at(v, i)) == Some("module") {
                bail!("the file holds a whole pickled model (torch.save(model)): save model.state_dict() instead");
            }
            return Err(bad());
        }
        let dtype = match &v[t[1]] {
            Value::Global(_, n) => n.clone(),
            _ => return Err(bad()),
        };
        let key = str_at(v, t[2]).ok_or_else(bad)?.to_string();
        let numel = u64_at(v, t[4]).ok_or_else(bad)?;
        let view = match t.get(5).map(|&i| &v[i]) {
            Some(Value::Tuple(w)) if w.len() == 3 => {
                let k = str_at(v, w[0]).ok_or_else(bad)?.to_string();
                Some((k, u64_at(v, w[1]).ok_or_else(bad)?, u64_at(v, w[2]).ok_or_else(bad)?))
            }
            _ => None,
        };
        Ok(Value::Storage(Storage { dtype, key, numel, view }))
    }

    /// REDUCE / NEWOBJ: the callables of a state dict by name; any other an opaque object.
    fn call(&self, f: usize, args: usize) -> Result<Value> {
        let (module, name) = match &self.values[f] {
            Value::Global(m, n) => (m.as_str(), n.as_str()),
            v => bail!("pickle REDUCE on a {}", kind(v)),
        };
        let Value::Tuple(a) = &self.values[args] else { bail!("pickle REDUCE arguments that are not a tuple") };
        match (module, name) {
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                let bad = || anyhow!("{module}.{name} with unexpected arguments");
                let Some(Value::Storage(s)) = a.first().map(|&i| &self.values[i]) else { return Err(bad()) };
                let v = &self.values;
                let offset = a.get(1).and_then(|&i| u64_at(v, i)).ok_or_else(bad)?;
                let shape = a.get(2).and_then(|&i| usizes_at(v, i)).ok_or_else(bad)?;
                let stride = a.get(3).and_then(|&i| usizes_at(v, i)).ok_or_else(bad)?;
                if shape.len() != stride.len() {
                    return Err(bad());
                }
                Ok(Value::Tensor(TensorRef { storage: s.clone(), offset, shape, stride }))
            }
            // A Parameter saved as such (its tensor is the first argument).
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                a.first().map(|&i| self.values[i].clone()).ok_or_else(|| anyhow!("{module}.{name} without a tensor"))
            }
            ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") => match a.first() {
                None => Ok(Value::Dict(vec![])),
                Some(&i) => match &self.values[i] {
                    Value::List(pairs) | Value::Tuple(pairs) => {
                        let mut d = vec![];
                        for &p in pairs {
                            match &self.values[p] {
                                Value::Tuple(kv) | Value::List(kv) if kv.len() == 2 => d.push((kv[0], kv[1])),
                                _ => bail!("{module}.{name} of items that are not pairs"),
                            }
                        }
                        Ok(Value::Dict(d))
                    }
                    _ => Ok(Value::Dict(vec![])),
                },
            },
            ("torch._utils", n) if n.starts_with("_rebuild_") => {
                bail!("tensors of another kind than a plain dense one ({module}.{name}: quantized, sparse or on a meta device) are not supported")
            }
            _ => Ok(Value::Object(format!("{module}.{name}"))),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float => "float",
        Value::Str(_) => "str",
        Value::Bytes(_) => "bytes",
        Value::Tuple(_) => "tuple",
        Value::List(_) => "list",
        Value::Dict(_) => "dict",
        Value::Global(..) => "global",
        Value::Storage(_) => "storage",
        Value::Tensor(_) => "tensor",
        Value::Object(_) => "object",
    }
}
