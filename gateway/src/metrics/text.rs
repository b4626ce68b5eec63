//! The Prometheus text exposition format, version 0.0.4: one `# HELP` and one `# TYPE` line per
//! family, then its samples; label values escaped; a series given twice is written once.
//!
//! Why by hand: the format is a few lines of rules, and a client library would bring a registry of
//! its own next to the state the gateway already has (the registry, health, jobs), which is read
//! fresh on each scrape instead.

use std::collections::HashSet;
use std::fmt::Write;

/// The `Content-Type` of the format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a family's samples mean to Prometheus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Gauge,
    Counter,
    Histogram,
}

impl Type {
    fn as_str(self) -> &'static str {
        match self {
            Type::Gauge => "gauge",
            Type::Counter => "counter",
            Type::Histogram => "histogram",
        }
    }
}

/// A sample's value: integers are written exactly (byte counters beyond 2^53 stay exact).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(v)
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(v.into())
    }
}
impl From<usize> for Value {
    fn from(v: usize) -> Value {
        Value::Int(v as u64)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(v.into())
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}
impl From<f32> for Value {
    /// Through the shortest decimal of the `f32` (31.2, not 31.200000762939453).
    fn from(v: f32) -> Value {
        Value::Float(v.to_string().parse().unwrap_or(f64::NAN))
    }
}

/// The text of a value: `NaN`, `+Inf`, `-Inf`, or a plain decimal.
fn value_text(v: Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::Float(f) if f.is_nan() => "NaN".into(),
        Value::Float(f) if f == f64::INFINITY => "+Inf".into(),
        Value::Float(f) if f == f64::NEG_INFINITY => "-Inf".into(),
        Value::Float(f) => f.to_string(),
    }
}

/// A label value as the format wants it between double quotes: `\`, `"` and newlines escaped.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A `# HELP` text: `\` and newlines escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Writes families into one exposition text.
#[derive(Default)]
pub struct Writer {
    out: String,
    families: HashSet<&'static str>,
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    /// Starts family `name` (its HELP and TYPE lines). A name started twice is a bug in the caller
    /// (it would make the whole scrape invalid): debug builds panic, release builds write the
    /// samples under the first header's family anyway, which Prometheus reads as one family.
    pub fn family(&mut self, name: &'static str, kind: Type, help: &str) -> Family<'_> {
        let new = self.families.insert(name);
        debug_assert!(new, "metric family {name} written twice");
        debug_assert!(valid_name(name), "bad metric name {name}");
        if new {
            let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
            let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        }
        Family {
            out: &mut self.out,
            name,
            seen: HashSet::new(),
        }
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.out
    }
}

/// The samples of one family.
pub struct Family<'w> {
    out: &'w mut String,
    name: &'static str,
    /// Label sets written, so a series given twice (two sensors of one name) is written once.
    seen: HashSet<String>,
}

impl Family<'_> {
    /// One sample of the family's own name.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) {
        let set = label_set(labels, None);
        if !self.seen.insert(set.clone()) {
            log::debug!(
                "metrics: series {}{set} given twice; kept the first",
                self.name
            );
            return;
        }
        let _ = writeln!(self.out, "{}{set} {}", self.name, value_text(value.into()));
    }

    /// A histogram's series: cumulative `buckets` as (upper bound, count) in increasing order, then
    /// `+Inf` (= `count`), `_sum` and `_count`.
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        let set = label_set(labels, None);
        if !self.seen.insert(set) {
            return;
        }
        let name = self.name;
        for &(le, n) in buckets {
            let le = value_text(Value::Float(le));
            let set = label_set(labels, Some(&le));
            let _ = writeln!(self.out, "{name}_bucket{set} {n}");
        }
        let set = label_set(labels, Some("+Inf"));
        let _ = writeln!(self.out, "{name}_bucket{set} {count}");
        let set = label_set(labels, None);
        let _ = writeln!(
            self.out,
            "{name}_sum{set} {}",
            value_text(Value::Float(sum))
        );
        let _ = writeln!(self.out, "{name}_count{set} {count}");
    }
}

/// `{a="x",b="y"}` (empty when there are no labels), with `le` last when given.
fn label_set(labels: &[(&str, &str)], le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut out = String::from("{");
    let pairs = labels.iter().copied().chain(le.map(|le| ("le", le)));
    for (i, (k, v)) in pairs.enumerate() {
        debug_assert!(valid_name(k) && !k.contains(':'), "bad label name {k}");
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
    }
    out.push('}');
    out
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("two\nlines"), "two\\nlines");
        assert_eq!(escape_label("/mnt/ünï côde"), "/mnt/ünï côde");
        let mut w = Writer::new();
        w.family("x_bytes", Type::Gauge, "help with \\ and\nnewline")
            .sample(&[("mountpoint", "/a\"b")], 1u64);
        let text = w.finish();
        assert!(
            text.contains("# HELP x_bytes help with \\\\ and\\nnewline\n"),
            "{text}"
        );
        assert!(
            text.contains("x_bytes{mountpoint=\"/a\\\"b\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn values_are_written_as_the_format_wants() {
        assert_eq!(value_text(Value::Float(f64::NAN)), "NaN");
        assert_eq!(value_text(Value::Float(f64::INFINITY)), "+Inf");
        assert_eq!(value_text(Value::Float(f64::NEG_INFINITY)), "-Inf");
        assert_eq!(value_text(Value::Float(0.25)), "0.25");
        assert_eq!(value_text(31.2f32.into()), "31.2");
        assert_eq!(value_text(u64::MAX.into()), "18446744073709551615");
    }

    #[test]
    fn a_series_given_twice_is_written_once() {
        let mut w = Writer::new();
        let mut f = w.family("t_celsius", Type::Gauge, "t");
        f.sample(&[("sensor", "a")], 1u64);
        f.sample(&[("sensor", "a")], 2u64);
        f.sample(&[("sensor", "b")], 3u64);
        let text = w.finish();
        assert_eq!(text.matches("t_celsius{sensor=\"a\"}").count(), 1, "{text}");
        assert!(text.contains("t_celsius{sensor=\"a\"} 1\n"));
        assert!(text.contains("t_celsius{sensor=\"b\"} 3\n"));
    }

    #[test]
    fn histograms_end_with_inf_sum_and_count() {
        let mut w = Writer::new();
        w.family("lat_seconds", Type::Histogram, "latency")
            .histogram(&[], &[(0.001, 1), (0.5, 3)], 0.75, 4);
        let text = w.finish();
        let want = "# HELP lat_seconds latency\n# TYPE lat_seconds histogram\n\
                    lat_seconds_bucket{le=\"0.001\"} 1\nlat_seconds_bucket{le=\"0.5\"} 3\n\
                    lat_seconds_bucket{le=\"+Inf\"} 4\nlat_seconds_sum 0.75\nlat_seconds_count 4\n";
        assert_eq!(text, want);
    }
}
