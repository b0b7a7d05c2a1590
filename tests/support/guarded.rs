//! Running one hostile input safely: the load runs on a worker thread under `catch_unwind` (with
//! the panic message and place kept, not printed), the caller waits at most a timeout (a hang is
//! reported, not waited for), and a global allocator refuses any single allocation over
//! [`MAX_ALLOCATION`] and records it: a loader that sizes a buffer from a length field it did not
//! check against the file is caught even when the request would have succeeded on a big machine.
//!
//! Include with `#[path = "support/guarded.rs"] mod guarded;` in a test binary of its own: the
//! allocator is global to that binary.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// Largest single allocation a load of a small mutated file may ask for (the seeds are under
/// 1 MB; nothing legitimate comes near this).
pub const MAX_ALLOCATION: usize = 1 << 30;

/// The largest refused request since the last [`take_refused`], 0 if none.
static REFUSED: AtomicUsize = AtomicUsize::new(0);

/// The case being run, for the line printed when a refused allocation aborts the process.
static CURRENT: Mutex<([u8; 200], usize)> = Mutex::new(([0; 200], 0));

struct Capped;

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            refuse(layout.size());
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            refuse(layout.size());
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            refuse(new_size);
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;

/// Record a refused request and say which case made it (without allocating), in case the
/// refusal aborts the process.
fn refuse(size: usize) {
    REFUSED.fetch_max(size, Ordering::SeqCst);
    let mut line = [0u8; 320];
    let mut n = 0;
    let mut put = |bytes: &[u8]| {
        let k = bytes.len().min(line.len() - n);
        line[n..n + k].copy_from_slice(&bytes[..k]);
        n += k;
    };
    put(b"\nmutation: refused an allocation of ");
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = size;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(&digits[i..]);
    put(b" bytes in case ");
    if let Ok(current) = CURRENT.try_lock() {
        put(&current.0[..current.1]);
    }
    put(b"\n");
    let _ = std::io::stderr().write_all(&line[..n]);
    if std::env::var_os("TUNELAB_MUTATION_TRACE").is_some() {
        // Debugging only: this allocates (small amounts) inside the allocator.
        eprintln!("{}", std::backtrace::Backtrace::force_capture());
    }
}

/// Name the case about to run (shown if it makes the process abort).
pub fn set_current(case: &str) {
    let mut current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    let n = case.len().min(current.0.len());
    current.0[..n].copy_from_slice(&case.as_bytes()[..n]);
    current.1 = n;
}

/// The largest allocation refused since the last call, if any.
pub fn take_refused() -> Option<usize> {
    Some(REFUSED.swap(0, Ordering::SeqCst)).filter(|&n| n > 0)
}

thread_local! {
    /// On worker threads: where and why the last panic happened.
    static PANIC: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// Install (once) a panic hook that stays silent on worker threads and keeps the place and
/// message for [`run`]; other threads panic as usual.
pub fn quiet_workers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let on_worker = PANIC.with(|p| p.borrow().is_some());
            if !on_worker {
                default(info);
                return;
            }
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            let place = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            if std::env::var_os("TUNELAB_MUTATION_TRACE").is_some() {
                // A panic that cannot unwind aborts right after this hook: say where it was.
                eprintln!("mutation: worker panicked at {place}: {message}");
            }
            let first_line = message.lines().next().unwrap_or("").to_string();
            PANIC.with(|p| *p.borrow_mut() = Some(Some(format!("{place}: {first_line}"))));
        }));
    });
}

/// How one input ended.
#[derive(Debug)]
pub enum Outcome {
    /// The load succeeded.
    Loaded,
    /// The load failed with this message.
    Failed(String),
    /// The load panicked: place and first line of the message.
    Panicked(String),
    /// No answer within the timeout (the worker is left running).
    Hung(Duration),
}

/// Run `work` on a worker thread, waiting at most `timeout`.
pub fn run(
    timeout: Duration,
    work: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> (Outcome, Duration) {
    quiet_workers();
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    std::thread::Builder::new()
        .name("mutation worker".into())
        .stack_size(8 << 20)
        .spawn(move || {
            PANIC.with(|p| *p.borrow_mut() = Some(None));
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let outcome = match result {
                Ok(Ok(())) => Outcome::Loaded,
                Ok(Err(message)) => Outcome::Failed(message),
                Err(_) => Outcome::Panicked(
                    PANIC
                        .with(|p| p.borrow_mut().take().flatten())
                        .unwrap_or_else(|| "(panic hook saw nothing)".into()),
                ),
            };
            let _ = tx.send(outcome);
        })
        .expect("spawn a worker");
    match rx.recv_timeout(timeout) {
        Ok(outcome) => (outcome, start.elapsed()),
        Err(_) => (Outcome::Hung(timeout), start.elapsed()),
    }
}
