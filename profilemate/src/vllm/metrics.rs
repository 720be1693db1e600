//! The API server's Prometheus `/metrics`, as a cross-check of what ProfileMate measured:
//! found on the target processes' listening TCP sockets on localhost, read with one HTTP GET
//! at the session's start and end (read-only: the same request any monitoring system makes).
//!
//! Owns finding, reading and comparing /metrics; not when it is read (`watcher`).

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use serde::Serialize;

/// Metrics compared, as vLLM names them.
pub const PREEMPTIONS: &str = "vllm:num_preemptions_total";
/// See `PREEMPTIONS`.
pub const KV_USAGE: &str = "vllm:kv_cache_usage_perc";
/// See `PREEMPTIONS`.
pub const RUNNING: &str = "vllm:num_requests_running";
/// See `PREEMPTIONS`.
pub const WAITING: &str = "vllm:num_requests_waiting";
const NAMES: &[&str] = &[PREEMPTIONS, KV_USAGE, RUNNING, WAITING];

/// A response larger than this is cut (a vLLM /metrics page is tens of KB).
const MAX_BODY: usize = 8 << 20;
const TIMEOUT: Duration = Duration::from_secs(2);

/// One reading of an endpoint: each compared metric summed over its label sets.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Scrape {
    /// `http://127.0.0.1:PORT/metrics`.
    pub url: String,
    /// Process that listens on it.
    pub pid: u32,
    /// Metric name -> value (summed over label sets: engines, models).
    pub values: BTreeMap<String, f64>,
}

/// Listening TCP ports of `pid` (IPv4 and IPv6, any or loopback address).
fn listening_ports(pid: u32) -> Vec<u16> {
    let Ok(p) = procfs::process::Process::new(pid as i32) else {
        return Vec::new();
    };
    let inodes: std::collections::HashSet<u64> = p
        .fd()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| match fd.target {
            procfs::process::FDTarget::Socket(inode) => Some(inode),
            _ => None,
        })
        .collect();
    let mut ports = Vec::new();
    let listen = |e: &procfs::net::TcpNetEntry| {
        e.state == procfs::net::TcpState::Listen && inodes.contains(&e.inode)
    };
    for e in p.tcp().into_iter().flatten().filter(|e| listen(e)) {
        ports.push(e.local_address.port());
    }
    for e in p.tcp6().into_iter().flatten().filter(|e| listen(e)) {
        ports.push(e.local_address.port());
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Listening ports per process, looked up again only every `PORTS_REFRESH`: a lookup reads
/// the process's fds and /proc/PID/net/tcp{,6}, whose read walks the kernel's whole TCP hash
/// table (a fifth of the watcher thread's time when done at every scrape), while a server's
/// ports are opened once at start.
#[derive(Default)]
pub struct Ports(HashMap<u32, (std::time::Instant, Vec<u16>)>);

/// How long a process's listening ports are taken as known.
const PORTS_REFRESH: std::time::Duration = std::time::Duration::from_secs(15);

impl Ports {
    /// `pid`'s listening ports, from the last lookup if it is recent.
    fn of(&mut self, pid: u32) -> Vec<u16> {
        let now = std::time::Instant::now();
        match self.0.get(&pid) {
            Some((at, ports)) if now.duration_since(*at) < PORTS_REFRESH => ports.clone(),
            _ => {
                let ports = listening_ports(pid);
                self.0.insert(pid, (now, ports.clone()));
                ports
            }
        }
    }
}

/// GET /metrics on localhost:`port`; the body when the answer is 200.
fn get_metrics(port: u16) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).ok()?;
    s.set_read_timeout(Some(TIMEOUT)).ok()?;
    s.set_write_timeout(Some(TIMEOUT)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    s.take(MAX_BODY as u64).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    status.contains(" 200").then(|| body.to_owned())
}

/// Sums of the compared metrics in a Prometheus text page (None: no vLLM metric in it).
#[must_use]
pub fn parse(body: &str) -> Option<BTreeMap<String, f64>> {
    let mut values = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (series, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => continue,
        };
        if !NAMES.contains(&series) {
            continue;
        }
        // The value follows the label set (which may contain spaces inside quotes).
        let after_labels = rest.rfind('}').map_or(rest, |i| &rest[i + 1..]);
        let Some(v) = after_labels
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        *values.entry(series.to_owned()).or_insert(0.0) += v;
    }
    (!values.is_empty()).then_some(values)
}

/// One endpoint's metric values.
type Values = BTreeMap<String, f64>;

/// Failed reads after which a port is not asked again.
const MAX_PORT_FAILURES: u32 = 2;
/// Process titles of vLLM's engine and worker processes (`VLLM::EngineCore`,
/// `VLLM::Worker_TP0`): they serve no /metrics, and their ZMQ sockets would only cost
/// timeouts (a busy EngineCore listens on several).
const ENGINE_TITLE_PREFIX: &str = "VLLM::";

fn is_engine_process(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| c.starts_with(ENGINE_TITLE_PREFIX))
}

/// Reads every vLLM /metrics endpoint the processes listen on, all ports at once (a slow
/// endpoint costs its own time only). `failures` counts, per (pid, port), reads that got no
/// vLLM metrics; a port at `MAX_PORT_FAILURES` is skipped.
#[must_use]
pub fn scrape(
    pids: &[u32],
    failures: &mut HashMap<(u32, u16), u32>,
    known: &mut Ports,
) -> Vec<Scrape> {
    let ports: Vec<(u32, u16)> = pids
        .iter()
        .filter(|pid| !is_engine_process(**pid))
        .flat_map(|&pid| known.of(pid).into_iter().map(move |p| (pid, p)))
        .filter(|key| failures.get(key).copied().unwrap_or(0) < MAX_PORT_FAILURES)
        .collect();
    let read: Vec<((u32, u16), Option<Values>)> = std::thread::scope(|s| {
        let handles: Vec<_> = ports
            .iter()
            .map(|&key| {
                (
                    key,
                    s.spawn(move || get_metrics(key.1).as_deref().and_then(parse)),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(key, h)| (key, h.join().ok().flatten()))
            .collect()
    });
    let mut out = Vec::new();
    for ((pid, port), values) in read {
        let failed = failures.entry((pid, port)).or_default();
        *failed = if values.is_some() { 0 } else { *failed + 1 };
        if let Some(values) = values {
            out.push(Scrape {
                url: format!("http://127.0.0.1:{port}/metrics"),
                pid,
                values,
            });
        }
    }
    out
}

/// The comparison written into metadata.json.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MetricsCheck {
    /// Endpoints read at the start (none: no /metrics was reachable on localhost).
    pub start: Vec<Scrape>,
    /// Endpoints read at the end.
    pub end: Vec<Scrape>,
    /// Server-side preemptions during the session (end - start of the first endpoint).
    pub server_preemptions: Option<f64>,
    /// Preemptions ProfileMate recorded (preemption_events.csv rows).
    pub profilemate_preemptions: u64,
    /// Server KV cache usage at the end, in percent.
    pub server_kv_usage_pct: Option<f64>,
    /// ProfileMate's last KV usage reading, in percent.
    pub profilemate_kv_usage_pct: Option<f64>,
    /// What the numbers mean.
    pub note: &'static str,
}

impl MetricsCheck {
    /// Compares the scrapes with ProfileMate's numbers.
    #[must_use]
    pub fn new(
        start: Vec<Scrape>,
        end: Vec<Scrape>,
        preemptions: u64,
        kv_pct: Option<f64>,
    ) -> Self {
        let first = |v: &[Scrape], name: &str| v.first().and_then(|s| s.values.get(name).copied());
        let server_preemptions = first(&end, PREEMPTIONS)
            .zip(first(&start, PREEMPTIONS))
            .map(|(e, s)| e - s);
        Self {
            server_kv_usage_pct: first(&end, KV_USAGE).map(|v| (v * 100_000.0).round() / 1000.0),
            start,
            end,
            server_preemptions,
            profilemate_preemptions: preemptions,
            profilemate_kv_usage_pct: kv_pct.map(|v| (v * 1000.0).round() / 1000.0),
            note: "vllm:num_preemptions_total is counted in the API server from the engine's PREEMPTED events and published with each stats interval, so it can trail the engine by one interval at the session's edges; KV usage readings are taken at slightly different moments",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labelled_series_and_sums_engines() {
        let page =
            "# HELP vllm:num_preemptions_total x\n# TYPE vllm:num_preemptions_total counter\n\
vllm:num_preemptions_total{engine=\"0\",model_name=\"m a\"} 7.0\n\
vllm:num_preemptions_total{engine=\"1\",model_name=\"m a\"} 2.0\n\
vllm:kv_cache_usage_perc{engine=\"0\"} 0.25\n\
vllm:prompt_tokens_total{engine=\"0\"} 99\n";
        let v = parse(page).expect("vllm metrics");
        assert_eq!(v.get(PREEMPTIONS), Some(&9.0));
        assert_eq!(v.get(KV_USAGE), Some(&0.25));
        assert!(!v.contains_key("vllm:prompt_tokens_total"));
        assert!(parse("up 1\n").is_none());
    }
}
