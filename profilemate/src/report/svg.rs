//! Plain-SVG plotting for the report: linear axes with ticks, lines, min-max bands, dots,
//! bars, vertical marks and horizontal bar charts, plus the downsampling that keeps a long
//! session's plots small.
//!
//! Owns: coordinates, ticks, the `data-plot` / `data-marks` attributes the tests read (marks:
//! data points drawn), and escaping every label it is given. Does not own: what is plotted
//! (`html`).

use std::fmt::Write;

use super::html::esc;

/// Plot area width in pixels (the SVG is scaled to the page width by CSS).
pub const W: f64 = 1100.0;
/// Plot area height.
pub const H: f64 = 240.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 26.0;
const BOTTOM: f64 = 40.0;

/// Series colours, in order (colour-blind safe: Okabe-Ito).
pub const PALETTE: &[&str] = &[
    "#0072b2", "#e69f00", "#009e73", "#d55e00", "#cc79a7", "#56b4e9", "#f0e442", "#000000",
    "#999999", "#8c564b", "#17becf", "#bcbd22",
];

/// A time bucket of a downsampled series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    /// Bucket centre.
    pub x: f64,
    /// Smallest value.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Largest value.
    pub max: f64,
    /// Points in it.
    pub n: usize,
}

/// Splits `[x0, x1]` into `buckets` and summarizes the points in each (empty buckets are
/// left out). Keeps the extremes, so a spike in 500k steps still shows.
#[must_use]
pub fn downsample(points: &[(f64, f64)], x0: f64, x1: f64, buckets: usize) -> Vec<Bucket> {
    let buckets = buckets.max(1);
    let span = (x1 - x0).max(f64::MIN_POSITIVE);
    let mut acc: Vec<(f64, f64, f64, usize)> =
        vec![(f64::INFINITY, f64::NEG_INFINITY, 0.0, 0); buckets];
    for &(x, y) in points {
        let i = (((x - x0) / span) * buckets as f64)
            .floor()
            .clamp(0.0, (buckets - 1) as f64) as usize;
        let a = &mut acc[i];
        a.0 = a.0.min(y);
        a.1 = a.1.max(y);
        a.2 += y;
        a.3 += 1;
    }
    acc.into_iter()
        .enumerate()
        .filter(|(_, a)| a.3 > 0)
        .map(|(i, a)| Bucket {
            x: x0 + span * (i as f64 + 0.5) / buckets as f64,
            min: a.0,
            mean: a.2 / a.3 as f64,
            max: a.1,
            n: a.3,
        })
        .collect()
}

/// About `n` round tick values covering `[lo, hi]`.
#[must_use]
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = hi - lo;
    if span <= 0.0 || !span.is_finite() {
        return vec![lo];
    }
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// A number for an axis or a label: short, no trailing zeros.
#[must_use]
pub fn num(v: f64) -> String {
    let a = v.abs();
    let s = if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 || a == 0.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    };
    if s.contains('.') && !s.ends_with('k') && !s.ends_with('M') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// One chart with x and y axes.
pub struct Chart {
    name: String,
    x: (f64, f64),
    y: (f64, f64),
    x_label: String,
    y_label: String,
    body: String,
    marks: usize,
    legend: Vec<(String, String)>,
    defs: String,
}

impl Chart {
    /// A chart named `name` (the `data-plot` attribute) over `x` and `y` ranges.
    #[must_use]
    pub fn new(name: &str, x: (f64, f64), y: (f64, f64), x_label: &str, y_label: &str) -> Self {
        let widen = |(lo, hi): (f64, f64)| if hi > lo { (lo, hi) } else { (lo, lo + 1.0) };
        Self {
            name: name.to_owned(),
            x: widen(x),
            y: widen(y),
            x_label: x_label.to_owned(),
            y_label: y_label.to_owned(),
            body: String::new(),
            marks: 0,
            legend: Vec::new(),
            defs: String::new(),
        }
    }

    /// Pixel x of `x`.
    #[must_use]
    pub fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x.0) / (self.x.1 - self.x.0) * (W - LEFT - RIGHT)
    }

    /// Pixel y of `y` (clamped to the plot area).
    #[must_use]
    pub fn py(&self, y: f64) -> f64 {
        let f = ((y - self.y.0) / (self.y.1 - self.y.0)).clamp(0.0, 1.0);
        H - BOTTOM - f * (H - TOP - BOTTOM)
    }

    fn legend(&mut self, label: &str, color: &str) {
        if !label.is_empty() && !self.legend.iter().any(|(l, _)| l == label) {
            self.legend.push((label.to_owned(), color.to_owned()));
        }
    }

    /// A polyline through `pts`.
    pub fn line(&mut self, pts: &[(f64, f64)], color: &str, label: &str, dashed: bool) {
        if pts.is_empty() {
            return;
        }
        let mut d = String::new();
        for (i, &(x, y)) in pts.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if i == 0 { "M" } else { "L" },
                self.px(x),
                self.py(y)
            );
        }
        let dash = if dashed {
            " stroke-dasharray=\"5 3\""
        } else {
            ""
        };
        let _ = write!(
            self.body,
            "<path class=\"series\" d=\"{d}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"{dash}/>"
        );
        self.marks += pts.len();
        self.legend(label, color);
    }

    /// A shaded band between `lo` and `hi` at each x (a downsampled series' min and max).
    pub fn band(&mut self, pts: &[(f64, f64, f64)], color: &str) {
        if pts.is_empty() {
            return;
        }
        let mut d = String::new();
        for (i, &(x, _, hi)) in pts.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if i == 0 { "M" } else { "L" },
                self.px(x),
                self.py(hi)
            );
        }
        for &(x, lo, _) in pts.iter().rev() {
            let _ = write!(d, "L{:.1},{:.1}", self.px(x), self.py(lo));
        }
        let _ = write!(
            self.body,
            "<path d=\"{d}Z\" fill=\"{color}\" fill-opacity=\"0.18\" stroke=\"none\"/>"
        );
    }

    /// Dots at `pts`; hollow ones read as "a bound, not a measurement".
    pub fn dots(&mut self, pts: &[(f64, f64)], color: &str, label: &str, hollow: bool) {
        if pts.is_empty() {
            return;
        }
        let mut d = String::new();
        for &(x, y) in pts {
            let _ = write!(d, "M{:.1},{:.1}h0", self.px(x), self.py(y));
        }
        let (width, cap) = if hollow {
            (5.0, "square")
        } else {
            (4.0, "round")
        };
        let _ = write!(
            self.body,
            "<path class=\"series\" d=\"{d}\" stroke=\"{color}\" stroke-width=\"{width}\" stroke-linecap=\"{cap}\"{}/>",
            if hollow { " stroke-opacity=\"0.45\"" } else { "" }
        );
        self.marks += pts.len();
        self.legend(label, color);
    }

    /// Vertical bars `(x0, x1, y0, y1)`, optionally hatched (an upper bound).
    pub fn bars(&mut self, bars: &[(f64, f64, f64, f64)], color: &str, label: &str, hatched: bool) {
        let fill = if hatched {
            // Pattern ids are page-global: the chart's name (letters and digits) keeps them apart.
            let safe: String = self
                .name
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect();
            let id = format!("hatch-{safe}-{}", self.defs.matches("<pattern").count());
            let _ = write!(
                self.defs,
                "<pattern id=\"{id}\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" fill=\"#fff\"/><line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"{color}\" stroke-width=\"3\"/></pattern>"
            );
            format!("url(#{id})")
        } else {
            color.to_owned()
        };
        for &(x0, x1, y0, y1) in bars {
            if y1 <= y0 {
                continue;
            }
            let (a, b) = (self.px(x0), self.px(x1));
            let (top, bottom) = (self.py(y1), self.py(y0));
            let _ = write!(
                self.body,
                "<rect class=\"bar\" x=\"{a:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\" stroke=\"{color}\" stroke-width=\"0.6\"/>",
                (b - a - 1.0).max(0.8),
                (bottom - top).max(0.5)
            );
            self.marks += 1;
        }
        self.legend(label, color);
    }

    /// Vertical marks at `xs` (events such as preemptions), each with a tooltip.
    pub fn vmarks(&mut self, xs: &[(f64, String)], color: &str, label: &str) {
        for (x, tip) in xs {
            let px = self.px(*x);
            let _ = write!(
                self.body,
                "<line class=\"mark\" x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{TOP}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"1\" stroke-opacity=\"0.7\"><title>{}</title></line>",
                H - BOTTOM,
                esc(tip)
            );
            self.marks += 1;
        }
        if !xs.is_empty() {
            self.legend(label, color);
        }
    }

    /// A horizontal reference line (a limit) with its label.
    pub fn hline(&mut self, y: f64, color: &str, label: &str) {
        let py = self.py(y);
        let _ = write!(
            self.body,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{py:.1}\" y2=\"{py:.1}\" stroke=\"{color}\" stroke-dasharray=\"6 3\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" class=\"lim\" fill=\"{color}\">{}</text>",
            W - RIGHT,
            W - RIGHT - 4.0,
            py - 3.0,
            esc(label)
        );
    }

    /// Adds a legend entry without drawing (for series drawn in pieces).
    pub fn key(&mut self, label: &str, color: &str) {
        self.legend(label, color);
    }

    /// Data points drawn so far.
    #[must_use]
    pub fn marks(&self) -> usize {
        self.marks
    }

    /// The finished `<svg>`.
    #[must_use]
    pub fn finish(self) -> String {
        let mut s = String::with_capacity(self.body.len() + 4096);
        let _ = write!(
            s,
            "<svg class=\"chart\" data-plot=\"{}\" data-marks=\"{}\" viewBox=\"0 0 {W} {H}\" role=\"img\"><defs>{}</defs>",
            esc(&self.name),
            self.marks,
            self.defs
        );
        self.axes(&mut s);
        s.push_str(&self.body);
        self.legend_svg(&mut s);
        s.push_str("</svg>");
        s
    }

    fn axes(&self, s: &mut String) {
        let (x_end, y_end) = (W - RIGHT, H - BOTTOM);
        let _ = write!(
            s,
            "<g class=\"axes\"><line x1=\"{LEFT}\" x2=\"{x_end}\" y1=\"{y_end}\" y2=\"{y_end}\"/><line x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{y_end}\"/>"
        );
        for t in ticks(self.x.0, self.x.1, 10) {
            let x = self.px(t);
            let _ = write!(
                s,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{y_end}\" y2=\"{:.1}\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                y_end + 4.0,
                y_end + 15.0,
                num(t)
            );
        }
        for t in ticks(self.y.0, self.y.1, 5) {
            let y = self.py(t);
            let _ = write!(
                s,
                "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{x_end}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                LEFT - 5.0,
                y + 4.0,
                num(t)
            );
        }
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text><text transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text></g>",
            (LEFT + x_end) / 2.0,
            H - 6.0,
            esc(&self.x_label),
            (TOP + y_end) / 2.0,
            esc(&self.y_label)
        );
    }

    fn legend_svg(&self, s: &mut String) {
        let mut x = LEFT + 8.0;
        for (label, color) in &self.legend {
            let _ = write!(
                s,
                "<rect x=\"{x:.1}\" y=\"4\" width=\"10\" height=\"10\" fill=\"{color}\"/><text class=\"legend\" x=\"{:.1}\" y=\"13\">{}</text>",
                x + 14.0,
                esc(label)
            );
            x += 24.0 + 6.5 * label.chars().count() as f64;
        }
    }
}

/// A horizontal bar chart of labelled values (operations, graph descriptors); each bar has a
/// tooltip with its note.
#[must_use]
pub fn hbars(name: &str, items: &[(String, f64, String)], unit: &str) -> String {
    let row = 20.0;
    let label_w = 300.0;
    let h = TOP + row * items.len() as f64 + 24.0;
    let max = items
        .iter()
        .map(|i| i.1)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let bar_w = W - label_w - 120.0;
    let mut s = format!(
        "<svg class=\"chart hbars\" data-plot=\"{}\" data-marks=\"{}\" viewBox=\"0 0 {W} {h:.0}\" role=\"img\">",
        esc(name),
        items.iter().filter(|i| i.1 > 0.0).count()
    );
    for (i, (label, v, note)) in items.iter().enumerate() {
        let y = TOP + row * i as f64;
        let w = (v / max * bar_w).max(if *v > 0.0 { 1.0 } else { 0.0 });
        let color = PALETTE[i % PALETTE.len()];
        let _ = write!(
            s,
            "<g class=\"hbar\"><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><rect x=\"{label_w}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{}</title></rect><text x=\"{:.1}\" y=\"{:.1}\">{} {}</text></g>",
            label_w - 6.0,
            y + 14.0,
            esc(&truncate(label, 44)),
            y + 3.0,
            row - 6.0,
            esc(&format!("{label}: {} {unit}. {note}", num(*v))),
            label_w + w + 6.0,
            y + 14.0,
            num(*v),
            esc(unit)
        );
    }
    s.push_str("</svg>");
    s
}

/// `s` cut to `n` characters, with an ellipsis when cut.
#[must_use]
pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_keeps_extremes_and_bounds_the_size() {
        let pts: Vec<(f64, f64)> = (0..500_000)
            .map(|i| (f64::from(i) / 1000.0, if i == 123_457 { 99.0 } else { 1.0 }))
            .collect();
        let b = downsample(&pts, 0.0, 500.0, 1000);
        assert_eq!(b.len(), 1000);
        assert_eq!(b.iter().map(|b| b.n).sum::<usize>(), 500_000);
        assert!(b.iter().any(|b| b.max == 99.0), "the spike survives");
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(num(2.50), "2.5");
        assert_eq!(num(12_000.0), "12k");
        assert_eq!(num(0.125), "0.125");
    }

    #[test]
    fn labels_are_escaped() {
        let mut c = Chart::new("p", (0.0, 1.0), (0.0, 1.0), "<x>", "y");
        c.vmarks(
            &[(0.5, "<script>alert(1)</script>".to_owned())],
            "#000",
            "\"m\"",
        );
        let svg = c.finish();
        assert!(!svg.contains("<script>") && !svg.contains("<x>"), "{svg}");
        assert!(svg.contains("data-marks=\"1\""));
        let h = hbars("h", &[("<b>".to_owned(), 1.0, "&".to_owned())], "ms");
        assert!(!h.contains("<b>") && h.contains("&lt;b&gt;"), "{h}");
    }
}
