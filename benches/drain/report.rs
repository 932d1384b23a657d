//! The results table and the small statistics behind it.

use std::{fmt, time::Duration};

/// Whether a figure meets the goal the issue set for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The goal is met.
    Met,
    /// The goal is missed (the report says by how much).
    Missed,
    /// The figure cannot be told apart from machine noise.
    Noise,
    /// A figure for information; no goal applies.
    Info,
    /// Could not be measured here (a tool is missing).
    Unavailable,
}

impl Verdict {
    /// `Met` when `ok`, otherwise `Missed`.
    pub(crate) fn from_goal(ok: bool) -> Self {
        if ok {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Met => "yes",
            Verdict::Missed => "**no**",
            Verdict::Noise => "noise",
            Verdict::Info => "",
            Verdict::Unavailable => "n/a",
        })
    }
}

/// One line of the table.
#[derive(Debug)]
pub(crate) struct Row {
    /// What is measured.
    pub(crate) measure: String,
    /// The figure for plain axum, or the bare service.
    pub(crate) baseline: String,
    /// The figure with tower-drain.
    pub(crate) drain: String,
    /// How the two compare (ratio, difference).
    pub(crate) change: String,
    /// The goal from the issue, if any.
    pub(crate) goal: &'static str,
    /// Whether the goal is met.
    pub(crate) verdict: Verdict,
}

/// The table that `cargo bench --bench drain` prints at the end.
#[derive(Debug, Default)]
pub(crate) struct Table {
    sections: Vec<(&'static str, Vec<Row>)>,
}

impl Table {
    /// Starts a new section; later rows go under `title`.
    pub(crate) fn section(&mut self, title: &'static str) {
        self.sections.push((title, Vec::new()));
    }

    /// Adds a row to the current section.
    pub(crate) fn row(&mut self, row: Row) {
        eprintln!(
            "  {}: {} | {} | {} {}",
            row.measure, row.baseline, row.drain, row.change, row.verdict
        );
        self.sections
            .last_mut()
            .expect("a section is started before its rows")
            .1
            .push(row);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (title, rows) in &self.sections {
            writeln!(f, "\n### {title}\n")?;
            writeln!(
                f,
                "| measure | plain axum / bare | tower-drain | change | goal | met |"
            )?;
            writeln!(f, "|---|---:|---:|---:|---|---|")?;
            for row in rows {
                writeln!(
                    f,
                    "| {} | {} | {} | {} | {} | {} |",
                    row.measure, row.baseline, row.drain, row.change, row.goal, row.verdict
                )?;
            }
        }
        Ok(())
    }
}

/// The median of `values` (which it sorts); 0 when empty.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The smallest and largest of `values`.
pub(crate) fn range(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// The `p`-th percentile (0–100) of `sorted`, by the nearest rank.
pub(crate) fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A duration in the unit that reads best: ns, µs, ms or s.
pub(crate) fn duration(d: Duration) -> String {
    let nanos = d.as_secs_f64() * 1e9;
    if nanos < 1e3 {
        format!("{nanos:.1} ns")
    } else if nanos < 1e6 {
        format!("{:.1} µs", nanos / 1e3)
    } else if nanos < 1e9 {
        format!("{:.2} ms", nanos / 1e6)
    } else {
        format!("{:.2} s", nanos / 1e9)
    }
}

/// Seconds that may be negative, in the unit that reads best.
pub(crate) fn seconds(seconds: f64) -> String {
    let magnitude = duration(Duration::from_secs_f64(seconds.abs()));
    if seconds < 0.0 {
        format!("-{magnitude}")
    } else {
        magnitude
    }
}

/// `later - earlier` with its sign, as `+1.2 ms` or `-3.0 µs`.
pub(crate) fn signed(later: Duration, earlier: Duration) -> String {
    let difference = seconds(later.as_secs_f64() - earlier.as_secs_f64());
    if later >= earlier {
        format!("+{difference}")
    } else {
        difference
    }
}

/// `part / whole - 1` as a signed percentage.
pub(crate) fn percent_change(part: f64, whole: f64) -> String {
    format!("{:+.2}%", (part / whole - 1.0) * 100.0)
}
