//! What this build of tunelab is made of: its own version, the versions of the candle and rhai
//! crates compiled in (read from `Cargo.lock` by `src/build.rs`), the CPU features candle uses, and
//! the compute devices it can see. Shown by `tunelab --version` and `version()` in scripts.

/// The facts about this build, in the order they are printed.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    /// `(name, version)` of tunelab and its core crates.
    pub crates: Vec<(&'static str, &'static str)>,
    /// Whether the binary was built with `--features cuda`.
    pub cuda_built: bool,
    /// Devices usable now, e.g. `["cpu"]` or `["cpu", "cuda:0"]`.
    pub devices: Vec<String>,
    /// CPU instruction-set extensions candle was compiled to use (e.g. `avx`, `f16c`).
    pub cpu_features: Vec<&'static str>,
}

/// Collect the build facts. Probing CUDA devices (with the `cuda` feature) takes a moment.
pub fn build_info() -> BuildInfo {
    use candle_core::utils;
    let crates = vec![
        ("tunelab", env!("CARGO_PKG_VERSION")),
        ("rhai", env!("TUNELAB_DEP_RHAI")),
        ("candle-core", env!("TUNELAB_DEP_CANDLE_CORE")),
        ("candle-nn", env!("TUNELAB_DEP_CANDLE_NN")),
        (
            "candle-transformers",
            env!("TUNELAB_DEP_CANDLE_TRANSFORMERS"),
        ),
    ];
    let mut cpu_features = Vec::new();
    for (on, name) in [
        (utils::with_avx(), "avx"),
        (utils::with_f16c(), "f16c"),
        (utils::with_neon(), "neon"),
        (utils::with_simd128(), "simd128"),
        (utils::has_mkl(), "mkl"),
        (utils::has_accelerate(), "accelerate"),
    ] {
        if on {
            cpu_features.push(name);
        }
    }
    BuildInfo {
        crates,
        cuda_built: cfg!(feature = "cuda"),
        devices: devices(),
        cpu_features,
    }
}

/// The devices candle can open: always `cpu`, then each CUDA device that opens.
pub fn devices() -> Vec<String> {
    let mut found = vec!["cpu".to_string()];
    if candle_core::utils::cuda_is_available() {
        /// More GPUs than any single machine tunelab targets.
        const MAX_CUDA_DEVICES: usize = 16;
        for ordinal in 0..MAX_CUDA_DEVICES {
            if candle_core::Device::new_cuda(ordinal).is_err() {
                break;
            }
            found.push(format!("cuda:{ordinal}"));
        }
    }
    found
}

impl std::fmt::Display for BuildInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, version) = self.crates[0];
        writeln!(f, "{name} {version}")?;
        for (name, version) in &self.crates[1..] {
            writeln!(f, "  {name} {version}")?;
        }
        let cuda = if self.cuda_built {
            "built with cuda"
        } else {
            "cpu-only build"
        };
        writeln!(f, "  {cuda}; devices: {}", self.devices.join(", "))?;
        write!(f, "  cpu features: {}", self.cpu_features.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_cargo_lock() {
        let info = build_info();
        for (name, version) in &info.crates {
            assert_ne!(*version, "unknown", "{name} missing from Cargo.lock");
            assert!(
                version.chars().next().unwrap().is_ascii_digit(),
                "{name} {version}"
            );
        }
        assert_eq!(info.devices[0], "cpu");
    }
}
