//! The clock every stage stamps with: CLOCK_MONOTONIC ns (what `bpf_ktime_get_ns` reads), the
//! session's time base that turns those stamps into session seconds, and ms rounding.
//!
//! Owns no I/O and knows nothing of the records that carry the stamps.

/// Converts probe timestamps (CLOCK_MONOTONIC ns) to seconds since the session start.
#[derive(Clone, Copy, Debug)]
pub struct TimeBase {
    /// CLOCK_MONOTONIC ns at session start.
    pub t0_ns: u64,
    /// Unix time (seconds) at session start: converts the target's `time.time()` stamps.
    pub unix_t0_sec: f64,
}

impl TimeBase {
    /// Session-relative seconds, rounded to microseconds.
    #[must_use]
    pub fn sec(&self, ts_ns: u64) -> f64 {
        let d = ts_ns as i128 - self.t0_ns as i128;
        (d as f64 / 1e3).round() / 1e6
    }

    /// Session-relative seconds of a Unix timestamp (negative: before the session).
    #[must_use]
    pub fn unix_sec(&self, unix: f64) -> f64 {
        ((unix - self.unix_t0_sec) * 1e6).round() / 1e6
    }
}

/// Milliseconds with microsecond resolution.
#[must_use]
pub fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e3).round() / 1e3
}

/// Current CLOCK_MONOTONIC in ns (the clock `bpf_ktime_get_ns` reads).
#[must_use]
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64) * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}
