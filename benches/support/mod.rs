//! Reading back what criterion measured in this run, to report ratios
//! against a baseline measured in the same run; and what the benches share.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::SystemTime;

static STARTED: OnceLock<SystemTime> = OnceLock::new();

/// Marks the start of this run: estimates criterion wrote before it (a
/// filter left their rows out this time) are not reported as this run's.
pub fn begin() {
    STARTED.get_or_init(SystemTime::now);
}

/// criterion's point estimate of the mean time per iteration, in ns, for
/// `group/id` from the run just made; `None` when it did not run (e.g. a
/// filter excluded it, or `--test`).
pub fn mean_ns(group: &str, id: &str) -> Option<f64> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    // criterion's own file-name mangling of benchmark ids.
    let mangle = |s: &str| s.replace(['?', '"', '/', '\\', '*', '<', '>', ':', '|', '^'], "_");
    let file = format!(
        "{target}/criterion/{}/{}/new/estimates.json",
        mangle(group),
        mangle(id)
    );
    if let Some(started) = STARTED.get() {
        let written = std::fs::metadata(&file).and_then(|m| m.modified()).ok()?;
        if written < *started {
            return None;
        }
    }
    let json = std::fs::read_to_string(file).ok()?;
    let mean = &json[json.find("\"mean\"")?..];
    let key = "\"point_estimate\":";
    let est = &mean[mean.find(key)? + key.len()..];
    est[..est.find([',', '}'])?].trim().parse().ok()
}

/// Prints each id's mean per `per` items and its ratio to `baseline`'s.
pub fn print_ratios(group: &str, baseline: (&str, f64), ids: &[(&str, f64)]) {
    let Some(base) = mean_ns(group, baseline.0).map(|ns| ns / baseline.1) else {
        return;
    };
    println!("\n{group}: ratio to {} ({base:.0} ns each)", baseline.0);
    for (id, per) in ids {
        if let Some(ns) = mean_ns(group, id).map(|ns| ns / per) {
            println!(
                "  {id:<40} {ns:>10.0} ns each  {:>10.0}/s  {:.2}x",
                1e9 / ns,
                ns / base
            );
        }
    }
}

/// The value at fraction `p` of `sorted` (nanoseconds), in microseconds.
pub fn percentile(sorted: &[i64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// The median and the 99th percentile of `samples` (nanoseconds), in
/// microseconds.
pub fn median_p99(samples: &mut [i64]) -> (f64, f64) {
    samples.sort_unstable();
    (percentile(samples, 0.5), percentile(samples, 0.99))
}

/// The whole file's lock of type `l_type` (`F_WRLCK`, `F_UNLCK`, ...).
pub fn whole_file(l_type: nix::libc::c_int) -> nix::libc::flock {
    // Every field set (the struct has no others on x86_64 and aarch64).
    nix::libc::flock {
        l_type: l_type as nix::libc::c_short,
        l_whence: nix::libc::SEEK_SET as nix::libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}
