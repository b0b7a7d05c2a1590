//! Reading a LLaMA-Factory config: a flat YAML (or JSON) map of keys to values, then the
//! `key=value` overrides that follow it on the command line, as `llamafactory-cli` takes them
//! (OmegaConf's dot-list: each value is read as YAML, so `lora_rank=16` is a number).

use std::path::{Path, PathBuf};

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use crate::error::{Error, Result};

/// Where a key's value came from, for error lines.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Line `line` (1-based) of the file.
    Line(usize),
    /// A `key=value` after the file on the command line.
    Override,
}

/// One key of the config and its value.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub value: Value,
    pub source: Source,
}

/// A config file read, overrides applied (an override replaces the file's value in place).
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub entries: Vec<Entry>,
}

impl ConfigFile {
    /// Read `path` (`.yaml`, `.yml` or `.json`) and apply `overrides`: `key=value`,
    /// `--key=value` or `--key value`, as llamafactory-cli takes them.
    pub fn read(path: &Path, overrides: &[String]) -> Result<ConfigFile> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::io_hint(
                path,
                e,
                "give the LLaMA-Factory config file (.yaml) to read",
            )
        })?;
        let mut config = ConfigFile::parse(path, &text)?;
        for o in pair_flags(overrides)? {
            config.apply_override(&o)?;
        }
        Ok(config)
    }

    /// Parse the text of `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<ConfigFile> {
        let is_json = path.extension().is_some_and(|e| e == "json");
        let map: Vec<(String, Value)> = if is_json {
            let v: Value = serde_json::from_str(text)
                .map_err(|e| Error::data(path, format!("line {}", e.line()), e.to_string()))?;
            match v {
                Value::Object(m) => m.into_iter().collect(),
                _ => return Err(Error::data(path, "top level", "expected a map of keys")),
            }
        } else {
            let docs = YamlLoader::load_from_str(text).map_err(|e| {
                Error::data(
                    path,
                    format!("line {}", e.marker().line()),
                    format!("not valid YAML: {}", e.info()),
                )
            })?;
            match docs.into_iter().next() {
                None | Some(Yaml::Null) => Vec::new(),
                Some(Yaml::Hash(h)) => {
                    let mut out = Vec::new();
                    for (k, v) in h {
                        let key = match k {
                            Yaml::String(s) => s,
                            other => {
                                return Err(Error::data(
                                    path,
                                    "top level",
                                    format!("key {other:?} is not a name"),
                                ))
                            }
                        };
                        let value = yaml_to_json(&v).ok_or_else(|| {
                            Error::data(
                                path,
                                line_of(text, &key).map_or("top level".into(), |l| format!("line {l}")),
                                format!("key \"{key}\": a value tunelab cannot read (an alias or bad value)"),
                            )
                        })?;
                        out.push((key, value));
                    }
                    out
                }
                Some(_) => return Err(Error::data(path, "top level", "expected a map of keys")),
            }
        };
        let entries = map
            .into_iter()
            .map(|(key, value)| Entry {
                source: Source::Line(line_of(text, &key).unwrap_or(0)),
                key,
                value,
            })
            .collect();
        Ok(ConfigFile {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// Apply one `key=value` override (the value read as YAML).
    pub fn apply_override(&mut self, item: &str) -> Result<()> {
        let item = item.trim_start_matches("--");
        let Some((key, raw)) = item.split_once('=') else {
            return Err(Error::Usage(format!(
                "override \"{item}\": write key=value (e.g. learning_rate=1e-4)"
            )));
        };
        let key = key.trim().to_string();
        let value = if raw.is_empty() {
            Value::Null
        } else {
            YamlLoader::load_from_str(raw)
                .ok()
                .and_then(|docs| docs.into_iter().next())
                .and_then(|y| yaml_to_json(&y))
                .unwrap_or_else(|| Value::String(raw.to_string()))
        };
        match self.entries.iter_mut().find(|e| e.key == key) {
            Some(e) => {
                e.value = value;
                e.source = Source::Override;
            }
            None => self.entries.push(Entry {
                key,
                value,
                source: Source::Override,
            }),
        }
        Ok(())
    }

    /// The entry for `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// Where `entry` is, for an error line: `line 12` or `override`.
    pub fn location(&self, entry: &Entry) -> String {
        match entry.source {
            Source::Line(0) => format!("key \"{}\"", entry.key),
            Source::Line(l) => format!("line {l}: key \"{}\"", entry.key),
            Source::Override => format!("override \"{}\"", entry.key),
        }
    }

    /// An error about `entry`'s value: file, line and key, then `message`.
    pub fn error(&self, entry: &Entry, message: impl Into<String>) -> Error {
        Error::data(&self.path, self.location(entry), message)
    }
}

/// Command-line overrides as `key=value` items: `--key value` pairs joined, `--` dropped.
pub fn pair_flags(args: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.strip_prefix("--") {
            Some(flag) if !flag.contains('=') => match it.next() {
                Some(value) => out.push(format!("{flag}={value}")),
                None => {
                    return Err(Error::Usage(format!(
                        "override --{flag}: give its value (--{flag} VALUE or {flag}=VALUE)"
                    )))
                }
            },
            Some(item) => out.push(item.to_string()),
            None => out.push(a.clone()),
        }
    }
    Ok(out)
}

/// The 1-based line where top-level `key:` is written (LLaMA-Factory configs are flat).
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map(|i| i + 1)
}

/// A YAML value as JSON (None for aliases and bad values).
fn yaml_to_json(y: &Yaml) -> Option<Value> {
    Some(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        // A float tunelab cannot represent (NaN, infinities) stays text, refused where it is used.
        Yaml::Real(s) => y
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(s.clone()), Value::Number),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect::<Option<_>>()?),
        Yaml::Hash(h) => {
            let mut m = serde_json::Map::new();
            for (k, v) in h {
                m.insert(k.as_str()?.to_string(), yaml_to_json(v)?);
            }
            Value::Object(m)
        }
        Yaml::Alias(_) | Yaml::BadValue => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "### model\nmodel_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct\n\n### method\nstage: sft\nlora_rank: 8\nlearning_rate: 1.0e-4\nbf16: true\n# val_size: 0.1\nlora_target: all\n";

    #[test]
    fn keys_keep_their_types_and_lines() {
        let c = ConfigFile::parse(Path::new("cfg.yaml"), EXAMPLE).unwrap();
        let keys: Vec<&str> = c.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "model_name_or_path",
                "stage",
                "lora_rank",
                "learning_rate",
                "bf16",
                "lora_target"
            ]
        );
        assert_eq!(c.get("lora_rank").unwrap().value, Value::from(8));
        assert_eq!(c.get("learning_rate").unwrap().value, Value::from(1e-4));
        assert_eq!(c.get("bf16").unwrap().value, Value::Bool(true));
        assert_eq!(c.get("stage").unwrap().source, Source::Line(5));
        assert!(c.get("val_size").is_none());
    }

    #[test]
    fn overrides_replace_in_place_or_append_and_read_as_yaml() {
        let mut c = ConfigFile::parse(Path::new("cfg.yaml"), EXAMPLE).unwrap();
        c.apply_override("lora_rank=16").unwrap();
        c.apply_override("max_steps=3").unwrap();
        c.apply_override("template=llama3").unwrap();
        assert_eq!(c.get("lora_rank").unwrap().value, Value::from(16));
        assert_eq!(c.get("lora_rank").unwrap().source, Source::Override);
        assert_eq!(c.entries.last().unwrap().key, "template");
        assert_eq!(c.get("max_steps").unwrap().value, Value::from(3));
        let err = c.apply_override("lora_rank").unwrap_err().to_string();
        assert!(err.contains("write key=value"), "{err}");
    }

    #[test]
    fn flag_style_overrides_become_pairs() {
        let args: Vec<String> = ["--lora_rank", "16", "--max_steps=3", "template=chatml"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            pair_flags(&args).unwrap(),
            ["lora_rank=16", "max_steps=3", "template=chatml"]
        );
        let err = pair_flags(&["--seed".to_string()]).unwrap_err().to_string();
        assert!(err.contains("give its value"), "{err}");
    }

    #[test]
    fn broken_yaml_names_the_file_and_line() {
        let err = ConfigFile::parse(Path::new("cfg.yaml"), "a: 1\nb: [1, 2\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cfg.yaml: line "), "{err}");
        let err = ConfigFile::parse(Path::new("cfg.yaml"), "- 1\n- 2\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected a map of keys"), "{err}");
    }

    #[test]
    fn json_configs_are_read_too() {
        let c = ConfigFile::parse(Path::new("cfg.json"), r#"{"lora_rank": 4, "stage": "sft"}"#)
            .unwrap();
        assert_eq!(c.get("lora_rank").unwrap().value, Value::from(4));
    }
}
