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

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
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
}
