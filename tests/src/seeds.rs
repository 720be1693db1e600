//! The analyses of seeds 001 and 003, run unchanged on a session directory: the shell
//! one-liners (they index columns by position, so each must give what the file says by
//! column name) and the Python/pandas snippets (tests/seeds/, pasted verbatim), each checked
//! against what the test computes from the CSV/JSON files by column name.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{col, root, Session};

/// A file whose layout a recording predates: the one-liners that read it are skipped, each
/// with a visible message naming `reason`. A check is skipped only when the file is really
/// absent or lacks the column the one-liner reads (a stale entry is a failure).
pub struct Predates<'a> {
    /// The session file (relative to the session directory).
    pub file: &'a str,
    /// Why the recording lacks it.
    pub reason: &'a str,
}

/// True when the check reading `column` of `file` must be skipped; prints why.
fn skipped(
    label: &str,
    session: &Session,
    predates: &[Predates],
    file: &str,
    column: &str,
    what: &str,
) -> bool {
    let Some(p) = predates.iter().find(|p| p.file == file) else {
        return false;
    };
    let path = session.dir.join(file);
    let has_column = std::fs::read_to_string(&path).is_ok_and(|t| {
        t.lines()
            .next()
            .is_some_and(|h| h.split(',').any(|c| c == column))
    });
    assert!(
        !has_column,
        "{label}: {file} is said to predate the seed's layout, yet it has the column {column}"
    );
    eprintln!(
        "SKIPPED {label}: seed one-liner {what} (reads {file}: {column}): {}",
        p.reason
    );
    true
}

/// Runs `cmd` with sh in `dir`; its trimmed stdout.
fn sh_in(label: &str, dir: &Path, cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .expect("sh");
    assert!(out.status.success(), "{label}: `{cmd}` failed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The seeds' shell analyses, unchanged, on the session's files: they index columns by
/// position, so each must give what the file says by column name. Checks reading a file in
/// `predates` are skipped visibly (empty for a session of today's build: all run).
pub fn check_seed_one_liners(label: &str, session: &Session, predates: &[Predates]) {
    let sh = |cmd: &str| sh_in(label, &session.dir, cmd);
    let kv = session.csv("kv_cache_usage.csv");
    let usage: Vec<f64> = kv.iter().map(|r| col(r, "usage_pct")).collect();
    assert!(!usage.is_empty(), "{label}: no KV rows");
    // Seed 003: "Average KV cache usage".
    let mean: f64 =
        sh("awk -F',' 'NR>1 {sum+=$2; count++} END {print sum/count}' kv_cache_usage.csv")
            .parse()
            .expect("a mean");
    let want = usage.iter().sum::<f64>() / usage.len() as f64;
    assert!(
        (mean - want).abs() < 1e-3 * want.max(1.0),
        "{label}: mean {mean} vs {want}"
    );
    eprintln!("{label}: seed 003 average KV cache usage: awk {mean} = by name {want}");
    // Seed 003: "Peak KV cache usage" (the usage column of the first line).
    let peak = sh("sort -t',' -k2 -rn kv_cache_usage.csv | head -1");
    let peak: f64 = peak
        .split(',')
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a peak");
    assert_eq!(
        peak,
        usage.iter().copied().fold(f64::MIN, f64::max),
        "{label}"
    );
    // Seed 003: "Most used graphs" (column 6 = replay_count) and "total graph replays".
    let graphs = session.csv("cuda_graph_usage.csv");
    let top = sh("sort -t',' -k6 -rn cuda_graph_usage.csv | head -1");
    let total = sh("awk -F',' 'NR>1 {sum+=$6} END {print sum}' cuda_graph_usage.csv");
    if graphs.is_empty() {
        // No graph replayed (an eager server): the user sees the header line and an
        // empty total.
        assert!(top.starts_with("runtime_mode,"), "{label}: `{top}`");
        assert_eq!(total, "", "{label}");
        eprintln!("{label}: seed 003 graph one-liners: no graphs (header line, empty total)");
    } else {
        let max = graphs
            .iter()
            .map(|g| col(g, "replay_count"))
            .fold(0.0, f64::max);
        assert_eq!(
            top.split(',').nth(5).and_then(|v| v.parse().ok()),
            Some(max),
            "{label}"
        );
        let total: f64 = total.parse().expect("a total");
        assert_eq!(
            total,
            graphs.iter().map(|g| col(g, "replay_count")).sum::<f64>()
        );
    }
    // Seed 003: "blocks evicted quickly" (column 2 = lifetime_sec).
    if !skipped(
        label,
        session,
        predates,
        "kv_cache_evictions.csv",
        "lifetime_sec",
        "\"blocks evicted quickly\"",
    ) {
        let evictions = session.csv("kv_cache_evictions.csv");
        let quick = sh(
            "awk -F',' 'NR>1 && $2<10 {count++} END {print count \" blocks evicted quickly\"}' kv_cache_evictions.csv",
        );
        let want = evictions
            .iter()
            .filter(|e| col(e, "lifetime_sec") < 10.0)
            .count();
        let got: usize = quick
            .strip_suffix("blocks evicted quickly")
            .map(str::trim)
            .map_or(usize::MAX, |n| {
                if n.is_empty() {
                    0
                } else {
                    n.parse().unwrap_or(usize::MAX)
                }
            });
        assert_eq!(got, want, "{label}: `{quick}`");
    }
    // Seed 003's MoE analyses, run in `moe_expert_tracking/` as written: the files exist with
    // the seed's headers (also beside the others) and, routing being unobservable here, no
    // rows.
    let moe: [(&str, &str, &str); 4] = [
        (
            "moe_expert_activations.csv",
            "layer_idx,expert_id,activation_count,percentage",
            "layer_idx",
        ),
        (
            "moe_expert_coselection.csv",
            "layer_idx,expert_id_1,expert_id_2,coselection_count",
            "layer_idx",
        ),
        (
            "moe_routing_weights_hist.csv",
            "weight,count,layer_idx",
            "weight",
        ),
        (
            "moe_load_imbalance.csv",
            "layer_idx,timestamp_sec,std_dev,max_min_ratio",
            "layer_idx",
        ),
    ];
    let mut moe_run = HashMap::new();
    for (name, header, column) in moe {
        for at in [".", "moe_expert_tracking"] {
            let file = format!("{at}/{name}");
            let file = file.trim_start_matches("./");
            let run = !skipped(label, session, predates, file, column, "MoE files' header");
            moe_run.insert(file.to_owned(), run);
            if run {
                let text = std::fs::read_to_string(session.dir.join(at).join(name))
                    .unwrap_or_else(|e| panic!("{label}: {at}/{name}: {e}"));
                assert_eq!(text, format!("{header}\n"), "{label}: {at}/{name}");
            }
        }
    }
    if moe_run["moe_expert_tracking/moe_expert_activations.csv"] {
        assert_eq!(
            sh("cd moe_expert_tracking/ && awk -F',' 'NR>1 {print $1}' moe_expert_activations.csv | sort -u | wc -l"),
            "0",
            "{label}"
        );
    } else {
        eprintln!("SKIPPED {label}: seed 003 `awk ... moe_expert_activations.csv | sort -u | wc -l` (see above)");
    }
    if moe_run["moe_expert_tracking/moe_expert_coselection.csv"] {
        assert_eq!(
            sh("cd moe_expert_tracking/ && head -20 moe_expert_coselection.csv"),
            "layer_idx,expert_id_1,expert_id_2,coselection_count",
            "{label}"
        );
    } else {
        eprintln!("SKIPPED {label}: seed 003 `head -20 moe_expert_coselection.csv` (see above)");
    }
    // Seed 003: "graphs by token count" (column 2 = num_tokens).
    let tokens = sh("cut -d',' -f2 cuda_graph_usage.csv | tail -n +2 | LC_ALL=C sort");
    let mut want: Vec<String> = graphs.iter().map(|g| g["num_tokens"].clone()).collect();
    want.sort();
    assert_eq!(tokens, want.join("\n").trim(), "{label}");
}

/// A Python with pandas and matplotlib (PROFILEMATE_PANDAS_PYTHON, else Debian's
/// /usr/bin/python3 with python3-pandas and python3-matplotlib, which `cargo xtask test`
/// installs), or None with a visible message; a failure in CI (CI=true).
#[must_use]
pub fn pandas_python(test: &str) -> Option<PathBuf> {
    let python = std::env::var_os("PROFILEMATE_PANDAS_PYTHON")
        .map_or_else(|| PathBuf::from("/usr/bin/python3"), PathBuf::from);
    let ok = Command::new(&python)
        .args(["-c", "import pandas, matplotlib"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{test}: {} lacks pandas or matplotlib in CI: `cargo xtask test` installs them (apt-get install -y python3-pandas python3-matplotlib)",
        python.display()
    );
    eprintln!(
        "SKIPPED {test} (seed pandas snippets): {} cannot import pandas and matplotlib; `cargo xtask test` installs them (apt-get install -y python3-pandas python3-matplotlib)",
        python.display()
    );
    None
}

/// What a snippet did: exit success, stdout, stderr.
struct Ran {
    ok: bool,
    out: String,
    err: String,
}

/// Runs tests/seeds/`script` unchanged in the session directory: `.py` with `python`, `.sh`
/// with sh and `python` first on PATH as `python` (the seeds' shell blocks call `python -c`);
/// matplotlib draws with Agg, into the session directory.
fn run_snippet(session: &Session, python: &Path, script: &str) -> Ran {
    let path = root().join("tests/seeds").join(script);
    assert!(path.exists(), "{}", path.display());
    let bin = session
        .dir
        .parent()
        .unwrap_or(&session.dir)
        .join("python-bin");
    std::fs::create_dir_all(&bin).expect("python-bin");
    let link = bin.join("python");
    if !link.exists() {
        std::os::unix::fs::symlink(python, &link).expect("python link");
    }
    let mut cmd = if script.ends_with(".py") {
        Command::new(python)
    } else {
        Command::new("sh")
    };
    let out = cmd
        .arg(&path)
        .current_dir(&session.dir)
        .env("MPLBACKEND", "Agg")
        .env("MPLCONFIGDIR", bin.join("mplconfig"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .expect("run snippet");
    Ran {
        ok: out.status.success(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The number printed after `prefix` on a line of `out` (up to `suffix`); "nan" is NaN.
fn printed(out: &str, prefix: &str, suffix: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{out}"));
    let v = line[prefix.len()..].trim_end_matches(suffix).trim();
    v.parse()
        .unwrap_or_else(|_| panic!("`{line}`: not a number"))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// `got` (printed with `decimals`) equals `want` rounded so; NaN when `want` is.
fn assert_printed(label: &str, what: &str, got: f64, want: f64, decimals: i32) {
    if want.is_nan() {
        assert!(
            got.is_nan(),
            "{label}: {what}: printed {got}, no rows to average"
        );
    } else {
        let half = 0.5 * 10f64.powi(-decimals) + 1e-9 * want.abs();
        assert!(
            (got - want).abs() <= half,
            "{label}: {what}: printed {got}, by column name {want}"
        );
    }
    eprintln!("{label}: {what}: printed {got}, by column name {want}");
}

/// The Python snippets of seeds 001 and 003, run unchanged in the session directory
/// (tests/seeds/ names each one's seed and lines), each printed answer checked against the
/// files read by column name here. Where a snippet divides by nothing or reads an absent
/// file, the test asserts what a user sees (a `nan`, a traceback) and says so.
pub fn check_seed_pandas_snippets(label: &str, session: &Session, python: &Path) {
    let steps = session.csv("forward_pass_timing.csv");
    let times = |phase: Option<&str>| -> Vec<f64> {
        steps
            .iter()
            .filter(|r| phase.is_none_or(|p| r["phase"] == p))
            .filter(|r| !r["forward_time_ms"].is_empty())
            .map(|r| col(r, "forward_time_ms"))
            .collect()
    };

    // Seed 001, "Analysis".
    let r = run_snippet(session, python, "seed001_analysis_l177.py");
    eprintln!("{label}: seed 001 analysis printed:\n{}", r.out.trim_end());
    for phase in ["prefill", "decode"] {
        let want = times(Some(phase));
        let got = printed(
            &r.out,
            &format!("{}{} mean: ", phase[..1].to_uppercase(), &phase[1..]),
            "ms",
        );
        if want.is_empty() {
            eprintln!("{label}: no {phase} rows: the seed prints `nan` (pandas' mean of nothing)");
        }
        assert_printed(
            label,
            &format!("{phase} mean forward_time_ms"),
            got,
            mean(&want),
            2,
        );
    }
    let util: Vec<f64> = session
        .csv("batch_utilization.csv")
        .iter()
        .filter(|r| !r["token_utilization_pct"].is_empty())
        .map(|r| col(r, "token_utilization_pct"))
        .collect();
    assert!(!util.is_empty(), "{label}: no token utilization");
    let got = printed(&r.out, "Token utilization: ", "%");
    // The summary is rounded to 0.01 before the seed rounds it to 0.1.
    let want = mean(&util);
    assert!(
        (got - want).abs() <= 0.05 + 0.005 + 1e-9,
        "{label}: token utilization printed {got}, by column name {want}"
    );
    eprintln!("{label}: token utilization: printed {got}, by column name {want}");
    let requests = session.csv("request_lifecycle.csv").len();
    let preemptions = session.csv("preemption_events.csv").len();
    let summary = session.json("preemption_summary.json");
    assert_eq!(
        summary["total_requests"].as_u64(),
        Some(requests as u64),
        "{label}"
    );
    if requests == 0 {
        assert!(
            !r.ok && r.err.contains("ZeroDivisionError"),
            "{label}: no requests: the seed's rate divides by zero: {}",
            r.err
        );
        eprintln!("{label}: no requests: the seed's preemption rate raises ZeroDivisionError");
    } else {
        assert!(r.ok, "{label}: {}", r.err);
        let got = printed(&r.out, "Preemption rate: ", "%");
        assert_printed(
            label,
            "preemption rate (preemption rows per 100 request rows)",
            got,
            preemptions as f64 * 100.0 / requests as f64,
            1,
        );
    }

    // Seed 001, "Test 3: CUDA timing accuracy".
    let r = run_snippet(session, python, "seed001_cuda_timing_l301.py");
    let all = mean(&times(None));
    if all > 1.0 {
        assert!(r.ok, "{label}: {}", r.err);
        let got = printed(&r.out, "Mean forward time: ", "ms");
        assert_printed(label, "mean forward_time_ms (all steps)", got, all, 2);
    } else {
        assert!(r.err.contains("Timing too low"), "{label}: {}", r.err);
        eprintln!("{label}: mean forward time {all} ms: the seed's assertion fails, as written");
    }

    // Seed 001, quick start "4. Analyze": pandas has no `glob` argument, so a user gets a
    // TypeError whatever the session (and the path is the seed's /tmp/vllm_profiling).
    let r = run_snippet(session, python, "seed001_quickstart_analyze_l489.sh");
    assert!(
        r.err
            .contains("read_csv() got an unexpected keyword argument 'glob'"),
        "{label}: {}",
        r.err
    );
    eprintln!("{label}: seed 001 quick start `read_csv(..., glob=True)`: TypeError (pandas has no glob argument), as a user would see");

    // Seed 003, "Python Analysis": top graphs, the KV plot, then the MoE activations.
    let graphs = session.csv("cuda_graph_usage.csv");
    let r = run_snippet(session, python, "seed003_analysis_l305.py");
    eprintln!("{label}: seed 003 analysis printed:\n{}", r.out.trim_end());
    if graphs.is_empty() {
        // An empty CSV has untyped columns: the seed's first line raises, before any plot.
        assert!(
            !r.ok
                && r.err.contains(
                    "Column 'replay_count' has dtype object, cannot use method 'nlargest'"
                ),
            "{label}: {}",
            r.err
        );
        eprintln!("{label}: cuda_graph_usage.csv has no rows (no graph replayed): the seed's `nlargest` raises TypeError, nothing after it runs");
    } else {
        let mut by_count: Vec<(f64, String)> = graphs
            .iter()
            .map(|g| (col(g, "replay_count"), g["num_tokens"].clone()))
            .collect();
        by_count.sort_by(|a, b| b.0.total_cmp(&a.0));
        by_count.truncate(10);
        let lines: Vec<&str> = r
            .out
            .lines()
            .skip_while(|l| !l.starts_with("Top 10 CUDA Graphs:"))
            .skip(2)
            .take(by_count.len())
            .collect();
        let shown: Vec<(f64, String)> = lines
            .iter()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (
                    f.last().and_then(|v| v.parse().ok()).unwrap_or(-1.0),
                    f.get(1).map(|s| (*s).to_owned()).unwrap_or_default(),
                )
            })
            .collect();
        let counts = |v: &[(f64, String)]| v.iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(
            counts(&shown),
            counts(&by_count),
            "{label}: top graphs\n{}",
            r.out
        );
        // pandas shows an empty num_tokens (a graph without a descriptor) as NaN.
        let tokens_of = |v: &str| v.parse::<f64>().ok().filter(|t| !t.is_nan());
        for (n, tokens) in &shown {
            assert!(
                graphs.iter().any(|g| col(g, "replay_count") == *n
                    && tokens_of(&g["num_tokens"]) == tokens_of(tokens)),
                "{label}: ({tokens}, {n}) is no graph's"
            );
        }
        eprintln!(
            "{label}: top graphs (replay_count) by column name: {:?}",
            counts(&by_count)
        );
        let png = session.dir.join("kv_cache_usage.png");
        assert!(png.exists(), "{label}: the KV plot");
        let moe = session
            .dir
            .join("moe_expert_tracking/moe_expert_activations.csv");
        if moe.exists() {
            let rows = session.csv("moe_expert_tracking/moe_expert_activations.csv");
            assert!(
                rows.is_empty(),
                "{label}: MoE rows this test does not check"
            );
            assert!(r.ok, "{label}: {}", r.err);
            assert!(
                !r.out.contains("\nLayer "),
                "{label}: no layer without rows"
            );
            assert!(session.dir.join("expert_activations.png").exists());
            eprintln!(
                "{label}: MoE activations have no rows: no layer printed, an empty bar plot saved"
            );
        } else {
            assert!(
                !r.ok && r.err.contains("FileNotFoundError"),
                "{label}: {}",
                r.err
            );
            eprintln!("{label}: no moe_expert_tracking/ (the recording predates it): the seed's MoE part raises FileNotFoundError");
        }
    }

    // Seed 003, "Expert utilization" and "Expert specialization" (shell blocks run in
    // moe_expert_tracking/).
    let moe_dir = session.dir.join("moe_expert_tracking");
    let balance = run_snippet(session, python, "seed003_expert_balance_l493.sh");
    let special = run_snippet(session, python, "seed003_expert_specialization_l515.sh");
    if moe_dir.is_dir() {
        assert!(
            session
                .csv("moe_expert_tracking/moe_expert_activations.csv")
                .is_empty()
                && session
                    .csv("moe_expert_tracking/moe_routing_weights_hist.csv")
                    .is_empty(),
            "{label}: MoE rows this test does not check"
        );
        assert!(balance.ok, "{label}: {}", balance.err);
        assert_eq!(balance.out.trim(), "0", "{label}: no layer");
        assert!(special.ok, "{label}: {}", special.err);
        for stat in ["Mean", "Std", "Min", "Max"] {
            assert!(
                special.out.contains(&format!("  {stat}: nan")),
                "{label}: {stat} of no weights is nan: {}",
                special.out
            );
        }
        eprintln!("{label}: seed 003 MoE blocks: no routing rows: 0 layers, no ratio, routing weight statistics `nan`");
    } else {
        for r in [&balance, &special] {
            assert!(
                r.err.contains("moe_expert_tracking") && r.err.contains("FileNotFoundError"),
                "{label}: {}",
                r.err
            );
        }
        eprintln!("{label}: no moe_expert_tracking/ (the recording predates it): the seed's MoE blocks fail at `cd` and pandas raises FileNotFoundError");
    }

    // Seed 003, "Export to Prometheus format": one line per KV reading.
    let r = run_snippet(session, python, "seed003_prometheus_l567.py");
    assert!(r.ok, "{label}: {}", r.err);
    let kv = session.csv("kv_cache_usage.csv");
    let lines: Vec<&str> = r.out.lines().collect();
    assert_eq!(lines.len(), kv.len(), "{label}: a line per KV row");
    for (line, row) in lines.iter().zip(&kv) {
        let (ts, usage) = line
            .strip_prefix("vllm_kv_cache_usage{timestamp=\"")
            .and_then(|r| r.split_once("\"} "))
            .unwrap_or_else(|| panic!("{label}: `{line}`"));
        for (v, k) in [(ts, "timestamp_sec"), (usage, "usage_pct")] {
            let v: f64 = v.parse().unwrap_or(f64::NAN);
            assert!(
                (v - col(row, k)).abs() <= 1e-9 * v.abs().max(1.0),
                "{label}: `{line}` vs {k} {}",
                row[k]
            );
        }
    }
    eprintln!(
        "{label}: seed 003 Prometheus export: {} lines = {} KV rows, values equal",
        lines.len(),
        kv.len()
    );
}
