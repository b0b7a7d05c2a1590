//! How `import "..." as x;` finds modules.
//!
//! `lab/NAME` comes from the stdlib embedded in the binary; anything else is a `.rhai` file on disk,
//! relative to the importing script's folder (or the working directory for the REPL and stdin).
//! Unlike Rhai's own file resolver, each module's source is set to the *file path*, so errors inside
//! it read `scripts/util.rhai:4:9` and a module's own relative imports resolve from its folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rhai::{Engine, EvalAltResult, Module, ModuleResolver, Position, Scope, Shared};

/// A loaded module as resolvers hand it to Rhai.
type SharedModule = Shared<Module>;

use super::stdlib;

/// Resolves embedded stdlib modules and script files; caches what it loaded.
pub struct ScriptResolver {
    /// Reuse file modules once loaded (off in the REPL, so edited files reload).
    cache_files: bool,
    cache: Mutex<HashMap<PathBuf, SharedModule>>,
}

impl ScriptResolver {
    /// A resolver; `cache_files: false` re-reads file modules on every import.
    pub fn new(cache_files: bool) -> Self {
        ScriptResolver {
            cache_files,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &Path) -> Option<SharedModule> {
        self.cache.lock().ok()?.get(key).cloned()
    }

    fn remember(&self, key: PathBuf, module: &SharedModule) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, module.clone());
        }
    }
}

/// The file an import path names: relative to the importing source's folder, `.rhai` added.
pub fn import_file(path: &str, importer: Option<&str>) -> PathBuf {
    let mut file = match importer.and_then(|s| Path::new(s).parent()) {
        Some(dir) if Path::new(path).is_relative() => dir.join(path),
        _ => PathBuf::from(path),
    };
    if file.extension().is_none() {
        file.set_extension("rhai");
    }
    crate::fsutil::tidy_path(&file)
}

fn compile_module(
    engine: &Engine,
    text: &str,
    source: &str,
    import: &str,
    pos: Position,
) -> Result<SharedModule, Box<EvalAltResult>> {
    let in_module = |err: Box<EvalAltResult>| {
        Box::new(EvalAltResult::ErrorInModule(import.to_string(), err, pos))
    };
    let mut ast = engine.compile(text).map_err(|e| in_module(e.into()))?;
    ast.set_source(source);
    let module = Module::eval_ast_as_new(Scope::new(), &ast, engine).map_err(in_module)?;
    Ok(module.into())
}

impl ModuleResolver for ScriptResolver {
    fn resolve(
        &self,
        engine: &Engine,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<SharedModule, Box<EvalAltResult>> {
        if path.starts_with(stdlib::PREFIX) {
            let key = PathBuf::from(path);
            if let Some(module) = self.cached(&key) {
                return Ok(module);
            }
            let text = stdlib::source(path).ok_or_else(|| {
                let known: Vec<&str> = stdlib::STDLIB.iter().map(|(p, _)| *p).collect();
                let msg = format!(
                    "no stdlib module \"{path}\"; the stdlib has: {}",
                    known.join(", ")
                );
                Box::new(EvalAltResult::ErrorRuntime(msg.into(), pos))
            })?;
            let module = compile_module(engine, text, &stdlib::source_name(path), path, pos)?;
            self.remember(key, &module);
            return Ok(module);
        }

        let file = import_file(path, source);
        if self.cache_files {
            if let Some(module) = self.cached(&file) {
                return Ok(module);
            }
        }
        let text = std::fs::read_to_string(&file).map_err(|e| {
            let msg = format!("cannot import \"{path}\": {}: {e}", file.display());
            Box::new(EvalAltResult::ErrorRuntime(msg.into(), pos))
        })?;
        let module = compile_module(engine, &text, &file.to_string_lossy(), path, pos)?;
        if self.cache_files {
            self.remember(file, &module);
        }
        Ok(module)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_resolve_next_to_the_importer() {
        assert_eq!(
            import_file("./util", Some("scripts/x.rhai")),
            PathBuf::from("scripts/util.rhai")
        );
        assert_eq!(import_file("util.rhai", None), PathBuf::from("util.rhai"));
        assert_eq!(
            import_file("/abs/m", Some("scripts/x.rhai")),
            PathBuf::from("/abs/m.rhai")
        );
    }
}
