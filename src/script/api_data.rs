//! Script API, area "data": `dataset(...)`, `dataset_names(...)` and the Dataset methods.
//!
//! Thin bindings over [`crate::data`]: options are checked strictly, examples cross into scripts
//! as `#{ system, tools, messages: [#{ role, content }] }` maps and come back the same way from
//! `map` closures (validated), and core errors keep their file/record/field text.

use rhai::plugin::*;
use rhai::{Array, Dynamic, Map};

use crate::data::registry::{columns_from_pairs, tags_from_pairs, Formatting};
use crate::data::{Example, Message, Role};

use super::errors::{runtime, ScriptResult};

/// The area name `:help` groups these functions under.
pub const AREA: &str = "data";

/// The compiled module of this area.
pub fn module() -> rhai::Module {
    exported_module!(data_api)
}

/// An example as scripts see it.
pub fn example_to_map(e: &Example) -> Map {
    let messages: Array = e
        .messages
        .iter()
        .map(|m| {
            let mut msg = Map::new();
            msg.insert("role".into(), m.role.as_str().into());
            msg.insert("content".into(), m.content.clone().into());
            Dynamic::from_map(msg)
        })
        .collect();
    let mut map = Map::new();
    map.insert("system".into(), e.system.clone().into());
    map.insert("tools".into(), e.tools.clone().into());
    map.insert("messages".into(), Dynamic::from_array(messages));
    map
}

/// A script map back to an example; `what` names it in errors (e.g. `map result for record 3`).
pub fn map_to_example(value: Dynamic, what: &str) -> ScriptResult<Example> {
    let bad = |msg: String| runtime(format!("{what}: {msg}"));
    let map = value
        .try_cast::<Map>()
        .ok_or_else(|| bad("expected a map #{ system, tools, messages }".into()))?;
    for key in map.keys() {
        if !["system", "tools", "messages"].contains(&key.as_str()) {
            return Err(bad(format!(
                "unknown key \"{key}\"; valid keys: system, tools, messages"
            )));
        }
    }
    let text = |key: &str| -> ScriptResult<String> {
        match map.get(key) {
            None => Ok(String::new()),
            Some(v) if v.is_string() => Ok(v.to_string()),
            Some(v) => Err(bad(format!(
                "key \"{key}\": expected a string, got {}",
                v.type_name()
            ))),
        }
    };
    let list = map
        .get("messages")
        .and_then(|m| m.clone().try_cast::<Array>())
        .ok_or_else(|| bad("key \"messages\": expected an array of #{ role, content }".into()))?;
    let mut messages = Vec::with_capacity(list.len());
    for (i, m) in list.into_iter().enumerate() {
        let m = m
            .try_cast::<Map>()
            .ok_or_else(|| bad(format!("messages[{i}]: expected #{{ role, content }}")))?;
        let role_name = m.get("role").map(|r| r.to_string()).unwrap_or_default();
        let role = Role::parse(&role_name).ok_or_else(|| {
            bad(format!("messages[{i}]: role \"{role_name}\" is not one of user, assistant, system, function, observation"))
        })?;
        let content = m
            .get("content")
            .filter(|c| c.is_string())
            .map(|c| c.to_string())
            .ok_or_else(|| bad(format!("messages[{i}]: content must be a string")))?;
        messages.push(Message::new(role, content));
    }
    let example = Example {
        system: text("system")?,
        tools: text("tools")?,
        messages,
    };
    if let Some(reason) = example.invalid_reason() {
        return Err(bad(reason));
    }
    Ok(example)
}

/// `(key, string value)` pairs of a `columns`/`tags`/`fill` map.
fn string_pairs(map: &Map, what: &str) -> ScriptResult<Vec<(String, String)>> {
    map.iter()
        .map(|(k, v)| {
            if v.is_string() {
                Ok((k.to_string(), v.to_string()))
            } else {
                Err(runtime(format!(
                    "{what}: key \"{k}\": expected a string, got {}",
                    v.type_name()
                )))
            }
        })
        .collect()
}

#[export_module]
mod data_api {
    use std::path::{Path, PathBuf};

    use rhai::{Array, Dynamic, FnPtr, Map, NativeCallContext, INT};

    use super::{example_to_map, map_to_example, string_pairs};
    use crate::data::load::{load, LoadOptions, OnError};
    use crate::data::registry::{Registry, REGISTRY_FILE};
    use crate::data::save::{self as saving, SaveForm};
    use crate::data::stats as statistics;
    use crate::script::engine::host;
    use crate::script::errors::{runtime, IntoScript, ScriptResult};
    use crate::script::options::Options;

    /// A loaded dataset: `len()`, `ds[i]`, `take`, `shuffle`, `split`, `filter`, `map`, `stats`, ...
    pub type Dataset = crate::data::Dataset;

    /// Valid keys of `dataset(name, opts)`.
    const LOAD_KEYS: &[&str] = &[
        "dir",
        "formatting",
        "columns",
        "tags",
        "num_samples",
        "max_samples",
        "on_error",
        "seed",
    ];

    /// Load a dataset registered in `data/dataset_info.json`, or a data file or folder (json, jsonl,
    /// csv, tsv, parquet, arrow, txt, or a Hugging Face save_to_disk folder).
    #[rhai_fn(return_raw)]
    pub fn dataset(ctx: NativeCallContext, name_or_path: &str) -> ScriptResult<Dataset> {
        dataset_with(ctx, name_or_path, Map::new())
    }

    /// Load a dataset with options: `dir` (folder holding dataset_info.json, default "data"),
    /// `formatting` ("alpaca" | "sharegpt" | "openai"), `columns` and `tags` (maps, as in
    /// dataset_info.json), `num_samples` (exactly N, over-sampling if needed), `max_samples` (the
    /// first N), `on_error` ("skip" bad records, the default, or "fail" on the first), `seed`.
    #[rhai_fn(name = "dataset", return_raw)]
    pub fn dataset_with(
        ctx: NativeCallContext,
        name_or_path: &str,
        opts: Map,
    ) -> ScriptResult<Dataset> {
        let o = Options::new("dataset options", opts, LOAD_KEYS)?;
        let mut lo = LoadOptions::default();
        if let Some(dir) = o.string("dir")? {
            lo.dir = PathBuf::from(dir);
        }
        if let Some(f) = o.string("formatting")? {
            lo.formatting = Some(Formatting::parse(&f).ok_or_else(|| {
                runtime(format!("dataset options: key \"formatting\": expected \"alpaca\", \"sharegpt\" or \"openai\", got \"{f}\""))
            })?);
        }
        if let Some(c) = o.map("columns")? {
            lo.columns = Some(columns_from_pairs(&string_pairs(&c, "columns")?).script()?);
        }
        if let Some(t) = o.map("tags")? {
            lo.tags = Some(tags_from_pairs(&string_pairs(&t, "tags")?).script()?);
        }
        let count = |key: &str| -> ScriptResult<Option<usize>> {
            match o.int(key)? {
                Some(n) if n <= 0 => Err(runtime(format!(
                    "dataset options: key \"{key}\": expected a positive integer, got {n}"
                ))),
                other => Ok(other.map(|n| n as usize)),
            }
        };
        lo.num_samples = count("num_samples")?;
        lo.max_samples = count("max_samples")?;
        if let Some(seed) = o.int("seed")? {
            lo.seed = seed as u64;
        }
        lo.on_error = match o.string("on_error")?.as_deref() {
            None | Some("skip") => OnError::Skip,
            Some("fail") => OnError::Fail,
            Some(other) => {
                return Err(runtime(format!(
                "dataset options: key \"on_error\": expected \"skip\" or \"fail\", got \"{other}\""
            )))
            }
        };
        load(name_or_path, &lo, &host(&ctx).cancel).script()
    }

    /// The names registered in `data/dataset_info.json`.
    #[rhai_fn(return_raw)]
    pub fn dataset_names() -> ScriptResult<Array> {
        dataset_names_in("data")
    }

    /// The names registered in `DIR/dataset_info.json`.
    #[rhai_fn(name = "dataset_names", return_raw)]
    pub fn dataset_names_in(dir: &str) -> ScriptResult<Array> {
        let dir = Path::new(dir);
        if !dir.join(REGISTRY_FILE).is_file() {
            return Err(runtime(format!(
                "{} does not exist",
                dir.join(REGISTRY_FILE).display()
            )));
        }
        let registry = Registry::load(dir).script()?;
        Ok(registry.names().into_iter().map(Dynamic::from).collect())
    }

    /// The number of examples.
    #[rhai_fn(global, pure)]
    pub fn len(ds: &mut Dataset) -> INT {
        ds.len() as INT
    }

    /// The example at `index` as `#{ system, tools, messages }` (negative counts from the end).
    #[rhai_fn(global, return_raw, pure)]
    pub fn get(ds: &mut Dataset, index: INT) -> ScriptResult<Map> {
        let len = ds.len() as INT;
        let i = if index < 0 { index + len } else { index };
        if i < 0 || i >= len {
            return Err(runtime(format!(
                "index {index} is out of range for a dataset of {len} examples"
            )));
        }
        Ok(example_to_map(ds.get(i as usize).expect("in range")))
    }

    /// `ds[i]`: the example at `i` (negative counts from the end).
    #[rhai_fn(index_get, return_raw, pure)]
    pub fn index(ds: &mut Dataset, index: INT) -> ScriptResult<Map> {
        get(ds, index)
    }

    /// How many records loading skipped (see `stats()` for the reasons).
    #[rhai_fn(get = "skipped", pure)]
    pub fn skipped(ds: &mut Dataset) -> INT {
        ds.skipped().total as INT
    }

    /// The dataset's name.
    #[rhai_fn(get = "name", pure)]
    pub fn name(ds: &mut Dataset) -> String {
        ds.name().to_string()
    }

    /// Where the examples came from and what was done to them.
    #[rhai_fn(get = "source", pure)]
    pub fn source(ds: &mut Dataset) -> String {
        ds.source().to_string()
    }

    /// The first `n` examples (LLaMA-Factory's max_samples).
    #[rhai_fn(global, return_raw, pure)]
    pub fn take(ds: &mut Dataset, n: INT) -> ScriptResult<Dataset> {
        if n < 0 {
            return Err(runtime(format!("take: expected a count >= 0, got {n}")));
        }
        Ok(ds.take(n as usize))
    }

    /// All examples in an order fixed by `seed`.
    #[rhai_fn(global, pure)]
    pub fn shuffle(ds: &mut Dataset, seed: INT) -> Dataset {
        ds.shuffle(seed as u64)
    }

    /// Split into `#{ train, val }`: `x` is a fraction (0 < x < 1, rounded up) or a count of
    /// validation examples; shuffled with seed 42 first (LLaMA-Factory's default seed).
    #[rhai_fn(global, return_raw, pure)]
    pub fn split(ds: &mut Dataset, x: Dynamic) -> ScriptResult<Map> {
        split_seeded(ds, x, 42)
    }

    /// Split into `#{ train, val }` after shuffling with `seed`.
    #[rhai_fn(global, name = "split", return_raw, pure)]
    pub fn split_seeded(ds: &mut Dataset, x: Dynamic, seed: INT) -> ScriptResult<Map> {
        let value = if x.is_int() {
            x.as_int().unwrap_or_default() as f64
        } else if x.is_float() {
            x.as_float().unwrap_or_default()
        } else {
            return Err(runtime(format!(
                "split: expected a fraction or a count, got {}",
                x.type_name()
            )));
        };
        let count = ds.val_count(value).ok_or_else(|| {
            runtime(format!(
                "split: {value} is neither a fraction between 0 and 1 nor a whole count up to {}",
                ds.len()
            ))
        })?;
        let (train, val) = ds.split(count, seed as u64);
        let mut map = Map::new();
        map.insert("train".into(), Dynamic::from(train));
        map.insert("val".into(), Dynamic::from(val));
        Ok(map)
    }

    /// This dataset followed by `other`.
    #[rhai_fn(global, pure)]
    pub fn concat(ds: &mut Dataset, other: Dataset) -> Dataset {
        ds.concat(&other)
    }

    /// The examples for which `f(example)` returns true.
    #[rhai_fn(global, return_raw, pure)]
    pub fn filter(ctx: NativeCallContext, ds: &mut Dataset, f: FnPtr) -> ScriptResult<Dataset> {
        ds.filter(|e| {
            let keep: Dynamic =
                f.call_within_context(&ctx, (Dynamic::from_map(example_to_map(e)),))?;
            keep.as_bool().map_err(|t| {
                runtime(format!(
                    "filter: the function must return true or false, got {t}"
                ))
            })
        })
    }

    /// Each example replaced by `f(example)`, which must return a valid `#{ system, tools, messages }`.
    #[rhai_fn(global, return_raw, pure)]
    pub fn map(ctx: NativeCallContext, ds: &mut Dataset, f: FnPtr) -> ScriptResult<Dataset> {
        ds.map(|i, e| {
            let out: Dynamic =
                f.call_within_context(&ctx, (Dynamic::from_map(example_to_map(e)),))?;
            map_to_example(out, &format!("map result for example {i}"))
        })
    }

    /// Replace `{{key}}` placeholders with values, e.g. `fill(#{ name: "Lab", author: "Ada" })` for
    /// identity data.
    #[rhai_fn(global, return_raw, pure)]
    pub fn fill(ds: &mut Dataset, values: Map) -> ScriptResult<Dataset> {
        Ok(ds.fill(&string_pairs(&values, "fill")?))
    }

    /// `n` random examples (seed 0) as maps, to look at.
    #[rhai_fn(global, pure)]
    pub fn sample(ds: &mut Dataset, n: INT) -> Array {
        sample_seeded(ds, n, 0)
    }

    /// `n` random examples chosen with `seed`, as maps.
    #[rhai_fn(global, name = "sample", pure)]
    pub fn sample_seeded(ds: &mut Dataset, n: INT, seed: INT) -> Array {
        ds.sample(n.max(0) as usize, seed as u64)
            .into_iter()
            .map(|e| Dynamic::from_map(example_to_map(e)))
            .collect()
    }

    /// Statistics: `#{ records, messages, turns, chars, min_chars, max_chars, mean_chars, roles,
    /// with_system, with_tools, skipped, skipped_by_reason, skipped_first }`.
    #[rhai_fn(global, pure)]
    pub fn stats(ds: &mut Dataset) -> Map {
        let s = statistics::stats(ds);
        let mut map = Map::new();
        let int = |n: usize| Dynamic::from(n as INT);
        map.insert("records".into(), int(s.records));
        map.insert("messages".into(), int(s.messages));
        map.insert("turns".into(), int(s.turns));
        map.insert("chars".into(), int(s.chars));
        map.insert("min_chars".into(), int(s.min_chars));
        map.insert("max_chars".into(), int(s.max_chars));
        let mean = if s.records == 0 {
            0.0
        } else {
            s.chars as f64 / s.records as f64
        };
        map.insert("mean_chars".into(), Dynamic::from(mean));
        let roles: Map = s
            .roles
            .iter()
            .map(|(r, n)| (r.as_str().into(), int(*n)))
            .collect();
        map.insert("roles".into(), Dynamic::from_map(roles));
        map.insert("with_system".into(), int(s.with_system));
        map.insert("with_tools".into(), int(s.with_tools));
        map.insert("skipped".into(), int(s.skipped.total));
        let kinds: Map = s
            .skipped
            .by_kind
            .iter()
            .map(|(k, n)| (k.as_str().into(), int(*n)))
            .collect();
        map.insert("skipped_by_reason".into(), Dynamic::from_map(kinds));
        let first: Array = s
            .skipped
            .first
            .iter()
            .map(|r| Dynamic::from(r.clone()))
            .collect();
        map.insert("skipped_first".into(), Dynamic::from_array(first));
        map
    }

    /// Statistics plus token lengths under `tokenizer`: `tokens` = `#{ total, min, max, mean,
    /// histogram: [[up_to, count], ...] }` over each example's text (system, tools and every
    /// message, without a chat template) — to choose `cutoff_len`.
    #[rhai_fn(global, name = "stats", return_raw, pure)]
    pub fn stats_tokens(ds: &mut Dataset, tokenizer: crate::model::Tokenizer) -> ScriptResult<Map> {
        let mut map = stats(ds);
        let mut lengths = Vec::with_capacity(ds.len());
        for e in ds.iter() {
            let mut text = format!("{}{}", e.system, e.tools);
            for m in &e.messages {
                text.push_str(&m.content);
            }
            lengths.push(tokenizer.encode(&text).script()?.len());
        }
        let total: usize = lengths.iter().sum();
        let mut t = Map::new();
        t.insert("total".into(), Dynamic::from(total as INT));
        t.insert(
            "min".into(),
            Dynamic::from(lengths.iter().copied().min().unwrap_or(0) as INT),
        );
        t.insert(
            "max".into(),
            Dynamic::from(lengths.iter().copied().max().unwrap_or(0) as INT),
        );
        let mean = if lengths.is_empty() {
            0.0
        } else {
            total as f64 / lengths.len() as f64
        };
        t.insert("mean".into(), Dynamic::from(mean));
        let histogram: Array = statistics::length_histogram(&lengths)
            .into_iter()
            .map(|(upper, count)| {
                Dynamic::from_array(vec![
                    Dynamic::from(upper as INT),
                    Dynamic::from(count as INT),
                ])
            })
            .collect();
        t.insert("histogram".into(), Dynamic::from_array(histogram));
        map.insert("tokens".into(), Dynamic::from_map(t));
        Ok(map)
    }

    /// Write the examples to `path` (.jsonl or .json), as alpaca when every example fits, else
    /// sharegpt; returns `#{ path, records, formatting, entry }` (`entry` registers the file).
    #[rhai_fn(global, return_raw, pure)]
    pub fn save(ds: &mut Dataset, path: &str) -> ScriptResult<Map> {
        save_with(ds, path, Map::new())
    }

    /// Write the examples with options: `format` ("auto" | "alpaca" | "sharegpt").
    #[rhai_fn(global, name = "save", return_raw, pure)]
    pub fn save_with(ds: &mut Dataset, path: &str, opts: Map) -> ScriptResult<Map> {
        let o = Options::new("save options", opts, &["format"])?;
        let form = match o.string("format")?.as_deref() {
            None | Some("auto") => SaveForm::Auto,
            Some("alpaca") => SaveForm::Alpaca,
            Some("sharegpt") => SaveForm::Sharegpt,
            Some(other) => return Err(runtime(format!("save options: key \"format\": expected \"auto\", \"alpaca\" or \"sharegpt\", got \"{other}\""))),
        };
        let saved = saving::save(ds, Path::new(path), form).script()?;
        let mut map = Map::new();
        map.insert("path".into(), path.into());
        map.insert("records".into(), Dynamic::from(saved.records as INT));
        map.insert("formatting".into(), saved.formatting.as_str().into());
        let entry: Dynamic =
            rhai::serde::to_dynamic(&saved.entry).map_err(|e| runtime(e.to_string()))?;
        map.insert("entry".into(), entry);
        Ok(map)
    }

    /// The dataset's name, size, source and two sample records.
    #[rhai_fn(global, name = "to_string", pure)]
    pub fn to_string(ds: &mut Dataset) -> String {
        ds.to_string()
    }

    /// Same as `to_string`.
    #[rhai_fn(global, name = "to_debug", pure)]
    pub fn to_debug(ds: &mut Dataset) -> String {
        ds.to_string()
    }
}
