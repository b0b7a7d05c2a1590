//! What this process has used so far: peak resident memory and CPU time, for benchmarks that
//! report memory next to speed. Linux reads `/proc/self`; elsewhere the numbers are absent.

/// Peak resident set size (VmHWM) and CPU seconds (user + system) of this process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub peak_rss_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
}

/// Read the current figures.
pub fn process_stats() -> ProcessStats {
    ProcessStats {
        peak_rss_bytes: peak_rss_bytes(),
        cpu_seconds: cpu_seconds(),
    }
}

/// Start a new peak: hand memory the allocator keeps but no longer uses back to the system
/// (glibc's `malloc_trim`), then set this process's recorded peak resident size (VmHWM) to what
/// it holds now (Linux's `/proc/self/clear_refs`, value 5), so that the next reading is the peak
/// of what runs from here on over what is alive now, not of everything before. Returns false
/// where that is not possible.
pub fn reset_peak_rss() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only returns free heap pages to the kernel; it takes no pointers.
        unsafe {
            malloc_trim(0);
        }
    }
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn peak_rss_bytes() -> Option<u64> {
    status_kb("VmHWM:").map(|kb| kb * 1024)
}

/// The resident set size now (VmRSS).
pub fn rss_bytes() -> Option<u64> {
    status_kb("VmRSS:").map(|kb| kb * 1024)
}

fn status_kb(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    /// Linux's USER_HZ, fixed at 100 on every architecture tunelab targets.
    const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
    Some((utime + stime) / CLOCK_TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn figures_are_present_and_plausible() {
        let s = process_stats();
        assert!(s.peak_rss_bytes.unwrap() > 1 << 20);
        let busy: u64 = (0..20_000_000u64).fold(0, |a, b| a.wrapping_add(b * b));
        assert!(busy > 0);
        assert!(s.cpu_seconds.unwrap() >= 0.0);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_reset_peak_forgets_memory_already_given_back() {
        // Touch 256 MB, free it, reset: the new peak is below the old one.
        let big = vec![1u8; 256 << 20];
        assert_eq!(big.iter().map(|&b| b as usize).sum::<usize>(), 256 << 20);
        let before = process_stats().peak_rss_bytes.unwrap();
        drop(big);
        if reset_peak_rss() {
            let after = process_stats().peak_rss_bytes.unwrap();
            assert!(after < before, "{after} ≥ {before}");
        }
    }
}
