//! LLaMA-Factory's dataset registry, `dataset_info.json`, read with its exact keys and defaults.
//!
//! Facts (specs/llamafactory.md §1): each entry names a source (`hf_hub_url` / `ms_hub_url` /
//! `om_hub_url`, `script_url`, `cloud_file_name` or `file_name`), a `formatting` (alpaca by
//! default), `ranking`, `split` ("train"), `num_samples`, and `columns` / `tags` objects. The rule
//! that surprises people: when a `columns` object is present, every column it does not list is
//! *absent* (the defaults `instruction`/`input`/`output`/`conversations` apply only when `columns`
//! is missing entirely); the same holds for `tags`. Unknown keys are ignored, as LLaMA-Factory does.
//!
//! tunelab has no network, so a hub, script or cloud source is usable only when the entry also has
//! a `file_name`; otherwise loading says how to download the file.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// The registry's file name inside a dataset folder.
pub const REGISTRY_FILE: &str = "dataset_info.json";
/// Largest registry file read.
const MAX_REGISTRY_BYTES: u64 = 64 << 20;
/// Largest `num_samples` accepted (67,108,864 records): the sampled order is built in memory,
/// 16 bytes a record, so a mistyped or corrupt count must not ask for terabytes.
const MAX_NUM_SAMPLES: u64 = 1 << 26;

/// How records are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formatting {
    /// `{instruction, input, output, system?, history?}`.
    Alpaca,
    /// `{conversations: [{from, value}], system?, tools?}`.
    Sharegpt,
    /// `{messages: [{role, content, tool_calls?}], tools?}`.
    Openai,
}

impl Formatting {
    /// Parse a `formatting` value.
    pub fn parse(name: &str) -> Option<Formatting> {
        match name {
            "alpaca" => Some(Formatting::Alpaca),
            "sharegpt" => Some(Formatting::Sharegpt),
            "openai" => Some(Formatting::Openai),
            _ => None,
        }
    }

    /// The name as written in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            Formatting::Alpaca => "alpaca",
            Formatting::Sharegpt => "sharegpt",
            Formatting::Openai => "openai",
        }
    }
}

/// Which record field holds what (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Columns {
    pub prompt: Option<String>,
    pub query: Option<String>,
    pub response: Option<String>,
    pub history: Option<String>,
    pub messages: Option<String>,
    pub system: Option<String>,
    pub tools: Option<String>,
    pub images: Option<String>,
    pub videos: Option<String>,
    pub audios: Option<String>,
    pub chosen: Option<String>,
    pub rejected: Option<String>,
    pub kto_tag: Option<String>,
}

/// The names of the `columns` keys, in LLaMA-Factory's order.
pub const COLUMN_KEYS: &[&str] = &[
    "prompt", "query", "response", "history", "messages", "system", "tools", "images", "videos",
    "audios", "chosen", "rejected", "kto_tag",
];

impl Columns {
    /// LLaMA-Factory's defaults when no `columns` object is given.
    pub fn defaults() -> Self {
        Columns {
            prompt: Some("instruction".into()),
            query: Some("input".into()),
            response: Some("output".into()),
            messages: Some("conversations".into()),
            ..Default::default()
        }
    }

    fn slot(&mut self, key: &str) -> Option<&mut Option<String>> {
        Some(match key {
            "prompt" => &mut self.prompt,
            "query" => &mut self.query,
            "response" => &mut self.response,
            "history" => &mut self.history,
            "messages" => &mut self.messages,
            "system" => &mut self.system,
            "tools" => &mut self.tools,
            "images" => &mut self.images,
            "videos" => &mut self.videos,
            "audios" => &mut self.audios,
            "chosen" => &mut self.chosen,
            "rejected" => &mut self.rejected,
            "kto_tag" => &mut self.kto_tag,
            _ => return None,
        })
    }
}

/// ShareGPT/OpenAI role and content field names (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tags {
    pub role_tag: Option<String>,
    pub content_tag: Option<String>,
    pub user_tag: Option<String>,
    pub assistant_tag: Option<String>,
    pub observation_tag: Option<String>,
    pub function_tag: Option<String>,
    pub system_tag: Option<String>,
}

/// The names of the `tags` keys.
pub const TAG_KEYS: &[&str] = &[
    "role_tag",
    "content_tag",
    "user_tag",
    "assistant_tag",
    "observation_tag",
    "function_tag",
    "system_tag",
];

impl Tags {
    /// LLaMA-Factory's defaults when no `tags` object is given.
    pub fn defaults() -> Self {
        Tags {
            role_tag: Some("from".into()),
            content_tag: Some("value".into()),
            user_tag: Some("human".into()),
            assistant_tag: Some("gpt".into()),
            observation_tag: Some("observation".into()),
            function_tag: Some("function_call".into()),
            system_tag: Some("system".into()),
        }
    }

    /// The OpenAI chat layout (`role`/`content`, `tool` results). tunelab's default for
    /// `formatting: openai` without `tags`, where LLaMA-Factory's ShareGPT defaults never match.
    pub fn openai() -> Self {
        Tags {
            role_tag: Some("role".into()),
            content_tag: Some("content".into()),
            user_tag: Some("user".into()),
            assistant_tag: Some("assistant".into()),
            observation_tag: Some("tool".into()),
            function_tag: Some("function".into()),
            system_tag: Some("system".into()),
        }
    }

    fn slot(&mut self, key: &str) -> Option<&mut Option<String>> {
        Some(match key {
            "role_tag" => &mut self.role_tag,
            "content_tag" => &mut self.content_tag,
            "user_tag" => &mut self.user_tag,
            "assistant_tag" => &mut self.assistant_tag,
            "observation_tag" => &mut self.observation_tag,
            "function_tag" => &mut self.function_tag,
            "system_tag" => &mut self.system_tag,
            _ => return None,
        })
    }
}

/// Where the data of an entry lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file or folder, relative to the dataset folder (or absolute).
    File(PathBuf),
    /// Only on a hub, behind a loading script or in cloud storage: not reachable offline.
    Remote { key: &'static str, location: String },
}

/// One registry entry, with LLaMA-Factory's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub source: Source,
    pub formatting: Formatting,
    pub ranking: bool,
    pub split: String,
    pub num_samples: Option<usize>,
    pub columns: Columns,
    pub tags: Tags,
}

impl Entry {
    /// An entry for a file given directly (not through the registry).
    pub fn for_path(path: &Path, formatting: Formatting) -> Self {
        Entry {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string()),
            source: Source::File(path.to_path_buf()),
            formatting,
            ranking: false,
            split: "train".into(),
            num_samples: None,
            columns: default_columns(formatting),
            tags: default_tags(formatting),
        }
    }
}

/// The columns for a file given without a registry entry: LLaMA-Factory's defaults plus the
/// optional `system`, `tools` and `history` columns under those names (what `save` writes), and
/// OpenAI-style records keep their messages under `messages`.
pub fn default_columns(formatting: Formatting) -> Columns {
    let mut columns = Columns::defaults();
    columns.system = Some("system".into());
    columns.tools = Some("tools".into());
    if formatting == Formatting::Alpaca {
        columns.history = Some("history".into());
    }
    if formatting == Formatting::Openai {
        columns.messages = Some("messages".into());
    }
    columns
}

/// The default tags for `formatting` (see [`Tags::openai`]).
pub fn default_tags(formatting: Formatting) -> Tags {
    match formatting {
        Formatting::Openai => Tags::openai(),
        _ => Tags::defaults(),
    }
}

/// A parsed `dataset_info.json`.
#[derive(Debug, Clone)]
pub struct Registry {
    /// The registry file.
    pub path: PathBuf,
    /// Entries in file order.
    pub entries: Vec<Entry>,
}

impl Registry {
    /// Read `dir/dataset_info.json`.
    pub fn load(dir: &Path) -> Result<Registry> {
        let path = dir.join(REGISTRY_FILE);
        let meta = std::fs::metadata(&path).map_err(|e| {
            Error::io_hint(&path, e, format!("create {REGISTRY_FILE} in the dataset folder, or pass a file path instead of a name"))
        })?;
        if meta.len() > MAX_REGISTRY_BYTES {
            return Err(Error::data(
                &path,
                "file size",
                "too large for a dataset registry",
            ));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Registry::parse(&path, &text)
    }

    /// Parse registry text read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Registry> {
        let value: serde_json::Map<String, Value> =
            serde_json::from_str(text.trim_start_matches('\u{FEFF}')).map_err(|e| {
                Error::data(
                    path,
                    format!("line {} column {}", e.line(), e.column()),
                    format!("invalid JSON: {e}"),
                )
            })?;
        let mut entries = Vec::with_capacity(value.len());
        for (name, attrs) in &value {
            entries.push(parse_entry(path, name, attrs)?);
        }
        Ok(Registry {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The entry called `name`.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Every registered name, in file order.
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.name.clone()).collect()
    }
}

fn parse_entry(path: &Path, name: &str, attrs: &Value) -> Result<Entry> {
    let at = |key: &str| format!("\"{name}\": key \"{key}\"");
    let obj = attrs.as_object().ok_or_else(|| {
        Error::data(
            path,
            format!("\"{name}\""),
            "expected an object like {\"file_name\": \"x.json\"}",
        )
    })?;
    let string = |key: &str| -> Result<Option<String>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(Error::data(
                path,
                at(key),
                format!("expected a string, got {other}"),
            )),
        }
    };
    let file_name = string("file_name")?;
    let mut remote = None;
    for key in [
        "hf_hub_url",
        "ms_hub_url",
        "om_hub_url",
        "script_url",
        "cloud_file_name",
    ] {
        if let Some(location) = string(key)? {
            let key: &'static str = match key {
                "hf_hub_url" => "hf_hub_url",
                "ms_hub_url" => "ms_hub_url",
                "om_hub_url" => "om_hub_url",
                "script_url" => "script_url",
                _ => "cloud_file_name",
            };
            remote.get_or_insert(Source::Remote { key, location });
        }
    }
    let source = match (file_name, remote) {
        (Some(file), _) => Source::File(PathBuf::from(file)),
        (None, Some(remote)) => remote,
        (None, None) => {
            return Err(Error::data(
                path,
                format!("\"{name}\""),
                "no source: add \"file_name\" (a file or folder inside the dataset folder)",
            ))
        }
    };
    let formatting = match string("formatting")? {
        None => Formatting::Alpaca,
        Some(f) => Formatting::parse(&f).ok_or_else(|| {
            Error::data(
                path,
                at("formatting"),
                format!("expected alpaca, sharegpt or openai, got \"{f}\""),
            )
        })?,
    };
    let ranking = match obj.get("ranking") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(Error::data(
                path,
                at("ranking"),
                format!("expected true or false, got {other}"),
            ))
        }
    };
    let num_samples = match obj.get("num_samples") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|&n| n > 0 && n <= MAX_NUM_SAMPLES)
                .ok_or_else(|| {
                    Error::data(
                        path,
                        at("num_samples"),
                        format!("expected a positive integer up to {MAX_NUM_SAMPLES}, got {v}"),
                    )
                })? as usize,
        ),
    };
    let columns = match obj.get("columns") {
        None | Some(Value::Null) => Columns::defaults(),
        Some(v) => named_strings(
            path,
            name,
            "columns",
            v,
            COLUMN_KEYS,
            |c: &mut Columns, k| c.slot(k),
        )?,
    };
    let tags = match obj.get("tags") {
        None | Some(Value::Null) => default_tags(formatting),
        Some(v) => named_strings(path, name, "tags", v, TAG_KEYS, |t: &mut Tags, k| t.slot(k))?,
    };
    Ok(Entry {
        name: name.to_string(),
        source,
        formatting,
        ranking,
        split: string("split")?.unwrap_or_else(|| "train".into()),
        num_samples,
        columns,
        tags,
    })
}

/// Fill a `columns`/`tags` struct from an object: listed keys set, unlisted keys stay absent.
fn named_strings<T: Default>(
    path: &Path,
    name: &str,
    what: &str,
    value: &Value,
    keys: &[&str],
    slot: impl for<'t> Fn(&'t mut T, &str) -> Option<&'t mut Option<String>>,
) -> Result<T> {
    let obj = value.as_object().ok_or_else(|| {
        Error::data(
            path,
            format!("\"{name}\": key \"{what}\""),
            "expected an object of names",
        )
    })?;
    let mut out = T::default();
    for (key, v) in obj {
        let Some(target) = slot(&mut out, key) else {
            // LLaMA-Factory ignores unknown keys; say nothing either (multimodal extras etc.).
            if keys.contains(&key.as_str()) {
                unreachable!("every listed key has a slot");
            }
            continue;
        };
        *target = match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => {
                return Err(Error::data(
                    path,
                    format!("\"{name}\": {what}.{key}"),
                    format!("expected a string, got {other}"),
                ))
            }
        };
    }
    Ok(out)
}

/// Read a `columns` or `tags` override given as `(key, value)` pairs (from a script), with the
/// registry's rule: listed keys set, the rest absent. Unknown keys are errors here.
pub fn columns_from_pairs(pairs: &[(String, String)]) -> Result<Columns> {
    let mut out = Columns::default();
    for (k, v) in pairs {
        *out.slot(k).ok_or_else(|| {
            Error::config(
                "columns",
                format!(
                    "unknown key \"{k}\"; valid keys: {}",
                    COLUMN_KEYS.join(", ")
                ),
            )
        })? = Some(v.clone());
    }
    Ok(out)
}

/// The `tags` counterpart of [`columns_from_pairs`].
pub fn tags_from_pairs(pairs: &[(String, String)]) -> Result<Tags> {
    let mut out = Tags::default();
    for (k, v) in pairs {
        *out.slot(k).ok_or_else(|| {
            Error::config(
                "tags",
                format!("unknown key \"{k}\"; valid keys: {}", TAG_KEYS.join(", ")),
            )
        })? = Some(v.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Registry> {
        Registry::parse(Path::new("data/dataset_info.json"), text)
    }

    #[test]
    fn defaults_apply_only_without_columns_and_tags_objects() {
        let r = parse(r#"{
            "plain": {"file_name": "a.json"},
            "pt": {"file_name": "c4.jsonl", "columns": {"prompt": "text"}},
            "tool": {"file_name": "g.json", "formatting": "sharegpt", "columns": {"messages": "conversations", "tools": "tools"}},
            "kto": {"file_name": "k.json", "formatting": "sharegpt", "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}
        }"#).unwrap();
        let plain = r.get("plain").unwrap();
        assert_eq!(plain.columns, Columns::defaults());
        assert_eq!(plain.formatting, Formatting::Alpaca);
        assert_eq!(plain.split, "train");
        let pt = r.get("pt").unwrap();
        assert_eq!(pt.columns.prompt.as_deref(), Some("text"));
        assert_eq!(pt.columns.response, None, "unlisted columns are absent");
        let tool = r.get("tool").unwrap();
        assert_eq!(tool.tags, Tags::defaults());
        assert_eq!(tool.columns.tools.as_deref(), Some("tools"));
        let kto = r.get("kto").unwrap();
        assert_eq!(kto.tags.observation_tag, None, "unlisted tags are absent");
        assert_eq!(kto.tags.system_tag, None);
        assert_eq!(r.names(), ["plain", "pt", "tool", "kto"], "file order");
    }

    #[test]
    fn hub_only_entry_is_remote_and_file_name_wins_offline() {
        let r = parse(
            r#"{"a": {"hf_hub_url": "llamafactory/alpaca_en"},
                          "b": {"hf_hub_url": "x/y", "file_name": "b.json"}}"#,
        )
        .unwrap();
        assert_eq!(
            r.get("a").unwrap().source,
            Source::Remote {
                key: "hf_hub_url",
                location: "llamafactory/alpaca_en".into()
            }
        );
        assert_eq!(r.get("b").unwrap().source, Source::File("b.json".into()));
    }

    #[test]
    fn bad_values_name_the_entry_and_key() {
        let e = parse(r#"{"a": {"file_name": "a.json", "formatting": "chatml"}}"#).unwrap_err();
        assert_eq!(e.to_string(), "data/dataset_info.json: \"a\": key \"formatting\": expected alpaca, sharegpt or openai, got \"chatml\"");
        let e = parse(r#"{"a": {"file_name": "a.json", "num_samples": -3}}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"a\": key \"num_samples\": expected a positive integer"),
            "{e}"
        );
        let e = parse(r#"{"a": {"file_name": "a.json", "columns": {"prompt": 3}}}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"a\": columns.prompt: expected a string"),
            "{e}"
        );
        let e = parse("{\"a\": ").unwrap_err();
        assert!(e.to_string().contains("line 1 column"), "{e}");
    }

    #[test]
    fn the_real_llamafactory_registry_parses() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/llamafactory-data"
        ));
        if !path.exists() {
            return; // only beside the project's shared folder
        }
        let r = Registry::load(path).unwrap();
        assert!(r.entries.len() > 100, "{}", r.entries.len());
        let g = r.get("glaive_toolcall_zh_demo").unwrap();
        assert_eq!(g.formatting, Formatting::Sharegpt);
        assert_eq!(g.columns.messages.as_deref(), Some("conversations"));
        assert_eq!(g.columns.prompt, None);
    }
}
