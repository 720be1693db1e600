//! The report page: one HTML file with its CSS, its SVG plots and a small script inline (no
//! network: a Content-Security-Policy forbids every fetch), readable from a file:// URL.
//!
//! Owns: the page's sections (session, findings, losses, one per plot family, the flame
//! graph), what each plot draws from the [`Model`], and why a plot is absent when its data
//! is. Does not own: drawing (`svg`, `flame`) or the rules (`findings`).
//!
//! Every string from the session goes through [`esc`]; the script reads data only from
//! attributes and writes only `textContent` and attributes.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write,
};

use super::{
    findings::{self, Facts, Finding, LOSS_KEYS, UNATTRIBUTED_KEYS},
    flame,
    svg::{downsample, hbars, num, Chart, PALETTE},
    Completion, Method, Model,
};

/// Time buckets of a downsampled series.
const BUCKETS: usize = 800;
/// Columns of the stacked CPU chart.
const CPU_COLUMNS: usize = 120;
/// Operations shown by name in the CPU chart (the rest are "other").
const CPU_OPS: usize = 10;

/// HTML-escapes `s` for text and attribute values.
#[must_use]
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

type Plot = Result<String, String>;

/// The whole page for `m`.
#[must_use]
pub fn page(m: &Model) -> String {
    let facts = Facts::of(m);
    let found = findings::findings(&facts);
    let mut b = String::new();
    header(&mut b, m);
    findings_section(&mut b, &found);
    losses_section(&mut b, m);
    let duration = m.duration();
    section(
        &mut b,
        "steps",
        "Step GPU time",
        "Each step's GPU time (forward_time_ms) at its start. Filled dots: exact completions \
         (a wait blocked until the GPU finished). Faded squares: upper bounds (the GPU was seen \
         finished only later), with the band down to their lower bound. Long sessions are \
         reduced to the smallest and largest value per time bucket.",
        &[("step_time", step_time(m, duration))],
    );
    let hist = step_histograms(m);
    let hist: Vec<(&str, Plot)> = hist.iter().map(|(n, p)| (n.as_str(), p.clone())).collect();
    section(
        &mut b,
        "phases",
        "Step GPU time by phase",
        "Histogram of forward_time_ms per phase: solid bars are exact completions, hatched bars \
         upper bounds. The last bin holds everything above it.",
        &hist,
    );
    section(
        &mut b,
        "batches",
        "Batch tokens and sequences against the limits",
        "Scheduled tokens and sequences per step (mean line, min-max band per time bucket) \
         with max_num_scheduled_tokens and max_num_seqs.",
        &[
            ("batch_tokens", batch_plot(m, duration, true)),
            ("batch_seqs", batch_plot(m, duration, false)),
        ],
    );
    scheduler_and_cpu_sections(&mut b, m, duration);
    files_section(&mut b);
    let title = m
        .dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\"><meta name=\"viewport\" content=\"width=device-width\"><title>ProfileMate report: {}</title><style>{CSS}</style></head><body>{b}<script>{JS}</script></body></html>\n",
        esc(&title)
    )
}

/// The scheduler, KV cache, CPU, gap, graph, GC and flame graph sections.
fn scheduler_and_cpu_sections(b: &mut String, m: &Model, duration: f64) {
    section(
        b,
        "queues",
        "Scheduler queues",
        "Running and waiting requests, read from the scheduler's live objects.",
        &[("queues", queues(m, duration))],
    );
    section(
        b,
        "kv",
        "KV cache usage and preemptions",
        "KV cache usage (vLLM's definition), the 90 % line, and every preemption as a red mark \
         (hover for the request and reason).",
        &[("kv", kv(m, duration))],
    );
    section(
        b,
        "cpu",
        "CPU time per vLLM operation per step",
        "Sampled CPU time of every target thread per step, by vLLM operation (GC pauses exact), \
         averaged over the steps of each column; below, the totals.",
        &[
            ("cpu_per_step", cpu_per_step(m, duration)),
            ("cpu_totals", cpu_totals(m)),
        ],
    );
    section(
        b,
        "gaps",
        "GPU-idle gaps and what filled them",
        "GPU idle time before each step (its GPU start minus the previous step's completion), \
         and the sampled Python work that ran during those gaps.",
        &[
            ("idle_gaps", idle_gaps(m, duration)),
            ("idle_filled", idle_filled(m)),
        ],
    );
    section(
        b,
        "graphs",
        "CUDA graph usage by descriptor",
        "Replays per captured graph (vLLM's BatchExecutionDescriptor when it was read), and the \
         share of padded tokens in the steps that replayed it.",
        &[
            ("graph_replays", graph_replays(m)),
            ("graph_padding", graph_padding(m)),
        ],
    );
    section(
        b,
        "gc",
        "Python GC pauses",
        "Every garbage collection (exact, from CPython's USDT probes), by generation.",
        &[("gc", gc(m, duration))],
    );
    section(
        b,
        "flame",
        "Flame graph (sampled Python stacks)",
        "cpu_profile.folded, merged: process, thread, then the stack outermost first. Click a \
         frame to zoom in, click the top row to zoom out; hover for the full name and samples.",
        &[(
            "flame",
            flame::svg(&m.folded).ok_or_else(|| why_no_samples(m)),
        )],
    );
}

fn section(b: &mut String, id: &str, title: &str, intro: &str, plots: &[(&str, Plot)]) {
    let _ = write!(
        b,
        "<section id=\"{id}\"><h2>{}</h2><p class=\"intro\">{}</p>",
        esc(title),
        esc(intro)
    );
    for (name, plot) in plots {
        match plot {
            Ok(svg) => b.push_str(svg),
            Err(why) => {
                let _ = write!(
                    b,
                    "<div class=\"absent\" data-plot-absent=\"{}\">No data: {}</div>",
                    esc(name),
                    esc(why)
                );
            }
        }
    }
    b.push_str("</section>");
}

fn header(b: &mut String, m: &Model) {
    let md = &m.meta;
    let s = |k: &str| md[k].as_str().unwrap_or("?").to_owned();
    let title = m
        .dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let _ = write!(
        b,
        "<header><h1>ProfileMate report <span>{}</span></h1><table class=\"facts\">",
        esc(&title)
    );
    let mut row = |k: &str, v: String| {
        let _ = write!(b, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    };
    row("started", s("start_time"));
    row(
        "duration",
        md["duration_sec"]
            .as_f64()
            .map_or_else(|| "?".to_owned(), |d| format!("{d:.1} s")),
    );
    row("stopped", s("stop_reason"));
    row(
        "tracer",
        format!(
            "{} {} on {} (kernel {})",
            s("tracer"),
            s("tracer_version"),
            s("hostname"),
            s("kernel")
        ),
    );
    row("timing", s("timing_mode"));
    for t in md["targets"].as_array().into_iter().flatten() {
        row(
            &format!("pid {}", t["pid"]),
            format!(
                "{}: {}",
                t["comm"].as_str().unwrap_or("?"),
                super::svg::truncate(t["cmdline"].as_str().unwrap_or(""), 200)
            ),
        );
    }
    let f = &m.forward_summary;
    let exact = m
        .steps
        .iter()
        .filter(|s| s.completion == Completion::Exact)
        .count();
    row(
        "steps",
        format!(
            "{} ({exact} exact completions, {} upper bounds or bracketed); forward_time_ms P50 {} / P95 {} / P99 {}",
            m.steps.len(),
            m.steps.len() - exact,
            f["forward_time_ms"]["p50_ms"],
            f["forward_time_ms"]["p95_ms"],
            f["forward_time_ms"]["p99_ms"]
        ),
    );
    if let Some(failure) = md["failure"].as_str() {
        row("failure", failure.to_owned());
    }
    b.push_str("</table></header>");
}

fn findings_section(b: &mut String, found: &[Finding]) {
    b.push_str("<section id=\"findings\"><h2>Findings: what limits this server</h2>");
    if found.is_empty() {
        b.push_str("<p class=\"ok\" data-finding=\"none\">Nothing stands out: no rule fired (KV cache below 90 % most of the time, the GPU not waiting on the CPU in most steps, decode batches inside the captured graph sizes, GC pauses short, nothing lost).</p>");
    }
    for f in found {
        let _ = write!(
            b,
            "<div class=\"finding {}\" data-finding=\"{}\"><h3><span class=\"sev\">{}</span> {}</h3><ul>",
            f.severity.label(),
            f.id,
            f.severity.label(),
            esc(&f.title)
        );
        for e in &f.evidence {
            let _ = write!(b, "<li>{}</li>", esc(e));
        }
        let _ = write!(
            b,
            "</ul><p class=\"action\"><b>What to change:</b> {}</p></div>",
            esc(&f.action)
        );
    }
    b.push_str("</section>");
}

fn losses_section(b: &mut String, m: &Model) {
    b.push_str("<section id=\"losses\"><h2>Losses and unattributed events</h2>");
    if m.meta.is_null() {
        let why = m.why_unreadable("metadata.json").unwrap_or("absent");
        let _ = write!(
            b,
            "<p class=\"bad\">metadata.json could not be read ({}): losses unknown.</p></section>",
            esc(why)
        );
        return;
    }
    // Nonzero counters first and in plain sight; the zeros listed below them, folded.
    let table = |b: &mut String, title: &str, keys: &[(&str, &str)]| {
        let _ = write!(b, "<h3>{}</h3>", esc(title));
        let row = |b: &mut String, k: &str, what: &str, n: u64| {
            let class = if n > 0 { "bad" } else { "zero" };
            let _ = write!(b, "<tr class=\"{class}\"><td class=\"n\">{n}</td><td>{}</td><td><code>losses.{}</code></td></tr>", esc(what), esc(k));
        };
        let values: Vec<(&str, &str, u64)> = keys
            .iter()
            .map(|(k, w)| (*k, *w, findings::loss_value(&m.meta, k).unwrap_or(0)))
            .collect();
        b.push_str("<table class=\"losses\">");
        for (k, what, n) in values.iter().filter(|v| v.2 > 0) {
            row(b, k, what, *n);
        }
        let zeros = values.iter().filter(|v| v.2 == 0).count();
        let _ = write!(b, "</table><details><summary>{zeros} of {} counters at 0</summary><table class=\"losses\">", values.len());
        for (k, what, n) in values.iter().filter(|v| v.2 == 0) {
            row(b, k, what, *n);
        }
        b.push_str("</table></details>");
    };
    let lost: u64 = LOSS_KEYS
        .iter()
        .filter_map(|(k, _)| findings::loss_value(&m.meta, k))
        .sum();
    let gc_lost = m.gc_summary["events_lost"].as_u64().unwrap_or(0);
    let _ = write!(
        b,
        "<p class=\"{}\" data-lost=\"{}\">{} events lost in all{}.</p>",
        if lost + gc_lost > 0 { "bad" } else { "ok" },
        lost + gc_lost,
        lost + gc_lost,
        if gc_lost > 0 {
            format!(" ({gc_lost} GC events, gc_summary.json events_lost)")
        } else {
            String::new()
        }
    );
    table(b, "Lost (should be 0)", LOSS_KEYS);
    table(b, "Counted but not attributed", UNATTRIBUTED_KEYS);
    if !m.bad_rows.is_empty() || !m.unreadable.is_empty() {
        b.push_str("<h3>Files this report could not use</h3><ul>");
        for (f, why) in &m.unreadable {
            let _ = write!(b, "<li><code>{}</code>: {}</li>", esc(f), esc(why));
        }
        for (f, n) in &m.bad_rows {
            let _ = write!(
                b,
                "<li><code>{}</code>: {n} rows with an unreadable cell were skipped</li>",
                esc(f)
            );
        }
        b.push_str("</ul>");
    }
    b.push_str("</section>");
}

fn files_section(b: &mut String) {
    b.push_str(
        "<section id=\"files\"><h2>Timeline and profile files</h2><p>Beside this report: \
         <a href=\"trace.json\">trace.json</a> (Chrome trace events: open it in Perfetto or \
         chrome://tracing; GPU steps, launches, graph replays, GC pauses, preemptions and \
         requests on one clock) and <a href=\"cpu_profile.speedscope.json\">cpu_profile.speedscope.json</a> \
         (the sampled stacks, for speedscope). Every number here comes from the session's CSV and \
         JSON files (docs/OUTPUTS.md).</p></section>",
    );
}

// ---- why a plot is absent ----

fn why_no_steps(m: &Model) -> String {
    if let Some(why) = m.why_unreadable("forward_pass_timing.csv") {
        return format!("forward_pass_timing.csv: {why}");
    }
    let incomplete = findings::loss_value(&m.meta, "correlator.incomplete_steps").unwrap_or(0);
    format!(
        "no step completed while attached (metadata.json losses.correlator.incomplete_steps = \
         {incomplete}; probes attached: {})",
        m.meta["probes"]["attached_count"]
    )
}

fn why_no_batches(m: &Model) -> String {
    if let Some(why) = m.why_unreadable("batch_utilization.csv") {
        return format!("batch_utilization.csv: {why}");
    }
    let b = &m.meta["python"]["vllm_batches"];
    format!(
        "no step batch (SchedulerOutput) was read: see metadata.json python.vllm_batches (last \
         error: {})",
        b["last_error"].as_str().unwrap_or("none")
    )
}

fn why_no_state(m: &Model, file: &str) -> String {
    if let Some(why) = m.why_unreadable(file) {
        return format!("{file}: {why}");
    }
    let errors: Vec<String> = m.meta["python"]["vllm_state"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some(format!("pid {}: {}", p["pid"], p["last_error"].as_str()?)))
        .collect();
    if errors.is_empty() {
        "no scheduler state read: see metadata.json python.vllm_state (polling off with \
         --state-hz 0, or no vLLM scheduler found)"
            .to_owned()
    } else {
        format!(
            "no scheduler state read: see metadata.json python.vllm_state ({})",
            errors.join("; ")
        )
    }
}

fn why_no_samples(m: &Model) -> String {
    let py = &m.meta["python"];
    if let Some(e) = py["sampling_error"].as_str() {
        return format!("Python sampling was off: {e} (metadata.json python.sampling_error)");
    }
    if py["sample_hz"].as_u64() == Some(0) {
        return "Python sampling was off (--sample-hz 0)".to_owned();
    }
    "no Python stack was sampled: see metadata.json python.processes (status of each \
     interpreter)"
        .to_owned()
}

fn why_no_gc(m: &Model) -> String {
    let usdt: Vec<String> = m.meta["python"]["usdt"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["status"] != "attached")
        .filter_map(|u| {
            Some(format!(
                "{}: {}",
                u["probe"].as_str()?,
                u["status"].as_str()?
            ))
        })
        .collect();
    if usdt.is_empty() {
        "no garbage collection happened during the session (or no Python interpreter was found: \
         metadata.json python.usdt)"
            .to_owned()
    } else {
        format!("GC probes not attached: {}", usdt.join("; "))
    }
}

// ---- the plots ----

fn step_time(m: &Model, duration: f64) -> Plot {
    if m.steps.is_empty() {
        return Err(why_no_steps(m));
    }
    let exact: Vec<(f64, f64)> = m
        .steps
        .iter()
        .filter(|s| s.completion == Completion::Exact)
        .map(|s| (s.t, s.gpu_ms))
        .collect();
    let bound: Vec<&super::Step> = m
        .steps
        .iter()
        .filter(|s| s.completion != Completion::Exact)
        .collect();
    let y_max = m.steps.iter().map(|s| s.gpu_ms).fold(0.0, f64::max);
    let mut c = Chart::new(
        "step_time",
        (0.0, duration),
        (0.0, y_max * 1.05),
        "session time (s)",
        "GPU time per step (ms)",
    );
    let lows = downsample(
        &bound.iter().map(|s| (s.t, s.lower_ms)).collect::<Vec<_>>(),
        0.0,
        duration,
        BUCKETS,
    );
    let highs = downsample(
        &bound.iter().map(|s| (s.t, s.gpu_ms)).collect::<Vec<_>>(),
        0.0,
        duration,
        BUCKETS,
    );
    let band: Vec<(f64, f64, f64)> = lows
        .iter()
        .zip(&highs)
        .map(|(l, h)| (h.x, l.min, h.max))
        .collect();
    c.band(&band, PALETTE[1]);
    c.dots(
        &extremes(
            &bound.iter().map(|s| (s.t, s.gpu_ms)).collect::<Vec<_>>(),
            duration,
        ),
        PALETTE[1],
        "upper bound",
        true,
    );
    c.dots(&extremes(&exact, duration), PALETTE[0], "exact", false);
    Ok(c.finish())
}

/// Each bucket's smallest and largest point (all points when there are few).
fn extremes(pts: &[(f64, f64)], duration: f64) -> Vec<(f64, f64)> {
    if pts.len() <= 2 * BUCKETS {
        return pts.to_vec();
    }
    downsample(pts, 0.0, duration, BUCKETS)
        .into_iter()
        .flat_map(|b| [(b.x, b.min), (b.x, b.max)])
        .collect()
}

fn step_histograms(m: &Model) -> Vec<(String, Plot)> {
    if m.steps.is_empty() {
        return vec![("step_hist".to_owned(), Err(why_no_steps(m)))];
    }
    let mut all: Vec<f64> = m.steps.iter().map(|s| s.gpu_ms).collect();
    all.sort_by(f64::total_cmp);
    let top = all[((all.len() - 1) as f64 * 0.99) as usize].max(all[0] + 1e-3) * 1.1;
    let bins = 40usize;
    let width = top / bins as f64;
    let mut phases: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for s in &m.steps {
        let bin = ((s.gpu_ms / width).floor() as usize).min(bins - 1);
        let e = phases
            .entry(s.phase.as_str())
            .or_insert_with(|| (vec![0.0; bins], vec![0.0; bins]));
        if s.completion == Completion::Exact {
            e.0[bin] += 1.0;
        } else {
            e.1[bin] += 1.0;
        }
    }
    phases
        .into_iter()
        .map(|(phase, (exact, bound))| {
            let safe: String = phase.chars().filter(char::is_ascii_alphanumeric).collect();
            let name = format!("step_hist_{safe}");
            let y_max = exact
                .iter()
                .zip(&bound)
                .map(|(a, b)| a + b)
                .fold(0.0, f64::max);
            let mut c = Chart::new(
                &name,
                (0.0, top),
                (0.0, y_max * 1.1),
                &format!(
                    "{phase}: GPU time per step (ms), last bin ≥ {}",
                    num(top - width)
                ),
                "steps",
            );
            let bar =
                |i: usize, lo: f64, hi: f64| (i as f64 * width, (i + 1) as f64 * width, lo, hi);
            c.bars(
                &exact
                    .iter()
                    .enumerate()
                    .map(|(i, v)| bar(i, 0.0, *v))
                    .collect::<Vec<_>>(),
                PALETTE[0],
                "exact",
                false,
            );
            c.bars(
                &bound
                    .iter()
                    .enumerate()
                    .map(|(i, v)| bar(i, exact[i], exact[i] + v))
                    .collect::<Vec<_>>(),
                PALETTE[1],
                "upper bound",
                true,
            );
            (name, Ok(c.finish()))
        })
        .collect()
}

fn batch_plot(m: &Model, duration: f64, tokens: bool) -> Plot {
    if m.batches.is_empty() {
        return Err(why_no_batches(m));
    }
    let (name, label, limit_name) = if tokens {
        (
            "batch_tokens",
            "tokens per step",
            "max_num_scheduled_tokens",
        )
    } else {
        ("batch_seqs", "sequences per step", "max_num_seqs")
    };
    let pts: Vec<(f64, f64)> = m
        .batches
        .iter()
        .map(|b| (b.t, if tokens { b.tokens } else { b.seqs }))
        .collect();
    let limit = m
        .batches
        .iter()
        .find_map(|b| if tokens { b.max_tokens } else { b.max_seqs });
    let y_max = pts.iter().map(|p| p.1).fold(limit.unwrap_or(0.0), f64::max);
    let mut c = Chart::new(
        name,
        (0.0, duration),
        (0.0, y_max * 1.08),
        "session time (s)",
        label,
    );
    series(&mut c, &pts, duration, PALETTE[0], label);
    if let Some(l) = limit {
        c.hline(l, PALETTE[3], &format!("{limit_name} = {}", num(l)));
    }
    Ok(c.finish())
}

/// A downsampled series: min-max band and mean line.
fn series(c: &mut Chart, pts: &[(f64, f64)], duration: f64, color: &str, label: &str) {
    let b = downsample(pts, 0.0, duration, BUCKETS);
    c.band(
        &b.iter().map(|b| (b.x, b.min, b.max)).collect::<Vec<_>>(),
        color,
    );
    c.line(
        &b.iter().map(|b| (b.x, b.mean)).collect::<Vec<_>>(),
        color,
        label,
        false,
    );
}

fn queues(m: &Model, duration: f64) -> Plot {
    if m.queues.is_empty() {
        return Err(why_no_state(m, "scheduler_state.csv"));
    }
    let running: Vec<(f64, f64)> = m.queues.iter().map(|q| (q.t, q.running)).collect();
    let waiting: Vec<(f64, f64)> = m.queues.iter().map(|q| (q.t, q.waiting)).collect();
    let y_max = m
        .queues
        .iter()
        .map(|q| q.running.max(q.waiting))
        .fold(1.0, f64::max);
    let mut c = Chart::new(
        "queues",
        (0.0, duration),
        (0.0, y_max * 1.08),
        "session time (s)",
        "requests",
    );
    series(&mut c, &running, duration, PALETTE[2], "running");
    series(&mut c, &waiting, duration, PALETTE[3], "waiting");
    Ok(c.finish())
}

fn kv(m: &Model, duration: f64) -> Plot {
    if m.kv.is_empty() {
        return Err(why_no_state(m, "kv_cache_usage.csv"));
    }
    let pts: Vec<(f64, f64)> = m.kv.iter().map(|k| (k.t, k.pct)).collect();
    let mut c = Chart::new(
        "kv",
        (0.0, duration),
        (0.0, 105.0),
        "session time (s)",
        "KV cache usage (%)",
    );
    c.hline(90.0, PALETTE[3], "90 %");
    series(&mut c, &pts, duration, PALETTE[0], "KV usage");
    c.vmarks(
        &preemption_marks(m, duration),
        "#d00000",
        &format!("preemption ({})", m.preemptions.len()),
    );
    Ok(c.finish())
}

/// One mark per preemption, or per bucket of them when there are very many.
fn preemption_marks(m: &Model, duration: f64) -> Vec<(f64, String)> {
    if m.preemptions.len() <= 1500 {
        return m
            .preemptions
            .iter()
            .map(|p| {
                (
                    p.t,
                    format!("{:.3} s: {} preempted ({})", p.t, p.request, p.reason),
                )
            })
            .collect();
    }
    let pts: Vec<(f64, f64)> = m.preemptions.iter().map(|p| (p.t, 1.0)).collect();
    downsample(&pts, 0.0, duration, 1500)
        .into_iter()
        .map(|b| (b.x, format!("{:.2} s: {} preemptions", b.x, b.n)))
        .collect()
}

/// Operations by total sampled (and exact GC) time, largest first.
fn cpu_ops_ranked(m: &Model) -> Vec<(u32, f64)> {
    let mut totals: HashMap<u32, f64> = HashMap::new();
    for r in m.cpu.iter().filter(|r| r.method != Method::Bracketed) {
        *totals.entry(r.op).or_default() += r.ms;
    }
    let mut v: Vec<(u32, f64)> = totals.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

fn cpu_per_step(m: &Model, duration: f64) -> Plot {
    let ranked = cpu_ops_ranked(m);
    if ranked.is_empty() {
        return Err(why_no_samples(m));
    }
    let shown: Vec<u32> = ranked.iter().take(CPU_OPS).map(|r| r.0).collect();
    let slot = |op: u32| shown.iter().position(|o| *o == op).unwrap_or(CPU_OPS);
    let width = duration / CPU_COLUMNS as f64;
    let col = |t: f64| ((t / width).floor().max(0.0) as usize).min(CPU_COLUMNS - 1);
    let per_step = !m.steps.is_empty();
    let mut ms = vec![vec![0.0; CPU_OPS + 1]; CPU_COLUMNS];
    // Per step: only the rows inside a step window (the time before the first step has none).
    for r in m
        .cpu
        .iter()
        .filter(|r| r.method != Method::Bracketed && (r.step.is_some() || !per_step))
    {
        ms[col(r.start)][slot(r.op)] += r.ms;
    }
    let mut steps = vec![0usize; CPU_COLUMNS];
    let stepping: HashSet<u32> = m.steps.iter().map(|s| s.pid).take(1).collect();
    for s in m.steps.iter().filter(|s| stepping.contains(&s.pid)) {
        steps[col(s.t)] += 1;
    }
    if per_step {
        for (i, n) in steps.iter().enumerate() {
            if *n == 0 {
                ms[i].fill(0.0);
            }
        }
    }
    let div = |i: usize| {
        if per_step {
            steps[i].max(1) as f64
        } else {
            width
        }
    };
    let totals: Vec<f64> = (0..CPU_COLUMNS)
        .map(|i| ms[i].iter().sum::<f64>() / div(i))
        .collect();
    let y_label = if per_step {
        "CPU ms per step"
    } else {
        "CPU ms per second"
    };
    let mut c = Chart::new(
        "cpu_per_step",
        (0.0, duration),
        (0.0, totals.iter().copied().fold(0.0, f64::max) * 1.1),
        "session time (s)",
        y_label,
    );
    for k in 0..=CPU_OPS {
        let label = shown.get(k).map_or("other", |op| m.name(*op));
        let mut base = vec![0.0; CPU_COLUMNS];
        for (i, b) in base.iter_mut().enumerate() {
            *b = ms[i][..k].iter().sum::<f64>() / div(i);
        }
        let bars: Vec<(f64, f64, f64, f64)> = (0..CPU_COLUMNS)
            .filter(|i| ms[*i][k] > 0.0)
            .map(|i| {
                (
                    i as f64 * width,
                    (i + 1) as f64 * width,
                    base[i],
                    base[i] + ms[i][k] / div(i),
                )
            })
            .collect();
        c.bars(&bars, PALETTE[k % PALETTE.len()], label, false);
    }
    Ok(c.finish())
}

fn cpu_totals(m: &Model) -> Plot {
    let ranked = cpu_ops_ranked(m);
    if ranked.is_empty() {
        return Err(why_no_samples(m));
    }
    let total: f64 = ranked.iter().map(|r| r.1).sum();
    let items: Vec<(String, f64, String)> = ranked
        .iter()
        .map(|(op, ms)| {
            (
                m.name(*op).to_owned(),
                *ms,
                format!("{:.1} % of the sampled CPU time", 100.0 * ms / total),
            )
        })
        .collect();
    Ok(hbars("cpu_totals", &items, "ms"))
}

fn idle_gaps(m: &Model, duration: f64) -> Plot {
    if m.steps.is_empty() {
        return Err(why_no_steps(m));
    }
    let gaps = findings::idle_gaps(m);
    if gaps.is_empty() {
        return Err(
            "no GPU idle gap between steps: every step's GPU start met the previous \
                    step's completion (the GPU always had work queued, or completions are \
                    upper bounds that reach the next step's start: async scheduling)"
                .to_owned(),
        );
    }
    let y_max = gaps.iter().map(|g| g.1).fold(0.0, f64::max);
    let mut c = Chart::new(
        "idle_gaps",
        (0.0, duration),
        (0.0, y_max * 1.05),
        "session time (s)",
        "GPU idle before the step (ms)",
    );
    c.dots(&extremes(&gaps, duration), PALETTE[3], "idle gap", false);
    Ok(c.finish())
}

fn idle_filled(m: &Model) -> Plot {
    let filled = &m.cpu_summary["gpu_idle_gaps"]["attributed_ms"];
    let mut items: Vec<(String, f64, String)> = filled
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            Some((
                k.clone(),
                v.as_f64()?,
                "sampled CPU time inside GPU-idle gaps".to_owned(),
            ))
        })
        .filter(|i| i.1 > 0.0)
        .collect();
    if items.is_empty() {
        return Err(if m.cpu_summary.is_null() {
            "cpu_timing_summary.json could not be read".to_owned()
        } else {
            format!(
                "no sampled work fell inside a GPU-idle gap ({} gaps, {} ms in all, in \
                 cpu_timing_summary.json gpu_idle_gaps)",
                m.cpu_summary["gpu_idle_gaps"]["count"], m.cpu_summary["gpu_idle_gaps"]["total_ms"]
            )
        });
    }
    items.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(hbars("idle_filled", &items, "ms"))
}

/// "graph 3 FULL 8 tok / 8 req (pid 7)".
fn graph_label(g: &super::GraphUse) -> String {
    match (g.mode.as_str(), g.tokens) {
        ("", _) | (_, None) => format!("graph {} (no descriptor) pid {}", g.id, g.pid),
        (mode, Some(t)) => format!(
            "graph {} {mode} {} tok / {} req, pid {}",
            g.id,
            num(t),
            g.reqs.map_or_else(|| "?".to_owned(), num),
            g.pid
        ),
    }
}

/// Per (pid, graph): (padded tokens, scheduled tokens, steps) of the steps that replayed only it.
fn padding_by_graph(m: &Model) -> HashMap<(u32, u32), (f64, f64, u64)> {
    let mut out: HashMap<(u32, u32), (f64, f64, u64)> = HashMap::new();
    for s in &m.steps {
        if let ([g], Some(p), Some(t)) = (s.graph_ids.as_slice(), s.padded, s.tokens) {
            let e = out.entry((s.pid, *g)).or_default();
            e.0 += p;
            e.1 += t;
            e.2 += 1;
        }
    }
    out
}

fn graph_replays(m: &Model) -> Plot {
    let used: Vec<&super::GraphUse> = m.graphs.iter().filter(|g| g.replays > 0).collect();
    if used.is_empty() {
        return Err(if m.graphs.is_empty() {
            "no CUDA graph captured or replayed while attached (eager mode, or graphs captured \
             before attach and never replayed)"
                .to_owned()
        } else {
            format!(
                "{} graphs captured, none replayed while attached",
                m.graphs.len()
            )
        });
    }
    let pad = padding_by_graph(m);
    let mut items: Vec<(String, f64, String)> = used
        .iter()
        .map(|g| {
            let note = pad.get(&(g.pid, g.id)).map_or_else(
                || "padding unknown (descriptor not read)".to_owned(),
                |(p, t, n)| {
                    format!(
                        "padding {:.0} % ({} padded tokens over {n} steps)",
                        100.0 * p / (p + t).max(1.0),
                        num(*p)
                    )
                },
            );
            (graph_label(g), g.replays as f64, note)
        })
        .collect();
    items.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(hbars("graph_replays", &items, "replays"))
}

fn graph_padding(m: &Model) -> Plot {
    let pad = padding_by_graph(m);
    let mut items: Vec<(String, f64, String)> = m
        .graphs
        .iter()
        .filter_map(|g| {
            let (p, t, n) = pad.get(&(g.pid, g.id))?;
            Some((
                graph_label(g),
                100.0 * p / (p + t).max(1.0),
                format!(
                    "{} padded tokens, {} scheduled, over {n} steps",
                    num(*p),
                    num(*t)
                ),
            ))
        })
        .collect();
    if items.is_empty() {
        return Err(
            "no FULL-graph descriptor was read with a step's batch, so padding is \
                    unknown (piecewise graphs have no descriptor; see docs/OUTPUTS.md \
                    cuda_graph_usage.csv)"
                .to_owned(),
        );
    }
    items.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(hbars("graph_padding", &items, "% padded"))
}

fn gc(m: &Model, duration: f64) -> Plot {
    if m.gc.is_empty() {
        return Err(why_no_gc(m));
    }
    let y_max = m.gc.iter().map(|g| g.ms).fold(0.0, f64::max);
    let mut c = Chart::new(
        "gc",
        (0.0, duration),
        (0.0, y_max * 1.05),
        "session time (s)",
        "GC pause (ms)",
    );
    for generation in 0..=2u8 {
        let pts: Vec<(f64, f64)> =
            m.gc.iter()
                .filter(|g| g.generation == generation)
                .map(|g| (g.t, g.ms))
                .collect();
        c.dots(
            &extremes(&pts, duration),
            PALETTE[usize::from(generation) + 4],
            &format!("generation {generation} ({})", pts.len()),
            false,
        );
    }
    Ok(c.finish())
}

const CSS: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 16px 40px;color:#222}\
h1{font-size:22px;margin:18px 0 8px}h1 span{color:#666;font-weight:normal}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:28px}\
h3{font-size:15px;margin:10px 0 4px}.intro{color:#555;margin:4px 0 8px}table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;vertical-align:top}\
.facts th{color:#555;font-weight:normal}.facts td{word-break:break-all}.losses tr.zero{color:#888}.losses tr.bad,.bad{color:#b00020;font-weight:bold}.ok{color:#1b7f3b}\
td.n{text-align:right;font-variant-numeric:tabular-nums}svg.chart{width:100%;height:auto;display:block;margin:6px 0 14px}svg text{font-size:11px;fill:#333}\
.axes line{stroke:#888}.axes line.grid{stroke:#eee}.absent{border:1px dashed #bbb;background:#fafafa;color:#555;padding:14px;margin:8px 0}\
.finding{border-left:5px solid #999;padding:4px 12px;margin:10px 0;background:#fafafa}.finding.limit{border-color:#b00020}.finding.warning{border-color:#e69f00}.finding.info{border-color:#0072b2}\
.sev{font-size:11px;text-transform:uppercase;color:#fff;background:#999;border-radius:3px;padding:1px 5px;margin-right:6px}.limit .sev{background:#b00020}.warning .sev{background:#c77d00}.info .sev{background:#0072b2}\
.action{margin:4px 0}svg.flame{width:100%;height:auto;display:block;cursor:pointer}svg.flame text{font-size:10.5px;fill:#111;pointer-events:none}svg.flame rect{stroke:#fff;stroke-width:0.3}\
svg.flame g.fr:hover rect{stroke:#000;stroke-width:0.8}code{font-size:12px}";

/// Flame graph zoom, and a marker the tests read: `data-js="ok"` when the script ran to its
/// end, `data-js-errors` when any script error happened on the page.
const JS: &str = r"(function(){'use strict';
window.addEventListener('error',function(){document.body.setAttribute('data-js-errors','1');});
function fit(n,px){var k=Math.floor((px-6)/6.5);if(k<3){return '';}return n.length<=k?n:n.slice(0,k-1)+'\u2026';}
document.querySelectorAll('svg[data-flame]').forEach(function(svg){
var W=+svg.getAttribute('data-width');var frames=Array.prototype.slice.call(svg.querySelectorAll('g.fr'));
function zoom(x,w,d){frames.forEach(function(g){var fx=+g.getAttribute('data-x'),fw=+g.getAttribute('data-w'),fd=+g.getAttribute('data-d');
var inside=fx>=x-1e-9&&fx+fw<=x+w+1e-9;var above=fd<d&&fx<=x+1e-9&&fx+fw>=x+w-1e-9;
var r=g.querySelector('rect'),t=g.querySelector('text');
if(!(inside||above)){g.setAttribute('display','none');return;}g.removeAttribute('display');
var nx=above?0:(fx-x)/w*W,nw=above?W:fw/w*W;r.setAttribute('x',nx.toFixed(2));r.setAttribute('width',Math.max(nw-0.5,0.1).toFixed(2));
t.setAttribute('x',(nx+3).toFixed(2));t.textContent=fit(g.getAttribute('data-n')||'',nw);});}
svg.addEventListener('click',function(ev){var g=ev.target.closest('g.fr');if(!g){return;}
var d=+g.getAttribute('data-d');if(d===0){zoom(0,1,0);return;}zoom(+g.getAttribute('data-x'),+g.getAttribute('data-w'),d);});
});
document.body.setAttribute('data-js','ok');
})();";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Kv, Preemption};

    #[test]
    fn escapes_markup_quotes_and_ampersands() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn untrusted_request_ids_never_reach_the_page_as_markup() {
        let evil = "<script>alert(1)</script>";
        let m = Model {
            kv: vec![Kv { t: 0.5, pct: 95.0 }, Kv { t: 1.0, pct: 99.0 }],
            preemptions: vec![Preemption {
                t: 0.7,
                pid: 1,
                request: evil.to_owned(),
                reason: "\"><img src=x>".to_owned(),
            }],
            ..Model::default()
        };
        let p = page(&m);
        assert!(!p.contains(evil) && !p.contains("<img"), "escaped");
        assert!(p.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        // Exactly one script element: ours.
        assert_eq!(p.matches("<script").count(), 1);
        assert!(!p.contains("innerHTML"));
        // The KV plot has its two readings and the preemption mark.
        let kv = p.split("data-plot=\"kv\"").nth(1).expect("kv plot");
        assert!(kv.starts_with(" data-marks=\"3\""), "{}", &kv[..40]);
        // No steps: the step plot says why instead of an empty box.
        assert!(p.contains("data-plot-absent=\"step_time\""));
        assert!(p.contains("Content-Security-Policy"));
    }

    #[test]
    fn a_thirty_minute_session_stays_a_few_megabytes() {
        let steps: Vec<crate::report::Step> = (0..500_000u32)
            .map(|i| {
                let t = f64::from(i) * 0.0036;
                crate::report::Step {
                    step: u64::from(i),
                    t,
                    pid: 1,
                    tid: 1,
                    phase: if i % 3 == 0 { "prefill" } else { "decode" }.to_owned(),
                    tokens: Some(f64::from(i % 64)),
                    gpu_ms: 3.0 + f64::from(i % 7),
                    lower_ms: 1.0,
                    launch_ms: 0.5,
                    completion: if i % 2 == 0 {
                        Completion::Exact
                    } else {
                        Completion::UpperBound
                    },
                    done_before_wait: false,
                    gpu_start: t,
                    completion_sec: t + 0.003,
                    graph_launches: 1,
                    graph_ids: vec![1],
                    padded: Some(2.0),
                }
            })
            .collect();
        let kv = (0..18_000u32)
            .map(|i| Kv {
                t: f64::from(i) * 0.1,
                pct: f64::from(i % 100),
            })
            .collect();
        let m = Model {
            steps,
            kv,
            meta: serde_json::json!({"duration_sec": 1800.0}),
            ..Model::default()
        };
        let p = page(&m);
        assert!(p.len() < 3 << 20, "{} bytes", p.len());
    }
}
