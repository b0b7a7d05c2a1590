//! Script API, area "dist": which data-parallel rank this script runs as. Every rank runs the
//! same script (as under torchrun); `sft` shares the work by itself, and these let a script
//! keep the rest to one rank (`if is_main() { export_gguf(...) }`) or wait for the others.

use rhai::plugin::*;

/// The area name `:help` groups these functions under.
pub const AREA: &str = "dist";

/// The compiled module of this area.
pub fn module() -> rhai::Module {
    exported_module!(dist_api)
}

#[export_module]
mod dist_api {
    use rhai::INT;

    use crate::script::errors::{IntoScript, ScriptResult};

    /// This process's rank in a data-parallel job: 0 … `dist_world() - 1` (0 when alone).
    pub fn dist_rank() -> INT {
        crate::collective::rank_and_world().0 as INT
    }

    /// How many ranks the job has (1 when this process runs alone).
    pub fn dist_world() -> INT {
        crate::collective::rank_and_world().1 as INT
    }

    /// Whether this is rank 0 (or a single process): the rank that writes and prints.
    pub fn is_main() -> bool {
        crate::collective::is_main()
    }

    /// Wait until every rank reaches this point (nothing to wait for when alone): e.g. after
    /// rank 0 writes a file the others read.
    #[rhai_fn(return_raw)]
    pub fn barrier() -> ScriptResult<()> {
        match crate::collective::current() {
            Some(group) => group.barrier().script(),
            None => Ok(()),
        }
    }
}
