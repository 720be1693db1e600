//! cpu_profile.speedscope.json: cpu_profile.folded in speedscope's sampled-profile format
//! (<https://www.speedscope.app/file-format-schema.json>), one profile per thread.
//!
//! Owns: splitting each folded line into its process, thread and frames, and frames into
//! function, file and line. Does not own: the folded file (`output::folded`).

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

use super::Model;

#[derive(Serialize, PartialEq, Eq, Hash, Clone, Debug)]
struct Frame {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u64>,
}

/// `qualname (file:line)` -> its parts; anything else is a name alone.
fn frame(text: &str) -> Frame {
    let parsed = text.strip_suffix(')').and_then(|t| {
        let (name, loc) = t.rsplit_once(" (")?;
        let (file, line) = loc.rsplit_once(':')?;
        Some(Frame {
            name: name.to_owned(),
            file: Some(file.to_owned()),
            line: Some(line.parse().ok()?),
        })
    });
    parsed.unwrap_or_else(|| Frame {
        name: text.to_owned(),
        file: None,
        line: None,
    })
}

#[derive(Default)]
struct Profile {
    samples: Vec<Vec<usize>>,
    weights: Vec<f64>,
}

/// The speedscope file of `m`'s folded stacks (an empty profile list without samples).
///
/// # Errors
///
/// Serialization failed.
pub fn to_json(m: &Model) -> Result<Vec<u8>> {
    let period = m.cpu_summary["sample_period_ms"]
        .as_f64()
        .filter(|p| *p > 0.0);
    let mut frames: Vec<Frame> = Vec::new();
    let mut index: HashMap<Frame, usize> = HashMap::new();
    let mut profiles: BTreeMap<String, Profile> = BTreeMap::new();
    for (stack, n) in &m.folded {
        let parts: Vec<&str> = stack.split(';').collect();
        let (name, rest) = if parts.len() >= 3 {
            (format!("{} {}", parts[0], parts[1]), &parts[2..])
        } else {
            ("[other]".to_owned(), &parts[..])
        };
        let ids = rest
            .iter()
            .map(|f| {
                let fr = frame(f);
                *index.entry(fr.clone()).or_insert_with(|| {
                    frames.push(fr);
                    frames.len() - 1
                })
            })
            .collect();
        let p = profiles.entry(name).or_default();
        p.samples.push(ids);
        p.weights
            .push(period.map_or(*n as f64, |ms| *n as f64 * ms));
    }
    let profiles: Vec<serde_json::Value> = profiles
        .into_iter()
        .map(|(name, p)| {
            let end: f64 = p.weights.iter().sum();
            json!({
                "type": "sampled",
                "name": name,
                "unit": if period.is_some() { "milliseconds" } else { "none" },
                "startValue": 0,
                "endValue": end,
                "samples": p.samples,
                "weights": p.weights,
            })
        })
        .collect();
    let session = m
        .dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let doc = json!({
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": { "frames": frames },
        "profiles": profiles,
        "name": format!("ProfileMate {session}"),
        "activeProfileIndex": 0,
        "exporter": format!("profilemate {}", crate::VERSION),
    });
    Ok(serde_json::to_vec(&doc)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_stacks_become_one_sampled_profile_per_thread() {
        let m = Model {
            folded: vec![
                (
                    "python3 (7);engine (7);main (a.py:1);step (b.py:20)".to_owned(),
                    3,
                ),
                ("python3 (7);engine (7);main (a.py:1)".to_owned(), 2),
                ("python3 (7);api-output (9);[native]".to_owned(), 1),
                ("[other stacks]".to_owned(), 4),
            ],
            cpu_summary: json!({"sample_period_ms": 5.0}),
            ..Model::default()
        };
        let v: serde_json::Value =
            serde_json::from_slice(&to_json(&m).expect("json")).expect("parse");
        assert_eq!(
            v["$schema"],
            "https://www.speedscope.app/file-format-schema.json"
        );
        let frames = v["shared"]["frames"].as_array().expect("frames");
        assert_eq!(frames.len(), 4, "{frames:?}");
        assert_eq!(
            frames[1],
            json!({"name": "step", "file": "b.py", "line": 20})
        );
        assert_eq!(frames[2], json!({"name": "[native]"}));
        let profiles = v["profiles"].as_array().expect("profiles");
        assert_eq!(profiles.len(), 3);
        for p in profiles {
            assert_eq!(p["type"], "sampled");
            assert_eq!(p["unit"], "milliseconds");
            let samples = p["samples"].as_array().expect("samples");
            let weights = p["weights"].as_array().expect("weights");
            assert_eq!(samples.len(), weights.len());
            let sum: f64 = weights.iter().filter_map(serde_json::Value::as_f64).sum();
            assert_eq!(p["endValue"].as_f64(), Some(sum));
            for s in samples {
                for i in s.as_array().expect("ids") {
                    assert!(i.as_u64().is_some_and(|i| (i as usize) < frames.len()));
                }
            }
        }
        let engine = profiles
            .iter()
            .find(|p| p["name"] == "python3 (7) engine (7)")
            .expect("engine");
        assert_eq!(engine["samples"], json!([[0, 1], [0]]));
        assert_eq!(engine["weights"], json!([15.0, 10.0]));
        assert_eq!(engine["endValue"], json!(25.0));
    }
}
