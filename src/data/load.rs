//! `dataset(name_or_path, opts)`: find the data, read it, convert it, report what was skipped.
//!
//! A name is looked up in `DIR/dataset_info.json` (DIR defaults to `data`, LLaMA-Factory's
//! `dataset_dir`); anything else is taken as a file or folder path, whose formatting is guessed
//! from its first record when not given (`conversations` → sharegpt, `messages` → openai, else
//! alpaca). Then, as in LLaMA-Factory: `num_samples` draws exactly N records (over-sampling when N
//! exceeds them), and `max_samples` keeps the first N.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::convert::{convert, Skip};
use super::dataset::{Dataset, SkipReport};
use super::readers::{read_rows, Loc, Row};
use super::registry::{
    default_columns, default_tags, Columns, Entry, Formatting, Registry, Source, Tags,
    REGISTRY_FILE,
};
use crate::cancel::CancelToken;
use crate::error::{Error, Result};

/// What to do with a record that cannot be converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Skip it, count it, keep the reason (LLaMA-Factory drops such records with a warning).
    #[default]
    Skip,
    /// Stop at the first one with an error naming the record and field.
    Fail,
}

/// Options of `dataset(...)`; `None` means "as the registry entry says".
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The dataset folder holding `dataset_info.json` (LLaMA-Factory's `dataset_dir`).
    pub dir: PathBuf,
    /// Override the entry's formatting.
    pub formatting: Option<Formatting>,
    /// Override the entry's columns (unlisted columns become absent, as in the registry).
    pub columns: Option<Columns>,
    /// Override the entry's tags (unlisted tags become absent).
    pub tags: Option<Tags>,
    /// Draw exactly this many records.
    pub num_samples: Option<usize>,
    /// Keep only the first this many records.
    pub max_samples: Option<usize>,
    /// Skip or fail on bad records.
    pub on_error: OnError,
    /// Seed for `num_samples` (LLaMA-Factory's default training seed).
    pub seed: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dir: PathBuf::from("data"),
            formatting: None,
            columns: None,
            tags: None,
            num_samples: None,
            max_samples: None,
            on_error: OnError::Skip,
            seed: 42,
        }
    }
}

/// How often (in records) loading checks for Ctrl-C.
const CANCEL_CHECK_EVERY: usize = 4096;

/// Load a registered dataset or a data file/folder.
pub fn load(name_or_path: &str, opts: &LoadOptions, cancel: &CancelToken) -> Result<Dataset> {
    let registry_path = opts.dir.join(REGISTRY_FILE);
    let registry = if registry_path.is_file() {
        Some(Registry::load(&opts.dir)?)
    } else {
        None
    };
    let (mut entry, path, guess) = match registry.as_ref().and_then(|r| r.get(name_or_path)) {
        Some(entry) => {
            let path = match &entry.source {
                Source::File(file) => opts.dir.join(file),
                Source::Remote { key, location } => {
                    return Err(Error::msg(format!(
                        "dataset \"{name_or_path}\" is registered with {key} \"{location}\", but tunelab works offline: download the data into {dir}/ and add \"file_name\": \"<the file>\" to its entry in {reg}",
                        dir = opts.dir.display(),
                        reg = registry_path.display()
                    )))
                }
            };
            (entry.clone(), path, false)
        }
        None if Path::new(name_or_path).exists() => {
            let path = PathBuf::from(name_or_path);
            let formatting = opts.formatting.unwrap_or(Formatting::Alpaca);
            (
                Entry::for_path(&path, formatting),
                path,
                opts.formatting.is_none(),
            )
        }
        None => return Err(unknown_name(name_or_path, &opts.dir, registry.as_ref())),
    };
    if let Some(f) = opts.formatting {
        if f != entry.formatting && opts.tags.is_none() {
            entry.tags = default_tags(f);
        }
        entry.formatting = f;
    }
    if let Some(c) = &opts.columns {
        entry.columns = c.clone();
    }
    if let Some(t) = &opts.tags {
        entry.tags = t.clone();
    }
    if opts.num_samples.is_some() {
        entry.num_samples = opts.num_samples;
    }
    if entry.ranking {
        return Err(Error::msg(format!(
            "dataset \"{}\" is a ranking (preference) dataset; tunelab loads supervised (SFT) data only so far",
            entry.name
        )));
    }
    if entry.split != "train" {
        return Err(Error::msg(format!(
            "dataset \"{}\": split \"{}\" does not exist for local files (they have only \"train\"); remove \"split\" from its entry",
            entry.name, entry.split
        )));
    }
    if entry.formatting != Formatting::Alpaca && entry.columns.messages.is_none() {
        return Err(Error::msg(format!(
            "dataset \"{}\" ({} formatting) has no messages column: add \"columns\": {{\"messages\": \"conversations\"}} to its entry",
            entry.name,
            entry.formatting.as_str()
        )));
    }

    let multi_file = path.is_dir();
    let mut examples = Vec::new();
    let mut skipped = SkipReport::default();
    let mut decided = !guess;
    let mut seen = 0;
    read_rows(&path, &mut |file, loc, row| {
        seen += 1;
        if seen % CANCEL_CHECK_EVERY == 0 {
            cancel.check()?;
        }
        if !decided {
            entry.formatting = guess_formatting(&row);
            if opts.tags.is_none() {
                entry.tags = default_tags(entry.formatting);
            }
            if opts.columns.is_none() {
                entry.columns = default_columns(entry.formatting);
            }
            decided = true;
        }
        match convert(&entry, row) {
            Ok(example) => examples.push(Arc::new(example)),
            Err(skip) => match opts.on_error {
                OnError::Fail => return Err(skip_error(file, loc, &skip)),
                OnError::Skip => {
                    let place = if multi_file {
                        format!("{}: {loc}", file.display())
                    } else {
                        loc.to_string()
                    };
                    skipped.add(skip.kind, format!("{place}: {skip}"));
                }
            },
        }
        Ok(())
    })?;
    if examples.is_empty() {
        return Err(no_valid_record(&path, &entry, &skipped));
    }
    let source = format!("{}, {}", path.display(), entry.formatting.as_str());
    examples.shrink_to_fit();
    let mut dataset = Dataset::from_shared(entry.name.clone(), source, examples, skipped);
    if let Some(n) = entry.num_samples {
        dataset = dataset.num_samples(n, opts.seed);
    }
    if let Some(n) = opts.max_samples {
        dataset = dataset.take(n);
    }
    Ok(dataset)
}

/// The formatting a record's keys suggest.
fn guess_formatting(row: &Row) -> Formatting {
    if row.contains_key("conversations") {
        Formatting::Sharegpt
    } else if row.get("messages").is_some_and(|m| m.is_array()) {
        Formatting::Openai
    } else {
        Formatting::Alpaca
    }
}

/// A skip as a hard error: `path: record 17: field "output": expected string, got null`.
fn skip_error(file: &Path, loc: Loc, skip: &Skip) -> Error {
    match &skip.field {
        Some(field) => Error::data(
            file,
            format!("{loc}: field \"{field}\""),
            skip.message.clone(),
        ),
        None => Error::data(file, loc.to_string(), skip.message.clone()),
    }
}

fn unknown_name(name: &str, dir: &Path, registry: Option<&Registry>) -> Error {
    match registry {
        Some(r) => Error::msg(format!(
            "unknown dataset \"{name}\": it is not registered in {} (registered: {}) and no file or folder has that path",
            r.path.display(),
            r.names().join(", ")
        )),
        None => Error::msg(format!(
            "unknown dataset \"{name}\": {} does not exist and no file or folder has that path; register datasets there or give a file path",
            dir.join(REGISTRY_FILE).display()
        )),
    }
}

fn no_valid_record(path: &Path, entry: &Entry, skipped: &SkipReport) -> Error {
    let example = match entry.formatting {
        Formatting::Alpaca => r#"{"instruction": "...", "input": "", "output": "..."}"#,
        Formatting::Sharegpt => {
            r#"{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}"#
        }
        Formatting::Openai => {
            r#"{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}"#
        }
    };
    let first = skipped
        .first
        .first()
        .map(|r| format!("; first: {r}"))
        .unwrap_or_default();
    Error::data(
        path,
        "all records",
        format!(
            "no valid record ({} skipped{first}); expected {} records like {example}",
            skipped.total,
            entry.formatting.as_str()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) {
        std::fs::write(dir.join(name), body).unwrap();
    }

    fn opts(dir: &Path) -> LoadOptions {
        LoadOptions {
            dir: dir.to_path_buf(),
            ..Default::default()
        }
    }

    #[test]
    fn bad_role_order_is_skipped_counted_and_named() {
        let d = tempfile::tempdir().unwrap();
        let mut lines = Vec::new();
        for i in 0..10 {
            let first = if i % 4 == 1 { "gpt" } else { "human" };
            let second = if first == "gpt" { "human" } else { "gpt" };
            lines.push(format!(r#"{{"conversations": [{{"from": "{first}", "value": "a{i}"}}, {{"from": "{second}", "value": "b{i}"}}]}}"#));
        }
        write(d.path(), "chat.jsonl", &lines.join("\n"));
        write(
            d.path(),
            "dataset_info.json",
            r#"{"chat": {"file_name": "chat.jsonl", "formatting": "sharegpt"}}"#,
        );
        let ds = load("chat", &opts(d.path()), &CancelToken::new()).unwrap();
        assert_eq!(ds.len(), 7);
        assert_eq!(ds.skipped().total, 3);
        assert_eq!(ds.skipped().by_kind["role order"], 3);
        assert_eq!(
            ds.skipped().first[0],
            "line 2: role \"gpt\" at position 0, expected a user turn"
        );
        let mut fail = opts(d.path());
        fail.on_error = OnError::Fail;
        let e = load("chat", &fail, &CancelToken::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("chat.jsonl: line 2: role \"gpt\" at position 0, expected a user turn"),
            "{e}"
        );
    }

    #[test]
    fn missing_field_fails_with_record_and_field() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "x.json",
            r#"[{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "input": ""}]"#,
        );
        let mut o = opts(d.path());
        o.on_error = OnError::Fail;
        let path = d.path().join("x.json");
        let e = load(path.to_str().unwrap(), &o, &CancelToken::new())
            .unwrap_err()
            .to_string();
        assert_eq!(e, format!("{}: record 2: field \"output\": missing from the record (check \"columns\" in dataset_info.json)", path.display()));
    }

    #[test]
    fn no_valid_record_shows_the_expected_format() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "x.jsonl", "{\"question\": \"a\"}\n");
        let path = d.path().join("x.jsonl");
        let e = load(path.to_str().unwrap(), &opts(d.path()), &CancelToken::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no valid record (1 skipped"), "{e}");
        assert!(
            e.contains("expected alpaca records like {\"instruction\""),
            "{e}"
        );
    }

    #[test]
    fn unknown_and_remote_names_say_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "dataset_info.json",
            r#"{"a": {"file_name": "a.json"}, "hub": {"hf_hub_url": "org/data"}}"#,
        );
        let e = load("nope", &opts(d.path()), &CancelToken::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("registered: a, hub"), "{e}");
        let e = load("hub", &opts(d.path()), &CancelToken::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hf_hub_url \"org/data\"") && e.contains("add \"file_name\""),
            "{e}"
        );
    }

    #[test]
    fn formatting_is_guessed_for_plain_paths_and_limits_apply() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "c.json",
            r#"[{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
                                      {"conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]}]"#,
        );
        let path = d.path().join("c.json");
        let ds = load(path.to_str().unwrap(), &opts(d.path()), &CancelToken::new()).unwrap();
        assert_eq!(ds.len(), 2);
        assert!(ds.source().ends_with("sharegpt"), "{}", ds.source());
        let mut o = opts(d.path());
        o.max_samples = Some(1);
        assert_eq!(
            load(path.to_str().unwrap(), &o, &CancelToken::new())
                .unwrap()
                .len(),
            1
        );
        o.max_samples = None;
        o.num_samples = Some(5);
        assert_eq!(
            load(path.to_str().unwrap(), &o, &CancelToken::new())
                .unwrap()
                .len(),
            5
        );
    }
}
