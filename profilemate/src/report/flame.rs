//! The flame graph of cpu_profile.folded as an inline SVG icicle (root on top), zoomable by
//! the page's script.
//!
//! Owns: the folded stacks' tree, pruning frames too narrow to see (so 200,000 stacks still
//! make a page of a few thousand rectangles) and drawing it. Does not own: parsing the file
//! (`Model::load`) or the script (`html`).

use std::{collections::HashMap, fmt::Write};

use super::{html::esc, svg::PALETTE};

/// Width of the graph in pixels.
const WIDTH: f64 = 1200.0;
/// Height of one frame.
const ROW: f64 = 17.0;
/// Frames narrower than this many pixels are left out (with their children).
const MIN_PX: f64 = 0.4;
/// At most this many frames are drawn.
const MAX_FRAMES: usize = 6000;
/// At most this many levels.
const MAX_DEPTH: usize = 80;

/// One frame of the merged tree.
#[derive(Debug, Default)]
pub struct Node {
    /// Frame text.
    pub name: String,
    /// Samples in it and below.
    pub value: u64,
    /// Children, in first-seen order.
    pub children: Vec<usize>,
    index: HashMap<String, usize>,
}

/// The merged stacks: node 0 is the root ("all").
#[derive(Debug)]
pub struct Tree {
    /// Nodes.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Merges `folded` lines (`a;b;c`, count) into a tree.
    #[must_use]
    pub fn build(folded: &[(String, u64)]) -> Self {
        let mut nodes = vec![Node {
            name: "all".to_owned(),
            ..Node::default()
        }];
        for (stack, n) in folded {
            nodes[0].value += n;
            let mut at = 0;
            for frame in stack.split(';') {
                let next = match nodes[at].index.get(frame) {
                    Some(&i) => i,
                    None => {
                        let i = nodes.len();
                        nodes.push(Node {
                            name: frame.to_owned(),
                            ..Node::default()
                        });
                        nodes[at].index.insert(frame.to_owned(), i);
                        nodes[at].children.push(i);
                        i
                    }
                };
                nodes[next].value += n;
                at = next;
            }
        }
        Self { nodes }
    }

    /// Total samples.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.nodes[0].value
    }
}

/// The colour of a frame: by kind (process/thread rows, native, vLLM, other Python).
fn color(depth: usize, name: &str) -> &'static str {
    match depth {
        0 => "#bbbbbb",
        1 | 2 => "#9db4c0",
        _ if name.starts_with('[') => "#c8b18a",
        _ if name.contains("vllm/") => PALETTE[2],
        _ => "#e8a85c",
    }
}

/// What the flame graph shows for a frame: the function, without its file.
fn short(name: &str) -> &str {
    name.split_once(" (").map_or(name, |(q, _)| q)
}

/// The flame graph SVG (`data-plot="flame"`, `data-marks` = frames drawn), or None without
/// samples.
#[must_use]
pub fn svg(folded: &[(String, u64)]) -> Option<String> {
    let tree = Tree::build(folded);
    let total = tree.total();
    if total == 0 {
        return None;
    }
    let mut frames = String::new();
    let mut drawn = 0usize;
    let mut max_depth = 0usize;
    // (node, depth, x fraction)
    let mut stack = vec![(0usize, 0usize, 0.0f64)];
    while let Some((i, depth, x)) = stack.pop() {
        let node = &tree.nodes[i];
        let w = node.value as f64 / total as f64;
        if w * WIDTH < MIN_PX || drawn >= MAX_FRAMES || depth >= MAX_DEPTH {
            continue;
        }
        drawn += 1;
        max_depth = max_depth.max(depth);
        frame(&mut frames, node, depth, x, w, total);
        let mut cx = x;
        for &c in &node.children {
            stack.push((c, depth + 1, cx));
            cx += tree.nodes[c].value as f64 / total as f64;
        }
    }
    let h = (max_depth + 1) as f64 * ROW + 4.0;
    Some(format!(
        "<svg class=\"flame\" data-plot=\"flame\" data-flame=\"1\" data-marks=\"{drawn}\" data-width=\"{WIDTH}\" viewBox=\"0 0 {WIDTH} {h:.0}\" role=\"img\">{frames}</svg>"
    ))
}

fn frame(out: &mut String, node: &Node, depth: usize, x: f64, w: f64, total: u64) {
    let px = x * WIDTH;
    let pw = w * WIDTH;
    let y = depth as f64 * ROW;
    let label = fit(short(&node.name), pw);
    let _ = write!(
        out,
        "<g class=\"fr\" data-x=\"{x:.6}\" data-w=\"{w:.6}\" data-d=\"{depth}\" data-n=\"{}\"><rect x=\"{px:.2}\" y=\"{y:.1}\" width=\"{:.2}\" height=\"{:.1}\" fill=\"{}\"/><text x=\"{:.2}\" y=\"{:.1}\">{}</text><title>{}</title></g>",
        esc(short(&node.name)),
        (pw - 0.5).max(0.1),
        ROW - 1.0,
        color(depth, &node.name),
        px + 3.0,
        y + 12.5,
        esc(&label),
        esc(&format!(
            "{}: {} samples ({:.1} %)",
            node.name,
            node.value,
            100.0 * node.value as f64 / total as f64
        ))
    );
}

/// `name` cut to what fits in `px` pixels (about 6.5 px a character), empty when nothing fits.
fn fit(name: &str, px: f64) -> String {
    let n = ((px - 6.0) / 6.5).floor();
    if n < 3.0 {
        return String::new();
    }
    super::svg::truncate(name, n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_merge_and_narrow_frames_are_pruned() {
        let folded = vec![
            ("p (1);t (1);a (f.py:1);b (f.py:2)".to_owned(), 1000),
            ("p (1);t (1);a (f.py:1);c (f.py:3)".to_owned(), 500),
            (
                "p (1);t (2);<img src=x onerror=alert(1)> (x:1)".to_owned(),
                1,
            ),
        ];
        let t = Tree::build(&folded);
        assert_eq!(t.total(), 1501);
        // root, p, t1, a, b, c, t2, evil
        assert_eq!(t.nodes.len(), 8);
        let s = svg(&folded).expect("svg");
        assert!(
            s.contains("data-marks=\"8\""),
            "every frame is wide enough: {s}"
        );
        assert!(!s.contains("<img"), "names are escaped");
        // 1 sample in 10 million is under half a pixel.
        let s = svg(&[("p;t;a".to_owned(), 10_000_000), ("p;t;tiny".to_owned(), 1)]).expect("svg");
        assert!(s.contains("data-marks=\"4\"") && !s.contains("tiny"), "{s}");
        assert!(svg(&[]).is_none());
    }
}
