//! Checks of what `profilemate report` writes, shared by the fixture test (report.rs) and
//! the recorded real-vLLM session (real_session.rs): trace.json against the session's CSV
//! files, the speedscope profile against cpu_profile.folded, and report.html loaded in real
//! headless Chromium (Debian's `chromium`, installed by `cargo xtask test`; required when
//! CI=true, elsewhere its absence skips the browser half with a message).

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::Command,
};

use crate::{root, Session};

/// Rows of a CSV file of the session (0 when absent).
pub fn rows(s: &Session, name: &str) -> usize {
    if s.dir.join(name).exists() {
        s.csv(name).len()
    } else {
        0
    }
}

/// trace.json: well-formed events, balanced async spans, no partial overlap on a track, and
/// one span per CSV row.
pub fn check_trace(s: &Session, path: &Path) {
    let text = std::fs::read_to_string(path).expect("trace.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("trace.json parses");
    let events = v["traceEvents"].as_array().expect("traceEvents");
    let mut open: HashMap<String, i64> = HashMap::new();
    let mut by_track: BTreeMap<(u64, u64), Vec<(f64, f64)>> = BTreeMap::new();
    let mut count: HashMap<(String, String), usize> = HashMap::new();
    for e in events {
        for k in ["ph", "ts", "pid", "tid"] {
            assert!(!e[k].is_null(), "{k} missing: {e}");
        }
        let ph = e["ph"].as_str().expect("ph").to_owned();
        let cat = e["cat"].as_str().unwrap_or("").to_owned();
        *count.entry((ph.clone(), cat)).or_default() += 1;
        match ph.as_str() {
            "X" => {
                let (ts, dur) = (
                    e["ts"].as_f64().expect("ts"),
                    e["dur"].as_f64().expect("dur"),
                );
                assert!(dur >= 0.0, "{e}");
                let key = (
                    e["pid"].as_u64().expect("pid"),
                    e["tid"].as_u64().expect("tid"),
                );
                by_track.entry(key).or_default().push((ts, ts + dur));
            }
            "b" | "e" => {
                let id = format!("{}/{}", e["cat"], e["id"]);
                *open.entry(id).or_default() += if ph == "b" { 1 } else { -1 };
            }
            "i" | "C" | "M" => {}
            other => panic!("unexpected phase {other}: {e}"),
        }
    }
    assert!(open.values().all(|n| *n == 0), "unbalanced async spans");
    for (track, spans) in &mut by_track {
        spans.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in spans.windows(2) {
            assert!(
                w[0].1 <= w[1].0 + 2e-3, // ns rounding of ts and dur
                "track {track:?}: {:?} overlaps {:?}",
                w[0],
                w[1]
            );
        }
    }
    let n = |ph: &str, cat: &str| {
        count
            .get(&(ph.to_owned(), cat.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    let steps = rows(s, "forward_pass_timing.csv");
    assert!(steps >= 250, "{steps} steps");
    assert_eq!(n("X", "gpu"), steps, "a GPU span per step");
    assert_eq!(n("X", "launch"), steps, "a launch span per step");
    assert_eq!(n("X", "gc"), rows(s, "gc_pauses.csv"));
    assert_eq!(n("i", "preemption"), rows(s, "preemption_events.csv"));
    assert_eq!(n("i", "graph_replay"), rows(s, "cuda_graph_timeline.csv"));
    assert_eq!(n("b", "request"), rows(s, "request_lifecycle.csv"));
    assert!(
        n("b", "request") > 0 && n("X", "gc") > 0 && n("C", "cpu") > 0,
        "{count:?}"
    );
}

/// cpu_profile.speedscope.json: sampled profiles whose weights add up to the folded counts;
/// a session without cpu_profile.folded (its stacks not kept) gives a profile without
/// samples.
pub fn check_speedscope(s: &Session, path: &Path) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("speedscope")).expect("parses");
    let frames = v["shared"]["frames"].as_array().expect("frames").len();
    let period = s.json("cpu_timing_summary.json")["sample_period_ms"]
        .as_f64()
        .expect("period");
    let folded_path = s.dir.join("cpu_profile.folded");
    let has_folded = folded_path.exists();
    let folded: u64 = std::fs::read_to_string(&folded_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    let mut weights = 0.0;
    for p in v["profiles"].as_array().expect("profiles") {
        assert_eq!(p["type"], "sampled");
        for sample in p["samples"].as_array().expect("samples") {
            for i in sample.as_array().expect("frame ids") {
                assert!((i.as_u64().expect("id") as usize) < frames);
            }
        }
        weights += p["weights"]
            .as_array()
            .expect("weights")
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .sum::<f64>();
    }
    if has_folded {
        assert!(folded > 0);
    } else {
        assert_eq!(frames, 0, "no folded stacks, no frames");
        eprintln!("speedscope: no cpu_profile.folded in the session: an empty profile");
    }
    assert!(
        (weights - folded as f64 * period).abs() < 1e-6 * weights.max(1.0),
        "{weights} vs {folded} x {period}"
    );
}

/// Debian's Chromium, or None (a panic in CI, where `cargo xtask test` must have installed it).
pub fn chromium(test: &str) -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/chromium");
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{test}: /usr/bin/chromium is missing in CI: `cargo xtask test` installs it (apt-get install -y chromium)"
    );
    eprintln!("SKIPPED {test} (browser part): /usr/bin/chromium not installed; `cargo xtask test` installs it (apt-get install -y chromium)");
    None
}

/// Runs headless Chromium on `page` with `args`; (stdout, stderr).
fn headless(chromium: &Path, profile: &Path, page: &Path, args: &[&str]) -> (String, String) {
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .args([
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chromium failed: {stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

/// `data-plot="NAME" data-marks="N"` pairs, and `data-plot-absent` names, of a DOM dump.
pub fn plots(dom: &str) -> (HashMap<String, u64>, Vec<String>) {
    let mut marks = HashMap::new();
    for part in dom.split("data-plot=\"").skip(1) {
        let name = part.split('"').next().unwrap_or_default().to_owned();
        let n = part
            .split("data-marks=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        marks.insert(name, n);
    }
    let absent = dom
        .split("data-plot-absent=\"")
        .skip(1)
        .filter_map(|p| p.split('"').next())
        .map(str::to_owned)
        .collect();
    (marks, absent)
}

/// What a report page must show: the plots its session feeds, the plots allowed to be
/// drawn without data (each with why), markup-looking text that must appear escaped, and the
/// screenshot's file name under target/report-e2e/.
pub struct PageExpect<'a> {
    /// Plots that must have marks.
    pub fed: &'a [&'a str],
    /// Plots this session cannot feed, with the reason (the only ones allowed to be absent).
    pub allowed_absent: &'a [(&'a str, &'a str)],
    /// (markup that must not reach the page as elements, the escaped text that must).
    pub escaped: Option<(&'a [&'a str], &'a str)>,
    /// Screenshot file name.
    pub screenshot: &'a str,
}

/// Loads `page` in headless Chromium: no console or script error, every fed plot has marks,
/// no other plot is empty, a findings section; keeps a screenshot under target/report-e2e/.
/// Returns the DOM (None when Chromium is missing outside CI).
pub fn check_page_in_chromium(
    test: &str,
    dir: &Path,
    page: &Path,
    expect: &PageExpect,
) -> Option<String> {
    let chromium = chromium(test)?;
    let (dom, stderr) = headless(
        &chromium,
        &dir.join("chromium-profile-1"),
        page,
        &["--dump-dom"],
    );
    let console_errors: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            l.contains("CONSOLE") || l.contains("Uncaught") || l.contains("Content Security Policy")
        })
        .collect();
    assert!(
        console_errors.is_empty(),
        "console errors: {console_errors:#?}"
    );
    assert!(
        dom.contains("data-js=\"ok\""),
        "the page's script did not run to its end"
    );
    assert!(
        !dom.contains("data-js-errors=\"1\""),
        "a script error happened"
    );
    let (marks, absent) = plots(&dom);
    for name in expect.fed {
        let n = marks.get(*name).copied().unwrap_or(0);
        assert!(
            n > 0,
            "plot {name} has no marks (absent: {absent:?}; marks: {marks:?})"
        );
    }
    assert!(
        marks.keys().any(|k| k.starts_with("step_hist_")),
        "{marks:?}"
    );
    for (name, n) in &marks {
        assert!(*n > 0, "plot {name} is drawn without data");
    }
    for name in &absent {
        let why = expect
            .allowed_absent
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, why)| why);
        assert!(
            why.is_some(),
            "plot {name} without data (all absent: {absent:?})"
        );
        if let Some(why) = why {
            eprintln!("{test}: plot {name} has no data, as expected: {why}");
        }
    }
    assert!(dom.contains("data-finding=\""), "a findings section");
    // Hostile text (a request id) is text, never an element.
    if let Some((markup, escaped)) = expect.escaped {
        assert!(
            !markup.iter().any(|m| dom.contains(m)),
            "markup from a request id"
        );
        assert!(dom.contains(escaped), "request ids shown as text");
    }

    let shots = root().join("target/report-e2e");
    std::fs::create_dir_all(&shots).expect("target/report-e2e");
    let png = shots.join(expect.screenshot);
    let _ = std::fs::remove_file(&png);
    headless(
        &chromium,
        &dir.join("chromium-profile-2"),
        page,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1400,4000",
            "--hide-scrollbars",
        ],
    );
    let size = std::fs::metadata(&png).map_or(0, |m| m.len());
    assert!(
        size > 20_000,
        "screenshot {} is {size} bytes",
        png.display()
    );
    eprintln!("{test}: screenshot {}", png.display());
    Some(dom)
}
