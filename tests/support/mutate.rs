//! A small deterministic mutator for hostile-input tests (tests/mutation.rs): byte-level damage
//! (bit flips, random bytes, boundary integers, truncation, removed and duplicated ranges), text
//! damage (delimiters, quotes, line breaks, invalid UTF-8, huge number literals), and JSON trees
//! changed node by node (wrong types, huge numbers, deep nesting, dictionary keys). GGUF and
//! safetensors damage is in `mutate_formats.rs`. Every mutation is a pure function of the [`Rng`]
//! it is given and returns a one-line description, so a failing input is reproduced from its
//! seed and index alone.

#![allow(dead_code)] // each target uses the mutations of its format

use serde_json::{json, Map, Value};
use tunelab::rng::Rng;

/// One mutated input and what was done to it.
pub struct Mutant {
    pub bytes: Vec<u8>,
    pub what: String,
}

/// Largest mutated JSON document (a few copies of a deeply nested value stay under it).
const MAX_MUTANT_BYTES: usize = 8 << 20;

/// Boundary values for length, count, offset and id fields.
pub const INTERESTING_U64: &[u64] = &[
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    16,
    31,
    32,
    63,
    64,
    255,
    256,
    4095,
    4096,
    65535,
    65536,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x1_0000_0001,
    1 << 40,
    1 << 48,
    1 << 53,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX - 1,
    u64::MAX,
];

/// Bytes that mean something to some parser.
const INTERESTING_BYTES: &[u8] = &[
    0x00, 0x01, 0x7f, 0x80, 0xff, b'"', b',', b'\t', b'\n', b'\\',
];

/// Snippets inserted into text formats.
const TEXT_SNIPPETS: &[&[u8]] = &[
    b"\"",
    b"\"\"",
    b",",
    b"\t",
    b"\n",
    b"\r\n",
    b"\r",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b"\\",
    b"\\u",
    b"\\ud800",
    b"\\u0000",
    b"\0",
    b"\xEF\xBB\xBF",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xf0\x9f\x99",
    b"null",
    b"1e999",
    b"-0",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"NaN",
    b"<|im_start|>",
];

/// Huge or odd number literals that a JSON tree cannot hold (inserted as text).
const NUMBER_LITERALS: &[&str] = &[
    "1e400",
    "-1e400",
    "18446744073709551616",
    "99999999999999999999999999999",
    "-9223372036854775809",
    "0.0000000000000000000000000001",
    "-0",
    "1.5",
    "4294967296",
    "2147483648",
];

/// A uniform index below `n` (n > 0).
pub fn below(rng: &mut Rng, n: usize) -> usize {
    rng.below(n.max(1))
}

/// True with probability `p`.
pub fn chance(rng: &mut Rng, p: f64) -> bool {
    rng.next_f64() < p
}

/// One of `items`.
pub fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[below(rng, items.len())]
}

/// A position in `0..len`, inside `0..focus` most of the time (the header of a big file).
fn position(rng: &mut Rng, len: usize, focus: usize) -> usize {
    if focus > 0 && focus < len && chance(rng, 0.8) {
        below(rng, focus)
    } else {
        below(rng, len)
    }
}

/// A boundary value near `old` or from the table (`file_len` is the file's size).
pub fn interesting(rng: &mut Rng, old: u64, file_len: u64) -> (u64, String) {
    let v = match below(rng, 10) {
        0 => old.wrapping_add(1),
        1 => old.wrapping_sub(1),
        2 => old.wrapping_mul(2),
        3 => old / 2,
        4 => file_len,
        5 => file_len.wrapping_add(1 + below(rng, 64) as u64),
        6 => old.swap_bytes(),
        _ => *pick(rng, INTERESTING_U64),
    };
    (v, format!("{v:#x}"))
}

/// Generic damage to any file; positions favour `0..focus` when `focus > 0`.
pub fn bytes(rng: &mut Rng, input: &[u8], focus: usize) -> Mutant {
    let mut b = input.to_vec();
    if b.is_empty() {
        b.push(*pick(rng, INTERESTING_BYTES));
        return Mutant {
            bytes: b,
            what: "one byte into an empty file".into(),
        };
    }
    let len = b.len();
    let what = match below(rng, 10) {
        0 => {
            let n = 1 + below(rng, 8);
            for _ in 0..n {
                let at = position(rng, len, focus);
                b[at] ^= 1 << below(rng, 8);
            }
            format!("{n} bit flips")
        }
        1 => {
            let at = position(rng, len, focus);
            let v = if chance(rng, 0.5) {
                *pick(rng, INTERESTING_BYTES)
            } else {
                rng.next_u64() as u8
            };
            b[at] = v;
            format!("byte {at} = {v:#04x}")
        }
        2 => {
            let width = if chance(rng, 0.5) { 4 } else { 8 };
            let at = position(rng, len.saturating_sub(width).max(1), focus);
            let (v, shown) = interesting(rng, 0, len as u64);
            let le = v.to_le_bytes();
            let end = (at + width).min(len);
            b[at..end].copy_from_slice(&le[..end - at]);
            format!("u{} at byte {at} = {shown}", width * 8)
        }
        3 => {
            let at = if chance(rng, 0.5) {
                position(rng, len, focus)
            } else {
                below(rng, len)
            };
            b.truncate(at);
            format!("truncated to {at} bytes")
        }
        4 => {
            let at = position(rng, len, focus);
            let n = 1 + below(rng, (len - at).min(256));
            b.drain(at..at + n);
            format!("removed bytes {at}..{}", at + n)
        }
        5 => {
            let at = position(rng, len, focus);
            let n = 1 + below(rng, (len - at).min(256));
            let copy = b[at..at + n].to_vec();
            let to = position(rng, len, focus);
            b.splice(to..to, copy);
            format!("bytes {at}..{} copied to {to}", at + n)
        }
        6 => {
            let at = position(rng, len, focus);
            let n = 1 + below(rng, 32);
            let junk: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            b.splice(at..at, junk);
            format!("{n} random bytes inserted at {at}")
        }
        7 => {
            let n = 1 + below(rng, 64);
            b.extend((0..n).map(|_| rng.next_u64() as u8));
            format!("{n} random bytes appended")
        }
        8 => {
            let at = position(rng, len, focus);
            let n = 1 + below(rng, (len - at).min(64));
            let v = *pick(rng, &[0x00u8, 0xff]);
            b[at..at + n].fill(v);
            format!("bytes {at}..{} = {v:#04x}", at + n)
        }
        _ => {
            let a = position(rng, len, focus);
            let c = position(rng, len, focus);
            b.swap(a, c);
            format!("bytes {a} and {c} swapped")
        }
    };
    Mutant { bytes: b, what }
}

/// Damage aimed at text formats: delimiters, quotes, line breaks, invalid UTF-8, lines removed or
/// repeated, a number made huge; falls back to [`bytes`] sometimes.
pub fn text(rng: &mut Rng, input: &[u8]) -> Mutant {
    let mut b = input.to_vec();
    let len = b.len();
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(
            b.iter()
                .enumerate()
                .filter(|(_, c)| **c == b'\n')
                .map(|(i, _)| i + 1),
        )
        .filter(|&i| i < len)
        .collect();
    let line = |rng: &mut Rng| -> (usize, usize) {
        let i = below(rng, line_starts.len());
        let start = line_starts.get(i).copied().unwrap_or(0);
        let end = line_starts.get(i + 1).copied().unwrap_or(len);
        (start, end)
    };
    let what = match below(rng, 8) {
        0 | 1 => {
            let n = 1 + below(rng, 3);
            for _ in 0..n {
                let at = below(rng, len + 1);
                let s = *pick(rng, TEXT_SNIPPETS);
                b.splice(at..at, s.iter().copied());
            }
            format!("{n} snippets inserted")
        }
        2 => {
            let (s, e) = line(rng);
            b.drain(s..e);
            format!("line at byte {s} removed")
        }
        3 => {
            let (s, e) = line(rng);
            let copy = b[s..e].to_vec();
            let times = if chance(rng, 0.2) { 200 } else { 1 };
            for _ in 0..times {
                b.splice(s..s, copy.iter().copied());
            }
            format!("line at byte {s} repeated {times} times")
        }
        4 => {
            let digits: Vec<usize> = (0..len).filter(|&i| b[i].is_ascii_digit()).collect();
            if digits.is_empty() {
                return bytes(rng, input, 0);
            }
            let at = *pick(rng, &digits);
            let mut end = at;
            while end < len && b[end].is_ascii_digit() {
                end += 1;
            }
            let lit = *pick(rng, NUMBER_LITERALS);
            b.splice(at..end, lit.bytes());
            format!("number at byte {at} = {lit}")
        }
        5 => {
            let at = below(rng, len + 1);
            let n = if chance(rng, 0.5) { 1000 } else { 100_000 };
            let c = *pick(rng, b"a[{\"\\");
            b.splice(at..at, std::iter::repeat_n(c, n));
            format!("{n} × {:?} at byte {at}", c as char)
        }
        6 => {
            let at = below(rng, len + 1);
            b.truncate(at);
            format!("truncated to {at} bytes")
        }
        _ => return bytes(rng, input, 0),
    };
    Mutant { bytes: b, what }
}

// ---- JSON --------------------------------------------------------------------------------------

/// Keys and strings a JSON mutation may insert: the format's own field names and values.
pub struct Dictionary {
    pub keys: &'static [&'static str],
    pub strings: &'static [&'static str],
}

/// A value of a random kind, often hostile (huge numbers, deep nesting, long strings).
fn random_value(rng: &mut Rng, dict: &Dictionary, depth: usize) -> Value {
    match below(rng, 16) {
        0 => Value::Null,
        1 => Value::Bool(chance(rng, 0.5)),
        2 => json!(*pick(
            rng,
            &[0i64, -1, 1, 2, 3, i64::MIN, i64::MAX, 1 << 31, 1 << 32]
        )),
        3 => json!(*pick(rng, INTERESTING_U64)),
        4 => json!(*pick(
            rng,
            &[0.5f64, -0.0, 1e308, -1e308, 1e-308, 3.5, f64::EPSILON]
        )),
        5 => json!(""),
        6 => json!("x".repeat(*pick(rng, &[1usize, 100, 70_000]))),
        7 | 8 => json!(*pick(rng, dict.strings)),
        9 => json!(*pick(rng, dict.keys)),
        10 => {
            let n = *pick(rng, &[10usize, 100, 127, 128, 129, 1000]);
            let mut v = Value::Null;
            for _ in 0..n {
                v = if chance(rng, 0.5) {
                    Value::Array(vec![v])
                } else {
                    let mut m = Map::new();
                    m.insert((*pick(rng, dict.keys)).to_string(), v);
                    Value::Object(m)
                };
            }
            v
        }
        11 if depth < 3 => {
            let n = below(rng, 4);
            Value::Array((0..n).map(|_| random_value(rng, dict, depth + 1)).collect())
        }
        12 if depth < 3 => {
            let mut m = Map::new();
            for _ in 0..below(rng, 4) {
                m.insert(
                    (*pick(rng, dict.keys)).to_string(),
                    random_value(rng, dict, depth + 1),
                );
            }
            Value::Object(m)
        }
        13 => Value::Array(Vec::new()),
        14 => Value::Object(Map::new()),
        _ => json!(format!("\u{0}\u{FEFF}é🙂{}", *pick(rng, dict.strings))),
    }
}

/// Every node of `v` as a path of indices into objects (by position) and arrays.
fn node_paths(v: &Value, path: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    out.push(path.clone());
    let children: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(m) => m.values().collect(),
        _ => return,
    };
    for (i, c) in children.into_iter().enumerate() {
        path.push(i);
        node_paths(c, path, out);
        path.pop();
    }
}

fn node_mut<'a>(v: &'a mut Value, path: &[usize]) -> &'a mut Value {
    match path.split_first() {
        None => v,
        Some((&i, rest)) => match v {
            Value::Array(a) => node_mut(&mut a[i], rest),
            Value::Object(m) => node_mut(m.values_mut().nth(i).expect("path"), rest),
            _ => unreachable!("paths lead through containers"),
        },
    }
}

/// A structural change to one node of `root`: a wrong type, a removed or added key, a copied or
/// dropped element, a renamed key, a wrapped value.
pub fn json_tree(rng: &mut Rng, root: &mut Value, dict: &Dictionary) -> String {
    let mut paths = Vec::new();
    node_paths(root, &mut Vec::new(), &mut paths);
    let path = pick(rng, &paths).clone();
    let shown = format!("node {path:?}");
    let node = node_mut(root, &path);
    match below(rng, 8) {
        0..=2 => {
            *node = random_value(rng, dict, 0);
            format!("{shown} replaced by {}", preview(node))
        }
        3 => match node {
            Value::Object(m) if !m.is_empty() => {
                let key = m.keys().nth(below(rng, m.len())).cloned().expect("key");
                m.shift_remove(&key);
                format!("{shown}: key {key:?} removed")
            }
            Value::Array(a) if !a.is_empty() => {
                let i = below(rng, a.len());
                a.remove(i);
                format!("{shown}: element {i} removed")
            }
            _ => {
                *node = Value::Null;
                format!("{shown} = null")
            }
        },
        4 => match node {
            Value::Object(m) => {
                let key = (*pick(rng, dict.keys)).to_string();
                let v = random_value(rng, dict, 0);
                let shown_v = preview(&v);
                m.insert(key.clone(), v);
                format!("{shown}: key {key:?} = {shown_v}")
            }
            Value::Array(a) if !a.is_empty() => {
                let i = below(rng, a.len());
                let n = if chance(rng, 0.1) { 1000 } else { 1 };
                for _ in 0..n {
                    let copy = a[i].clone();
                    a.insert(i, copy);
                }
                format!("{shown}: element {i} repeated {n} more times")
            }
            _ => {
                *node = Value::Array(vec![node.take()]);
                format!("{shown} wrapped in an array")
            }
        },
        5 => match node {
            Value::Object(m) if !m.is_empty() => {
                let i = below(rng, m.len());
                let old = m.keys().nth(i).cloned().expect("key");
                let v = m.shift_remove(&old).expect("value");
                let new = (*pick(rng, dict.keys)).to_string();
                m.insert(new.clone(), v);
                format!("{shown}: key {old:?} renamed {new:?}")
            }
            _ => {
                let mut m = Map::new();
                m.insert((*pick(rng, dict.keys)).to_string(), node.take());
                *node = Value::Object(m);
                format!("{shown} wrapped in an object")
            }
        },
        6 => match node {
            Value::Array(a) if a.len() > 1 => {
                let (i, j) = (below(rng, a.len()), below(rng, a.len()));
                a.swap(i, j);
                format!("{shown}: elements {i} and {j} swapped")
            }
            Value::String(s) => {
                let keep = below(rng, s.chars().count() + 1);
                *s = s.chars().take(keep).collect();
                format!("{shown} cut to {keep} chars")
            }
            _ => {
                *node = json!(*pick(rng, dict.strings));
                format!("{shown} = {}", preview(node))
            }
        },
        _ => {
            *node = random_value(rng, dict, 2);
            format!("{shown} replaced by {}", preview(node))
        }
    }
}

/// The first 60 characters of `v` as JSON.
fn preview(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

/// A JSON document mutated as a tree (then written compact or pretty), sometimes followed by text
/// damage, or damaged as text only.
pub fn json_doc(rng: &mut Rng, input: &[u8], dict: &Dictionary) -> Mutant {
    let parsed: Option<Value> = serde_json::from_slice(input).ok();
    let Some(mut root) = parsed.filter(|_| chance(rng, 0.75)) else {
        return text(rng, input);
    };
    let mut what = json_tree(rng, &mut root, dict);
    if chance(rng, 0.3) {
        what.push_str("; ");
        what.push_str(&json_tree(rng, &mut root, dict));
    }
    // Repeated deep values can make a huge document (pretty printing indents every level).
    let mut bytes = serde_json::to_vec(&root).expect("json");
    if bytes.len() > MAX_MUTANT_BYTES {
        return text(rng, input);
    }
    if bytes.len() < MAX_MUTANT_BYTES / 64 && chance(rng, 0.5) {
        bytes = serde_json::to_vec_pretty(&root).expect("json");
    }
    if chance(rng, 0.2) {
        let m = text(rng, &bytes);
        bytes = m.bytes;
        what = format!("{what}; then {}", m.what);
    }
    Mutant { bytes, what }
}

/// JSON Lines: one line mutated as a JSON document, or the file damaged as text.
pub fn json_lines(rng: &mut Rng, input: &[u8], dict: &Dictionary) -> Mutant {
    let text_in = String::from_utf8_lossy(input);
    let mut lines: Vec<String> = text_in.lines().map(str::to_string).collect();
    if lines.is_empty() || chance(rng, 0.3) {
        return text(rng, input);
    }
    let i = below(rng, lines.len());
    let m = json_doc(rng, lines[i].as_bytes(), dict);
    let one_line = String::from_utf8_lossy(&m.bytes).replace('\n', " ");
    lines[i] = one_line;
    let mut out = lines.join("\n").into_bytes();
    out.push(b'\n');
    Mutant {
        bytes: out,
        what: format!("line {}: {}", i + 1, m.what),
    }
}
