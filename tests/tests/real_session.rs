//! A session recorded on a real vLLM 0.26.0 server (tests/data/README.md says how), checked
//! as a user would use it: the analyses of seeds 001 and 003 run unchanged in it (the shell
//! one-liners, and the pandas snippets of tests/seeds/) and give what its files say by
//! column name; `profilemate report` on it writes a page that loads in headless Chromium
//! without an error, with every plot the recording can feed drawn, a trace.json whose spans
//! are the CSV rows, and a speedscope file. Needs neither root nor a GPU. Chromium and
//! pandas (Debian's, installed by `cargo xtask test`) are required when CI=true; elsewhere
//! their absence skips that part with a message.

use std::{path::PathBuf, process::Command};

use profilemate_tests::{
    profilemate_bin,
    report_page::{check_page_in_chromium, check_speedscope, check_trace, PageExpect},
    root, scratch,
    seeds::{check_seed_one_liners, check_seed_pandas_snippets, pandas_python, Predates},
    Session,
};

const ARCHIVE: &str = "tests/data/real-vllm-0.26-eager-prefix-caching.tar.xz";
const SESSION: &str = "session_20261207_230039";

/// Files whose layout the recording predates (the build that recorded it wrote
/// kv_cache_evictions.csv per interval, and no MoE csv files).
const PREDATES: &[Predates] = &[
    Predates {
        file: "kv_cache_evictions.csv",
        reason: "recorded before the per-block eviction rows (its columns are per interval: timestamp_sec,pid,interval_sec,cached_blocks,evicted_blocks_min,prefix_cache_reset)",
    },
    Predates {
        file: "moe_expert_activations.csv",
        reason: "recorded before the MoE csv files existed",
    },
    Predates {
        file: "moe_expert_coselection.csv",
        reason: "recorded before the MoE csv files existed",
    },
    Predates {
        file: "moe_routing_weights_hist.csv",
        reason: "recorded before the MoE csv files existed",
    },
    Predates {
        file: "moe_load_imbalance.csv",
        reason: "recorded before the MoE csv files existed",
    },
    Predates {
        file: "moe_expert_tracking/moe_expert_activations.csv",
        reason: "recorded before the MoE csv files existed",
    },
    Predates {
        file: "moe_expert_tracking/moe_expert_coselection.csv",
        reason: "recorded before the MoE csv files existed",
    },
    Predates {
        file: "moe_expert_tracking/moe_routing_weights_hist.csv",
        reason: "recorded before the MoE csv files existed",
    },
    Predates {
        file: "moe_expert_tracking/moe_load_imbalance.csv",
        reason: "recorded before the MoE csv files existed",
    },
];

/// Plots the recording feeds.
const FED_PLOTS: &[&str] = &[
    "step_time",
    "batch_tokens",
    "batch_seqs",
    "queues",
    "kv",
    "cpu_per_step",
    "cpu_totals",
    "idle_gaps",
    "idle_filled",
    "gc",
];

/// Plots it cannot feed, and why (checked against its files below).
const ABSENT: &[(&str, &str)] = &[
    (
        "flame",
        "the recording script dropped cpu_profile.folded, so the flame graph has no stacks",
    ),
    (
        "graph_replays",
        "the server ran with --enforce-eager: no CUDA graph was captured or replayed",
    ),
    (
        "graph_padding",
        "the server ran with --enforce-eager: no CUDA graph, so no padding",
    ),
];

/// Extracts the recording into a fresh scratch directory; the session directory.
fn extract(test: &str) -> PathBuf {
    let dir = scratch(test);
    let out = Command::new("tar")
        .arg("-xJf")
        .arg(root().join(ARCHIVE))
        .arg("-C")
        .arg(&dir)
        .output()
        .expect("tar");
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let session = dir.join(SESSION);
    assert!(
        session.join("metadata.json").exists(),
        "{}",
        session.display()
    );
    session
}

#[test]
fn real_session_seed_analyses_and_report_page() {
    let test = "real_session_seed_analyses_and_report_page";
    let session = Session {
        dir: extract("real-session"),
    };
    // What the README says the recording is, so the checks below mean what they say.
    assert!(!session.dir.join("cpu_profile.folded").exists());
    assert!(session.csv("cuda_graph_usage.csv").is_empty(), "eager");
    assert!(session.csv("cuda_graph_timeline.csv").is_empty(), "eager");
    assert_eq!(session.csv("forward_pass_timing.csv").len(), 2991);
    assert_eq!(session.csv("preemption_events.csv").len(), 56);

    check_seed_one_liners(test, &session, PREDATES);
    if let Some(python) = pandas_python(test) {
        check_seed_pandas_snippets(test, &session, &python);
    }

    // The report, from the session directory, by the built binary.
    let out = Command::new(profilemate_bin())
        .arg("report")
        .arg(&session.dir)
        .output()
        .expect("profilemate report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("report: "));
    let page = session.dir.join("report.html");
    let size = std::fs::metadata(&page).map_or(0, |m| m.len());
    assert!(
        size > 10_000 && size < 4 << 20,
        "report.html is {size} bytes"
    );
    let html = std::fs::read_to_string(&page).expect("page");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no remote resource"
    );
    check_trace(&session, &session.dir.join("trace.json"));
    check_speedscope(&session, &session.dir.join("cpu_profile.speedscope.json"));
    let Some(dom) = check_page_in_chromium(
        test,
        session.dir.parent().unwrap_or(&session.dir),
        &page,
        &PageExpect {
            fed: FED_PLOTS,
            allowed_absent: ABSENT,
            escaped: None,
            screenshot: "real-vllm-session.png",
        },
    ) else {
        return;
    };
    // The findings, as text, for whoever reads the test's output.
    let start = dom
        .find("<section id=\"findings\"")
        .expect("findings section");
    let end = dom[start..]
        .find("</section>")
        .map_or(dom.len(), |e| start + e);
    let mut text = String::new();
    let mut in_tag = false;
    for c in dom[start..end].chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("{test}: findings: {text}");
    for finding in ["kv_pressure", "cpu_bound"] {
        assert!(
            dom.contains(&format!("data-finding=\"{finding}\"")),
            "finding {finding}: {text}"
        );
    }
}
