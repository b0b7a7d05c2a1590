//! The binary's memory allocator: mimalloc, keeping the memory it frees for the next request
//! instead of returning it to the operating system.
//!
//! A training step allocates and frees the same large buffers (activations, gradients, the
//! logits) every step. With the C library's allocator each one over its mmap threshold is a
//! fresh mapping whose pages the kernel faults in and zeroes on first touch, and is unmapped
//! again when freed: on SmolLM2 (bf16, all-target LoRA, 4 × 256 tokens, 2 threads) page
//! faults, zeroing and the kernel's locks were ~15% of a step's profile. mimalloc reuses freed
//! memory, but by default returns what stays free for 1 s ("purging"), and steps that purge
//! fault it in again. Measured A/B in one invocation each (2026-12-05, AMD EPYC, 2 threads):
//! scripts/bench/sft.rhai's bf16 all-target step, and the tunelab side of
//! scripts/bench/chapter_run.sh (f32, examples of varied length, 20 steps):
//!
//! | allocator | bf16 step | chapter's run | its peak resident memory |
//! |---|---:|---:|---:|
//! | glibc | 1.61–1.84 s | 80.4–91.7 s | 5.27 GiB |
//! | mimalloc, purge after 1 s (its default) | 1.43–2.30 s | 95.2 s | — |
//! | mimalloc, purge after 10 s | 1.33–1.41 s | 93.4–94.9 s | — |
//! | mimalloc, never purge | 1.35–1.42 s | 77.5–79.8 s | 6.36–6.39 GiB |
//!
//! So purging is off: the process keeps its high-water mark of freed memory, as PyTorch's
//! caching allocator does on a GPU. `MIMALLOC_PURGE_DELAY=MS` (mimalloc's own variable) still
//! turns it on when set; `0` returns memory at once, as the C library does, for studies that
//! compare the memory of several runs in one process.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (include/mimalloc.h); the test below
/// checks it against its default in src/options.c.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays with the process before it is returned, in milliseconds; −1:
/// always.
const PURGE_DELAY_MS: std::os::raw::c_long = -1;

/// Call first thing in `main`. A `MIMALLOC_PURGE_DELAY` in the environment (read by mimalloc
/// as the process loads, in any case, or as the older `MIMALLOC_RESET_DELAY`) still wins: this
/// only changes the default.
pub fn configure() {
    // SAFETY: sets one integer option; called before any other thread starts.
    unsafe { libmimalloc_sys::mi_option_set_default(PURGE_DELAY, PURGE_DELAY_MS) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_whose_default_is_one_second() {
        // A mimalloc whose option list moved would make PURGE_DELAY another option.
        // SAFETY: reads one option.
        if std::env::vars().any(|(k, _)| k.to_ascii_lowercase().starts_with("mimalloc_")) {
            eprintln!("skipped: a MIMALLOC_ variable sets the options");
            return;
        }
        let default = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        assert_eq!(
            default, 1000,
            "mi_option_purge_delay moved: update PURGE_DELAY"
        );
    }
}
