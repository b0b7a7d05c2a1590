//! What a server serves: one base model under a name, and LoRA adapters on top of it, each
//! under its own name — the ids `/v1/models` lists (vLLM's lineage: an adapter's `parent` is the
//! base) and a request's `model` field picks. Adapters stay unmerged, so requests for different
//! adapters share the base weights and decode in one batch.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::generate::chat::TemplateChoice;
use crate::lora::Adapter;
use crate::model::Model;

/// An adapter to load: the name requests use, and its folder (a PEFT adapter or a tunelab run).
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSource {
    pub name: String,
    pub path: PathBuf,
}

impl AdapterSource {
    /// `NAME=PATH`, as `--lora` takes it.
    pub fn parse(spec: &str) -> Result<AdapterSource> {
        match spec.split_once('=') {
            Some((name, path)) if !name.trim().is_empty() && !path.trim().is_empty() => {
                Ok(AdapterSource {
                    name: name.trim().to_string(),
                    path: PathBuf::from(path.trim()),
                })
            }
            _ => Err(Error::msg(format!(
                "--lora {spec}: expected NAME=PATH (a name for requests' \"model\" field, then a PEFT adapter folder or a tunelab run)"
            ))),
        }
    }
}

/// One loaded adapter.
pub struct ServedAdapter {
    pub name: String,
    /// Where it was loaded from (`root` in `/v1/models`).
    pub root: String,
    pub adapter: Adapter,
    /// How its prompts are written: the server's `--template`, else the template it was
    /// trained with, else the base model's.
    pub template: TemplateChoice,
}

/// The base model and its adapters.
pub struct Served {
    pub model: Model,
    /// The base model's id.
    pub name: String,
    /// Where it was loaded from.
    pub root: String,
    pub template: TemplateChoice,
    pub adapters: Vec<ServedAdapter>,
    /// Unix seconds when loaded (`created` in `/v1/models`).
    pub created: u64,
}

/// A request's choice: the base (None) or adapter `i`.
pub type Target = Option<usize>;

impl Served {
    /// Serve `model` as `name`, with `adapters` loaded from their folders and checked against
    /// it; `template` is a built-in template name or `auto` (None: each adapter's training
    /// template, else `auto`).
    pub fn new(
        model: Model,
        name: &str,
        adapters: &[AdapterSource],
        template: Option<&str>,
    ) -> Result<Served> {
        let mut loaded = Vec::new();
        for source in adapters {
            let adapter = crate::lora::peft::load_trained(&source.path, &model.llama)
                .map_err(|e| Error::msg(format!("--lora {}: {e}", source.name)))?;
            loaded.push((
                source.name.clone(),
                source.path.display().to_string(),
                adapter,
            ));
        }
        Served::with_adapters(model, name, loaded, template)
    }

    /// [`Served::new`] with adapters already loaded: (name, where it came from, adapter).
    pub fn with_adapters(
        model: Model,
        name: &str,
        adapters: Vec<(String, String, Adapter)>,
        template: Option<&str>,
    ) -> Result<Served> {
        let base_template = TemplateChoice::resolve(template.unwrap_or("auto"), &model)?;
        let mut loaded: Vec<ServedAdapter> = Vec::new();
        for (adapter_name, root, adapter) in adapters {
            if adapter_name == name || loaded.iter().any(|a| a.name == adapter_name) {
                return Err(Error::msg(format!(
                    "adapter {adapter_name} ({root}): the name \"{adapter_name}\" is already taken; give each adapter its own name"
                )));
            }
            adapter.check_fits(&model.llama, Path::new(&root))?;
            let template = match (template, &adapter.template) {
                (None, Some(trained)) => TemplateChoice::resolve(trained, &model)?,
                _ => base_template.clone(),
            };
            loaded.push(ServedAdapter {
                name: adapter_name,
                root,
                adapter,
                template,
            });
        }
        Ok(Served {
            root: model.source.clone(),
            model,
            name: name.to_string(),
            template: base_template,
            adapters: loaded,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })
    }

    /// The base model's default id: its file name without extension (`tiny` for the preset).
    pub fn default_name(source: &str) -> String {
        let first = source.split_whitespace().next().unwrap_or(source);
        let path = Path::new(first);
        path.file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| first.to_string())
    }

    /// The target a `model` field names; None when nothing has that name.
    pub fn find(&self, model: &str) -> Option<Target> {
        if model == self.name {
            return Some(None);
        }
        self.adapters.iter().position(|a| a.name == model).map(Some)
    }

    /// Every id, base first.
    pub fn names(&self) -> Vec<&str> {
        std::iter::once(self.name.as_str())
            .chain(self.adapters.iter().map(|a| a.name.as_str()))
            .collect()
    }

    /// The template prompts for `target` are written in.
    pub fn template(&self, target: Target) -> &TemplateChoice {
        match target {
            Some(i) => &self.adapters[i].template,
            None => &self.template,
        }
    }

    /// The adapter `target` runs with.
    pub fn adapter(&self, target: Target) -> Option<&Adapter> {
        target.map(|i| &self.adapters[i].adapter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_specs_and_default_names() {
        let a = AdapterSource::parse("zh=runs/zh").unwrap();
        assert_eq!(
            (a.name.as_str(), a.path.as_path()),
            ("zh", Path::new("runs/zh"))
        );
        for bad in ["zh", "=runs/zh", "zh=", ""] {
            let e = AdapterSource::parse(bad).unwrap_err().to_string();
            assert!(e.contains("NAME=PATH"), "{e}");
        }
        assert_eq!(
            Served::default_name("models/SmolLM2.Q4_1.gguf"),
            "SmolLM2.Q4_1"
        );
        assert_eq!(Served::default_name("tiny (seed 0)"), "tiny");
    }
}
