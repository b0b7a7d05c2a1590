//! Script API, area "core": facts about the build, waiting, and option checking for stdlib code.
//!
//! Thin bindings only: each function converts its arguments, calls the core and maps errors.

use rhai::plugin::*;

/// The area name `:help` groups these functions under.
pub const AREA: &str = "core";

/// The compiled module of this area.
pub fn module() -> rhai::Module {
    exported_module!(core_api)
}

#[export_module]
mod core_api {
    use rhai::{Array, Dynamic, Map, NativeCallContext, INT};

    use crate::script::engine::host;
    use crate::script::errors::{IntoScript, ScriptResult};
    use crate::script::options::Options;

    /// Versions of tunelab, rhai and candle, whether CUDA was built in, the usable devices and the
    /// CPU features candle uses: `#{ tunelab, rhai, candle_core, ..., devices, cuda, cpu_features }`.
    pub fn version() -> Map {
        let info = crate::version::build_info();
        let mut map = Map::new();
        for (name, version) in &info.crates {
            map.insert(
                name.replace('-', "_").into(),
                Dynamic::from(version.to_string()),
            );
        }
        let list = |items: Vec<String>| -> Dynamic {
            Dynamic::from(items.into_iter().map(Dynamic::from).collect::<Array>())
        };
        map.insert("devices".into(), list(info.devices));
        map.insert("cuda".into(), Dynamic::from(info.cuda_built));
        let features = info.cpu_features.iter().map(|s| s.to_string()).collect();
        map.insert("cpu_features".into(), list(features));
        map
    }

    /// This process's peak resident memory and CPU time so far:
    /// `#{ peak_rss_bytes, cpu_seconds }` (`()` where the system does not say).
    pub fn process_stats() -> Map {
        let s = crate::procstat::process_stats();
        let mut map = Map::new();
        let rss = s
            .peak_rss_bytes
            .map_or(Dynamic::UNIT, |b| Dynamic::from(b as INT));
        map.insert("peak_rss_bytes".into(), rss);
        map.insert(
            "cpu_seconds".into(),
            s.cpu_seconds.map_or(Dynamic::UNIT, Dynamic::from),
        );
        map
    }

    /// A new empty folder under the system's temporary directory (for scratch runs and exports
    /// in tests and experiments); it is not removed automatically.
    #[rhai_fn(return_raw)]
    pub fn temp_dir() -> ScriptResult<String> {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        loop {
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "tunelab-{}-{}-{n}",
                std::process::id(),
                crate::clock::stamp()
            ));
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(dir.display().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(crate::script::errors::runtime(format!(
                        "temp_dir: {}: {e}",
                        dir.display()
                    )))
                }
            }
        }
    }

    /// The whole text of the file at `path` (UTF-8).
    #[rhai_fn(return_raw)]
    pub fn read_text(path: &str) -> ScriptResult<String> {
        std::fs::read_to_string(path)
            .map_err(|e| crate::Error::io(path, e))
            .script()
    }

    /// Write `text` to `path`, creating folders; written to a temporary name and renamed, so
    /// the file is never left half-written.
    #[rhai_fn(return_raw)]
    pub fn write_text(path: &str, text: &str) -> ScriptResult<()> {
        crate::fsutil::write_atomic(std::path::Path::new(path), text.as_bytes()).script()
    }

    /// Wait `seconds` (a number). Ctrl-C interrupts the wait at once.
    #[rhai_fn(return_raw)]
    pub fn sleep(ctx: NativeCallContext, seconds: f64) -> ScriptResult<()> {
        let duration = std::time::Duration::from_secs_f64(seconds.max(0.0));
        host(&ctx).cancel.sleep(duration).script()
    }

    /// Wait `seconds` (an integer). Ctrl-C interrupts the wait at once.
    #[rhai_fn(name = "sleep", return_raw)]
    pub fn sleep_int(ctx: NativeCallContext, seconds: INT) -> ScriptResult<()> {
        sleep(ctx, seconds as f64)
    }

    /// Check an option map in script code: throws when `opts` has a key not in `valid`, naming it
    /// and listing the valid keys; `what` names the map in the message (e.g. `"table options"`).
    #[rhai_fn(return_raw)]
    pub fn check_options(opts: Map, what: &str, valid: Array) -> ScriptResult<Map> {
        let valid: Vec<String> = valid.iter().map(|v| v.to_string()).collect();
        let valid: Vec<&str> = valid.iter().map(String::as_str).collect();
        Options::new(what, opts.clone(), &valid)?;
        Ok(opts)
    }
}
