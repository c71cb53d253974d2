//! Results: latency histograms, text and JSON lines, SVG percentile plots.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Report {
    pub label: String,
    pub records: u64,
    pub errors: u64,
    pub secs: f64,
    pub bytes_per_record: u64,
    pub hist: Histogram<u64>,
}

/// A histogram of microseconds, 1 µs to 60 s, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    hist_with_digits(3)
}

/// The same with `digits` significant digits.
pub fn hist_with_digits(digits: u8) -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 60_000_000, digits) {
        Ok(h) => h,
        Err(e) => panic!("histogram bounds: {e}"),
    }
}

impl Report {
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.secs
    }
    pub fn mb_per_sec(&self) -> f64 {
        self.records as f64 * self.bytes_per_record as f64 / self.secs / 1e6
    }
    pub fn q(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q)
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "label": self.label,
            "records": self.records,
            "errors": self.errors,
            "seconds": self.secs,
            "records_per_sec": self.records_per_sec(),
            "mb_per_sec": self.mb_per_sec(),
            "p50_us": self.q(0.5),
            "p90_us": self.q(0.9),
            "p99_us": self.q(0.99),
            "p999_us": self.q(0.999),
            "max_us": self.hist.max(),
        })
    }
    pub fn line(&self) -> String {
        format!(
            "{:<44} {:>10.0} rec/s {:>8.1} MB/s  p50 {:>6} p90 {:>6} p99 {:>6} p99.9 {:>6} max {:>7} us{}",
            self.label,
            self.records_per_sec(),
            self.mb_per_sec(),
            self.q(0.5),
            self.q(0.9),
            self.q(0.99),
            self.q(0.999),
            self.hist.max(),
            if self.errors > 0 { format!("  errors {}", self.errors) } else { String::new() }
        )
    }
}

/// Prints reports as text lines or JSON objects.
pub fn print(reports: &[Report], json: bool) {
    for r in reports {
        if json {
            println!("{}", r.json());
        } else {
            println!("{}", r.line());
        }
    }
}

const COLORS: [&str; 12] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22",
    "#000000", "#aec7e8",
];

/// Writes the latency percentile curves of `reports` to an SVG file: x is the
/// percentile on a "nines" scale (0, 90, 99, 99.9, …), y the latency in µs on
/// a log scale.
pub fn plot(path: &std::path::Path, title: &str, reports: &[Report]) -> std::io::Result<()> {
    let (w, h, left, right, top, bottom) = (1040.0, 560.0, 80.0, 400.0, 40.0, 50.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let max_nines = 5.0f64; // up to 99.999%
    let ymax = reports.iter().map(|r| r.hist.max()).max().unwrap_or(1).max(10) as f64;
    let ymin = reports.iter().map(|r| r.hist.min()).min().unwrap_or(1).max(1) as f64;
    let (ly0, ly1) = (ymin.log10().floor(), ymax.log10().ceil().max(ymin.log10().floor() + 1.0));
    let x = |nines: f64| left + pw * (nines / max_nines);
    let y = |us: f64| top + ph * (1.0 - (us.max(1.0).log10() - ly0) / (ly1 - ly0));
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>
"#,
        left + pw / 2.0,
        escape(title)
    );
    // grid and axes
    for (n, label) in [(0.0, "0%"), (1.0, "90%"), (2.0, "99%"), (3.0, "99.9%"), (4.0, "99.99%"), (5.0, "99.999%")] {
        let _ = writeln!(
            s,
            r##"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#ddd"/><text x="{0}" y="{3}" text-anchor="middle">{4}</text>"##,
            x(n),
            top,
            top + ph,
            top + ph + 18.0,
            label
        );
    }
    let mut e = ly0;
    while e <= ly1 {
        let us = 10f64.powf(e);
        let label = if us >= 1000.0 { format!("{} ms", us / 1000.0) } else { format!("{us} µs") };
        let _ = writeln!(
            s,
            r##"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="#ddd"/><text x="{3}" y="{4}" text-anchor="end">{5}</text>"##,
            left,
            y(us),
            left + pw,
            left - 6.0,
            y(us) + 4.0,
            label
        );
        e += 1.0;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/><text x="{}" y="{}" text-anchor="middle">percentile</text>"##,
        left + pw / 2.0,
        h - 8.0
    );
    for (i, r) in reports.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut pts = String::new();
        let steps = 200;
        for k in 0..=steps {
            let nines = max_nines * k as f64 / steps as f64;
            let q = 1.0 - 10f64.powf(-nines);
            let v = r.hist.value_at_quantile(q.min(0.99999)) as f64;
            let _ = write!(pts, "{:.1},{:.1} ", x(nines), y(v));
        }
        let _ = writeln!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>"#);
        let ly = top + 16.0 + 34.0 * i as f64;
        let _ = writeln!(
            s,
            r##"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="{color}" stroke-width="3"/><text x="{3}" y="{4}">{5}</text><text x="{3}" y="{6}" fill="#555">p50 {7} µs, p99 {8} µs, {9:.0} rec/s</text>"##,
            left + pw + 12.0,
            ly,
            left + pw + 32.0,
            left + pw + 38.0,
            ly + 4.0,
            escape(&truncate(&r.label, 40)),
            ly + 18.0,
            r.q(0.5),
            r.q(0.99),
            r.records_per_sec()
        );
    }
    s.push_str("</svg>\n");
    std::fs::write(path, s)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
