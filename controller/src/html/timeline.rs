//! The time-series charts of a step, from its summary's `timeline` (one row
//! per merged interval; the warmup is shaded, not dropped).

use serde_json::{Value, json};

use super::get_f;
use super::page::{Page, series, spec};
use super::step::unobservable;

/// Rows, the interval length and the warmup band of a timeline.
struct Rows<'a> {
    rows: Vec<&'a Value>,
    interval_s: f64,
}

impl<'a> Rows<'a> {
    fn of(s: &'a Value) -> Self {
        let rows: Vec<&Value> = s["timeline"].as_array().into_iter().flatten().collect();
        let ts: Vec<f64> = rows.iter().filter_map(|r| get_f(r, "t_s")).collect();
        // The smallest step between rows (an interval nobody reported leaves
        // a bigger one); one row: the run's own length.
        let interval_s = ts
            .windows(2)
            .map(|w| w[1] - w[0])
            .filter(|d| *d > 0.0)
            .reduce(f64::min)
            .or_else(|| get_f(s, "duration_s").filter(|d| *d > 0.0))
            .unwrap_or(1.0);
        Self { rows, interval_s }
    }

    /// One series: `f` of each row, at the row's time.
    fn series(&self, name: &str, f: impl Fn(&Value) -> Option<f64>) -> Value {
        series(
            name,
            self.rows
                .iter()
                .filter_map(|r| Some((get_f(r, "t_s")?, f(r))))
                .collect(),
        )
    }

    fn any(&self, f: impl Fn(&Value) -> Option<f64>) -> bool {
        self.rows.iter().any(|r| f(r).is_some())
    }

    fn rate(&self, key: &'static str) -> impl Fn(&Value) -> Option<f64> + '_ {
        move |r: &Value| get_f(r, key).map(|n| n / self.interval_s)
    }

    fn bands(&self) -> Value {
        let warm: Vec<f64> = self
            .rows
            .iter()
            .filter(|r| r["warmup"].as_bool() == Some(true))
            .filter_map(|r| get_f(r, "t_s"))
            .collect();
        match (warm.first(), warm.last()) {
            (Some(a), Some(b)) => {
                json!([{ "from": a, "to": b + self.interval_s, "label": "warmup (not in the totals)" }])
            }
            _ => json!([]),
        }
    }
}

fn chart(p: &mut Page, t: &Rows, title: &str, y: &str, unit: &str, series: Vec<Value>) {
    let mut sp = spec("time (s)", "linear", y, unit, series);
    sp["bands"] = t.bands();
    // Every time chart spans the whole run, whatever its own data covers.
    let ts = t.rows.iter().filter_map(|r| get_f(r, "t_s"));
    sp["x"]["min"] = json!(ts.clone().reduce(f64::min));
    sp["x"]["max"] = json!(ts.reduce(f64::max).map(|x| x + t.interval_s));
    p.chart(title, sp);
}

/// Every time-series chart of the step; a metric the run could not observe
/// gets a "–" figure, never a line of zeros.
pub fn charts(p: &mut Page, s: &Value) {
    let t = Rows::of(s);
    if t.rows.is_empty() {
        p.push("<p>No interval was recorded.</p>");
        return;
    }
    let what = if t.rows.len() > 1 {
        format!(
            "One point per {} s interval, at its start.",
            super::page::num(Some(t.interval_s))
        )
    } else {
        "The run fit in one interval: one point, at its start.".to_owned()
    };
    p.push(&format!(
        "<p class=\"meta\">{what}</p><div class=\"charts\">"
    ));
    let mut req = vec![t.series("ok / s", t.rate("requests_ok"))];
    if t.rows
        .iter()
        .any(|r| get_f(r, "requests_failed").unwrap_or(0.0) > 0.0)
    {
        req.push(t.series("failed / s", t.rate("requests_failed")));
    }
    chart(p, &t, "Requests per second", "req/s", "req/s", req);
    chart(
        p,
        &t,
        "Output tokens per second",
        "tok/s",
        "tok/s",
        vec![t.series("output tok/s", t.rate("output_tokens"))],
    );
    chart(
        p,
        &t,
        "Requests in flight",
        "requests",
        "",
        vec![t.series("in flight", |r| get_f(r, "in_flight"))],
    );
    latency(p, &t, s, "ttft", "TTFT");
    latency(p, &t, s, "itl", "ITL");
    latency(p, &t, s, "e2e", "E2E");
    if t.rows
        .iter()
        .any(|r| get_f(r, "requests_failed").unwrap_or(0.0) > 0.0)
    {
        chart(
            p,
            &t,
            "Errors per interval",
            "failed requests",
            "",
            vec![t.series("failed", |r| get_f(r, "requests_failed"))],
        );
    }
    chart(
        p,
        &t,
        "Load generator",
        "%",
        "%",
        vec![t.series("max agent CPU %", |r| get_f(r, "max_agent_cpu_percent"))],
    );
    chart(
        p,
        &t,
        "Agent lag: runtime wake-up (max), reads after arrival (p99)",
        "ms",
        "ms",
        vec![
            t.series("max scheduler lag", |r| get_f(r, "max_scheduler_lag_ms")),
            t.series("read lag p99", |r| get_f(r, "read_lag_p99_ms")),
        ],
    );
    monitored(p, &t);
    p.push("</div>");
}

fn latency(p: &mut Page, t: &Rows, s: &Value, metric: &str, label: &str) {
    let title = if metric == "ttft" && unobservable(s, "itl") {
        "TTFT (= e2e: not streamed) p50 / p99 (ms)".to_owned()
    } else {
        format!("{label} p50 / p99 (ms)")
    };
    if unobservable(s, metric) {
        p.no_chart(&title, "– not observable: responses were not streamed");
        return;
    }
    let (k50, k99) = (format!("{metric}_p50_ms"), format!("{metric}_p99_ms"));
    if !t.any(|r| get_f(r, &k50)) {
        p.no_chart(&title, "no samples in this run");
        return;
    }
    let s50 = t.series("p50", |r| get_f(r, &k50));
    let mut s99 = t.series("p99", |r| get_f(r, &k99));
    s99["dashed"] = json!(true);
    chart(p, t, &title, "ms", "ms", vec![s50, s99]);
}

/// GPU and scraped server metrics, when the run monitored them.
fn monitored(p: &mut Page, t: &Rows) {
    for (key, title, unit) in [
        ("gpu_util_pct", "GPU utilisation", "%"),
        ("gpu_mem_pct", "GPU memory used", "%"),
        ("gpu_power_w", "GPU power", "W"),
    ] {
        if t.any(|r| get_f(r, key)) {
            chart(
                p,
                t,
                &format!("{title} ({unit})"),
                unit,
                unit,
                vec![t.series(title, |r| get_f(r, key))],
            );
        }
    }
    let mut names: Vec<String> = t
        .rows
        .iter()
        .flat_map(|r| {
            r["server"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.clone())
        })
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        chart(
            p,
            t,
            &format!("Server: {name}"),
            "value",
            "",
            vec![t.series(&name, |r| get_f(&r["server"], &name))],
        );
    }
}
