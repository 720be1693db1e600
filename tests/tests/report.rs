//! End-to-end: `profilemate attach` on the vLLM-shaped Python fixture writes report.html,
//! trace.json and cpu_profile.speedscope.json at the end; `profilemate report` writes them
//! again from the session directory; the page loads in real headless Chromium without a
//! script error, every plot the fixture feeds has data, and a screenshot is kept under
//! target/report-e2e/. Needs root (eBPF); skips with a message otherwise. Chromium
//! (Debian's `chromium`, installed by `cargo xtask test`) is required when CI=true; elsewhere
//! its absence skips the browser half with a message.

use std::{path::Path, process::Command, time::Duration};

use profilemate_tests::{
    can_attach, profilemate_bin, pythons,
    report_page::{check_page_in_chromium, check_speedscope, check_trace, PageExpect},
    scratch, serial, Session, Target, Tracer,
};

/// A request id prefix that is markup: it must reach the page as text.
const HOSTILE_PREFIX: &str = "<b class=pm>x</b>-";

/// Plots the fixture feeds (async depth 1: the GPU idles between steps; preemptions, GC
/// pauses, FULL graphs with descriptors and padding, sampled stacks).
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
    "graph_replays",
    "graph_padding",
    "gc",
    "flame",
];

fn run_fixture(dir: &Path, python: &Path) -> Session {
    let args = [
        "--steps",
        "300",
        "--wait-after-load-ms",
        "60000",
        "--start-on-sigusr1",
        "--async-depth",
        "1",
        "--request-id-prefix",
        HOSTILE_PREFIX,
    ];
    let mut target = Target::vllm(dir, python, &args);
    target.proc.wait_line("ready");
    let mut tracer = Tracer::attach(target.proc.pid(), dir, &["--sample-hz", "997"]);
    tracer.wait_attached();
    target.proc.signal(libc::SIGUSR1);
    assert_eq!(
        target.proc.wait_exit(Duration::from_secs(120)),
        0,
        "fixture failed"
    );
    let session = tracer.finish(Duration::from_secs(60));
    assert!(
        tracer
            .stderr_lines
            .iter()
            .any(|l| l.starts_with("report: ")),
        "attach says where the report is: {:#?}",
        tracer.stderr_lines
    );
    session
}

#[test]
fn report_page_trace_and_speedscope_from_a_fixture_session() {
    let _g = serial();
    let test = "report_page_trace_and_speedscope_from_a_fixture_session";
    if !can_attach(test) {
        return;
    }
    let Some((_, python)) = pythons().into_iter().next() else {
        eprintln!("SKIPPED {test}: no CPython 3.11-3.13 found");
        return;
    };
    let dir = scratch("report");
    let session = run_fixture(&dir, &python);
    for f in ["report.html", "trace.json", "cpu_profile.speedscope.json"] {
        assert!(session.dir.join(f).exists(), "attach wrote {f}");
    }
    let out = dir.join("out");
    std::fs::create_dir_all(&out).expect("out dir");
    let page = out.join("report.html");
    let status = Command::new(profilemate_bin())
        .arg("report")
        .arg(&session.dir)
        .arg("--out")
        .arg(&page)
        .output()
        .expect("profilemate report");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(String::from_utf8_lossy(&status.stdout).starts_with("report: "));
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
    assert!(
        !html.contains("<b class=pm>"),
        "markup from a request id reached the page"
    );
    check_trace(&session, &out.join("trace.json"));
    check_speedscope(&session, &out.join("cpu_profile.speedscope.json"));
    check_page_in_chromium(
        test,
        &dir,
        &page,
        &PageExpect {
            fed: FED_PLOTS,
            allowed_absent: &[],
            escaped: Some((
                &["<b class=\"pm\">", "<b class=pm>"],
                "&lt;b class=pm&gt;x&lt;/b&gt;-",
            )),
            screenshot: "report.png",
        },
    );
}

/// `--no-report`: the session has its files and no report.
#[test]
fn no_report_leaves_the_session_without_a_report() {
    let _g = serial();
    let test = "no_report_leaves_the_session_without_a_report";
    if !can_attach(test) {
        return;
    }
    let dir = scratch("no-report");
    let mut target = Target::rust(&dir, &["--wait-after-load-ms", "1500", "--steps", "20"]);
    target.proc.wait_line("ready");
    let mut tracer = Tracer::attach(target.proc.pid(), &dir, &["--no-report"]);
    tracer.wait_attached();
    assert_eq!(
        target.proc.wait_exit(Duration::from_secs(60)),
        0,
        "fixture failed"
    );
    let session = tracer.finish(Duration::from_secs(30));
    assert!(session.dir.join("forward_pass_timing.csv").exists());
    assert!(!session.dir.join("report.html").exists());
    assert!(!session.dir.join("trace.json").exists());
}
