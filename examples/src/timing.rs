//! Timing and reporting shared by the benchmark binaries (`bench`, `bench_models`).
//!
//! Every timed run ends on a device sync ([`sync`]), so a time covers the GPU work queued by the run,
//! not only the host's queueing of it. [`Report`] collects the Markdown the binaries write to `--out`
//! (headings, notes, tables) and, for `--json`, the same tables as JSON.

use std::path::Path;
use std::time::Instant;

use burn::prelude::*;
use serde_json::{json, Value};

/// Waits until the device has finished everything queued on it.
pub fn sync<B: Backend>(device: &B::Device) {
    B::sync(device).expect("device sync");
}

/// Times of repeated runs, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples(Vec<f64>);

impl Samples {
    /// Samples from times in any order.
    pub fn new(mut seconds: Vec<f64>) -> Self {
        assert!(!seconds.is_empty(), "no samples");
        seconds.sort_by(f64::total_cmp);
        Self(seconds)
    }

    /// The middle sample (the upper one of the two middle samples for an even count).
    pub fn median(&self) -> f64 {
        self.0[self.0.len() / 2]
    }

    /// The fastest sample.
    pub fn min(&self) -> f64 {
        self.0[0]
    }

    /// All samples, fastest first.
    pub fn sorted(&self) -> &[f64] {
        &self.0
    }
}

/// `warm` untimed runs of `f`, one sync, then `reps` runs each timed up to a sync after it.
pub fn samples<B: Backend>(device: &B::Device, warm: usize, reps: usize, mut f: impl FnMut()) -> Samples {
    for _ in 0..warm {
        f();
    }
    sync::<B>(device);
    Samples::new(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                sync::<B>(device);
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// Median seconds of `f` over `reps` synchronised runs after `warm` untimed runs (see [`samples`]).
pub fn median<B: Backend>(device: &B::Device, warm: usize, reps: usize, f: impl FnMut()) -> f64 {
    samples::<B>(device, warm, reps, f).median()
}

/// Mean seconds per call over `reps` back-to-back calls with one sync at the end, after `warm` calls:
/// for launch-bound calls, where a sync per call would dominate.
pub fn batched<B: Backend>(device: &B::Device, warm: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warm {
        f();
    }
    sync::<B>(device);
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    sync::<B>(device);
    t.elapsed().as_secs_f64() / reps as f64
}

/// The host's cost of queueing one call of `f` onto an idle device: `batches` times, one call and a
/// sync, then `calls` calls timed without a sync (the host's queueing only), then a sync; the median
/// of the batches' per-call times.
pub fn host_per_call<B: Backend>(device: &B::Device, batches: usize, calls: usize, f: &mut dyn FnMut()) -> f64 {
    Samples::new(
        (0..batches)
            .map(|_| {
                f();
                sync::<B>(device);
                let t = Instant::now();
                for _ in 0..calls {
                    f();
                }
                let s = t.elapsed().as_secs_f64() / calls as f64;
                sync::<B>(device);
                s
            })
            .collect(),
    )
    .median()
}

/// Column alignment of a Markdown table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

#[derive(Debug, Default)]
struct Table {
    section: Option<String>,
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// A benchmark report: Markdown text, plus its tables and notes for JSON.
///
/// [`row`](Self::row) and [`line`](Self::line) print what they add as well (the progress of a run);
/// [`heading`](Self::heading), [`header`](Self::header) and [`text`](Self::text) only add.
#[derive(Debug, Default)]
pub struct Report {
    markdown: String,
    section: Option<String>,
    tables: Vec<Table>,
    notes: Vec<String>,
}

impl Report {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds text (and a newline) to the Markdown only.
    pub fn text(&mut self, text: impl AsRef<str>) {
        self.markdown.push_str(text.as_ref());
        self.markdown.push('\n');
    }

    /// Prints `text` and adds it to the Markdown (and a newline) and to the JSON notes.
    pub fn line(&mut self, text: impl AsRef<str>) {
        let text = text.as_ref();
        println!("{text}");
        self.text(text);
        self.notes.push(text.trim().to_string());
    }

    /// A `### title` heading (a blank line either side); the JSON tables after it carry it as their section.
    pub fn heading(&mut self, title: impl Into<String>) {
        let title = title.into();
        self.text(format!("\n### {title}\n"));
        self.section = Some(title);
    }

    /// Starts a table: its header row and alignment row.
    pub fn header(&mut self, columns: &[(&str, Align)]) {
        let names: Vec<&str> = columns.iter().map(|c| c.0).collect();
        let rule: Vec<&str> = columns.iter().map(|c| if c.1 == Align::Right { "---:" } else { "---" }).collect();
        self.text(format!("| {} |\n|{}|", names.join(" | "), rule.join("|")));
        self.tables.push(Table {
            section: self.section.clone(),
            columns: names.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        });
    }

    /// Prints and adds one row of the current table.
    pub fn row<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) {
        let cells: Vec<String> = cells.into_iter().map(|c| c.to_string()).collect();
        let line = cells.iter().fold("|".to_string(), |l, c| if c.is_empty() { l + " |" } else { l + " " + c + " |" });
        println!("{line}");
        self.text(&line);
        match self.tables.last_mut() {
            Some(t) => t.rows.push(cells),
            None => self.notes.push(line),
        }
    }

    /// The Markdown so far.
    pub fn markdown(&self) -> &str {
        &self.markdown
    }

    /// Appends another report (its Markdown, tables and notes) to this one.
    pub fn append(&mut self, other: Report) {
        self.markdown.push_str(&other.markdown);
        self.tables.extend(other.tables);
        self.notes.extend(other.notes);
        if other.section.is_some() {
            self.section = other.section;
        }
    }

    /// The tables (`section`, `columns`, `rows` of strings as printed) and notes as JSON.
    pub fn json(&self) -> Value {
        let tables: Vec<Value> =
            self.tables.iter().map(|t| json!({ "section": t.section, "columns": t.columns, "rows": t.rows })).collect();
        json!({ "tables": tables, "notes": self.notes })
    }

    /// Writes the Markdown to `markdown` and, when given, the JSON to `json`.
    pub fn save(&self, markdown: Option<&Path>, json: Option<&Path>) -> std::io::Result<()> {
        if let Some(path) = markdown {
            std::fs::write(path, &self.markdown)?;
        }
        if let Some(path) = json {
            std::fs::write(path, serde_json::to_string_pretty(&self.json())? + "\n")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_min() {
        let s = Samples::new(vec![3.0, 1.0, 2.0, 5.0]);
        assert_eq!((s.median(), s.min()), (3.0, 1.0));
        assert_eq!(Samples::new(vec![2.0, 9.0, 1.0]).median(), 2.0);
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn timing_runs_warm_then_reps() {
        let dev = Default::default();
        let mut calls = 0;
        let s = samples::<burn::backend::NdArray>(&dev, 2, 5, || calls += 1);
        assert_eq!((calls, s.sorted().len()), (7, 5));
        let mut calls = 0;
        batched::<burn::backend::NdArray>(&dev, 3, 10, || calls += 1);
        assert_eq!(calls, 13);
        let mut calls = 0;
        host_per_call::<burn::backend::NdArray>(&dev, 5, 20, &mut || calls += 1);
        assert_eq!(calls, 105);
    }

    #[test]
    fn markdown_and_json() {
        let mut r = Report::new();
        r.text("Card: x\n");
        r.heading("Kernels");
        r.header(&[("L", Align::Right), ("dtype", Align::Left)]);
        r.row([1.to_string(), "BF16".into()]);
        r.row(["2", ""]);
        r.line("host per call: 2 µs");
        assert_eq!(
            r.markdown(),
            "Card: x\n\n\n### Kernels\n\n| L | dtype |\n|---:|---|\n| 1 | BF16 |\n| 2 | |\nhost per call: 2 µs\n"
        );
        let j = r.json();
        assert_eq!(j["tables"][0]["section"], "Kernels");
        assert_eq!(j["tables"][0]["rows"][0][1], "BF16");
        assert_eq!(j["notes"][0], "host per call: 2 µs");
    }
}
