//! What the controller watches beside the load: GPU exporter streams and
//! Prometheus endpoints of the model server, put on the run's timeline with
//! the same round-trip clock alignment as agents. A monitor that fails or
//! disconnects leaves a gap and a note; it never fails the load test.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use barrage_common::auth::Token;
use barrage_common::clock::{ClockOffset, mono_now_ns};
use barrage_common::monitor::MonitorSection;
use barrage_common::tls::ClientTls;
use barrage_gpu_exporter::ExporterClient;
use barrage_gpu_exporter::summary::{ExporterSummary, Window, summarize};
use barrage_proto::exporter::v1::Sample;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::prometheus::{self, Aggregation, Exposition};

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct ExporterWatch {
    addr: String,
    offset: ClockOffset,
    samples: Shared<Vec<Sample>>,
    /// Why the stream ended early, if it did.
    task: JoinHandle<Option<String>>,
}

/// One scraped metric on the controller's clock: its series reduced to one
/// value by type (see `prometheus`).
#[derive(Debug, Clone, Copy)]
struct Point {
    at_ns: u64,
    value: f64,
    series: usize,
    how: Aggregation,
}

pub struct Monitors {
    exporters: Vec<ExporterWatch>,
    scraped: Shared<BTreeMap<String, Vec<Point>>>,
    scrape_errors: Shared<Vec<String>>,
    /// Named metrics, to say which never appeared.
    scrape_names: Vec<String>,
    /// Per endpoint, a note on lines that could not be read (latest scrape).
    scrape_skipped: Shared<BTreeMap<String, String>>,
    scraper: Option<JoinHandle<()>>,
    stop: CancellationToken,
    /// Problems at start (unreachable exporter, wrong token).
    notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExporterReport {
    pub addr: String,
    pub clock_uncertainty_ms: f64,
    /// The stream ended before the run did (a gap from then on).
    pub disconnected: Option<String>,
    pub summary: ExporterSummary,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeriesStat {
    pub avg: f64,
    pub max: f64,
    pub last: f64,
    pub samples: u64,
    /// Most label sets (across every endpoint) in one scrape.
    pub series: u64,
    /// How those series became one value: "sum" (counters) or "mean" (gauges).
    pub aggregation: Aggregation,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct MonitorReport {
    pub exporters: Vec<ExporterReport>,
    /// Joules all GPUs used during the run (energy counter, else power integral).
    pub gpu_energy_j: Option<f64>,
    /// Output tokens of completed requests per joule of GPU energy.
    pub output_tokens_per_joule: Option<f64>,
    /// Scraped server metrics over the run.
    pub server_metrics: BTreeMap<String, SeriesStat>,
    pub notes: Vec<String>,
}

/// Per-interval averages for the timeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IntervalMonitor {
    pub gpu_util_pct: Option<f64>,
    pub gpu_mem_pct: Option<f64>,
    pub gpu_power_w: Option<f64>,
    pub server: BTreeMap<String, f64>,
}

impl Monitors {
    /// Connects everything before the start barrier.
    pub async fn start(
        section: &MonitorSection,
        token: Option<Token>,
        tls: Option<&ClientTls>,
    ) -> Self {
        let stop = CancellationToken::new();
        let mut notes = Vec::new();
        let mut exporters = Vec::new();
        for addr in &section.gpu_exporters {
            match connect_exporter(addr, token.clone(), tls, stop.clone()).await {
                Ok(w) => exporters.push(w),
                Err(e) => notes.push(format!("gpu exporter {addr}: {e}; no GPU samples from it")),
            }
        }
        let scraped: Shared<BTreeMap<String, Vec<Point>>> = Arc::default();
        let scrape_errors: Shared<Vec<String>> = Arc::default();
        let scrape_skipped: Shared<BTreeMap<String, String>> = Arc::default();
        let scraper = (!section.prometheus.is_empty()).then(|| {
            tokio::spawn(scrape_loop(
                section.prometheus.clone(),
                section.prometheus_metrics.clone(),
                section.scrape_interval,
                scraped.clone(),
                scrape_errors.clone(),
                scrape_skipped.clone(),
                stop.clone(),
            ))
        });
        Self {
            exporters,
            scraped,
            scrape_errors,
            scrape_names: section.prometheus_metrics.clone(),
            scrape_skipped,
            scraper,
            stop,
            notes,
        }
    }

    /// The latest GPU reading of every exporter (averaged over all GPUs),
    /// for live views; the timeline's per-interval averages come at the end.
    pub fn live(&self) -> Option<IntervalMonitor> {
        let mut acc = (0.0, 0.0, 0.0, 0u32);
        for w in &self.exporters {
            let samples = lock(&w.samples);
            let Some(last) = samples.last() else {
                continue;
            };
            for g in &last.gpus {
                acc.0 += f64::from(g.utilization_gpu_pct.unwrap_or(0));
                if let (Some(u), Some(t)) = (g.memory_used_bytes, g.memory_total_bytes)
                    && t > 0
                {
                    acc.1 += 100.0 * u as f64 / t as f64;
                }
                acc.2 += f64::from(g.power_mw.unwrap_or(0)) / 1000.0;
                acc.3 += 1;
            }
        }
        (acc.3 > 0).then(|| {
            let n = f64::from(acc.3);
            IntervalMonitor {
                gpu_util_pct: Some(acc.0 / n),
                gpu_mem_pct: Some(acc.1 / n),
                gpu_power_w: Some(acc.2 / n),
                server: BTreeMap::new(),
            }
        })
    }

    pub fn is_empty(&self) -> bool {
        self.exporters.is_empty() && self.scraper.is_none() && self.notes.is_empty()
    }

    /// Stops watching and summarises the window [start, end] (controller clock).
    pub async fn finish(
        self,
        start_ns: u64,
        end_ns: u64,
        interval: Duration,
        intervals: usize,
        output_tokens: u64,
    ) -> (MonitorReport, Vec<IntervalMonitor>) {
        self.stop.cancel();
        let mut report = MonitorReport {
            notes: self.notes,
            ..MonitorReport::default()
        };
        let mut rows = vec![IntervalMonitor::default(); intervals];
        let slot = |at_local: u64| -> Option<usize> {
            let k = at_local.checked_sub(start_ns)? / interval.as_nanos().max(1) as u64;
            usize::try_from(k).ok().filter(|k| *k < intervals)
        };
        let mut gpu_acc: Vec<(f64, f64, f64, u32)> = vec![(0.0, 0.0, 0.0, 0); intervals];
        let mut energy = None::<f64>;
        for w in self.exporters {
            let disconnected = tokio::time::timeout(Duration::from_secs(2), w.task)
                .await
                .ok()
                .and_then(|r| r.ok())
                .flatten();
            let samples = std::mem::take(&mut *lock(&w.samples));
            let window = Window::from_local(&w.offset, start_ns, end_ns);
            let summary = summarize(&samples, window);
            for s in samples
                .iter()
                .filter(|s| window.contains(s.exporter_mono_ns))
            {
                let Some(k) = slot(w.offset.to_local(s.exporter_mono_ns)) else {
                    continue;
                };
                for g in &s.gpus {
                    let acc = &mut gpu_acc[k];
                    acc.0 += f64::from(g.utilization_gpu_pct.unwrap_or(0));
                    if let (Some(u), Some(t)) = (g.memory_used_bytes, g.memory_total_bytes)
                        && t > 0
                    {
                        acc.1 += 100.0 * u as f64 / t as f64;
                    }
                    acc.2 += f64::from(g.power_mw.unwrap_or(0)) / 1000.0;
                    acc.3 += 1;
                }
            }
            let joules: Option<f64> = summary.gpus.iter().map(|g| g.energy_j).sum();
            if let Some(j) = joules {
                energy = Some(energy.unwrap_or(0.0) + j);
            }
            if let Some(why) = &disconnected {
                report.notes.push(format!(
                    "gpu exporter {}: disconnected during the run ({why}); its samples stop there",
                    w.addr
                ));
            }
            report.exporters.push(ExporterReport {
                addr: w.addr,
                clock_uncertainty_ms: w.offset.uncertainty().as_secs_f64() * 1000.0,
                disconnected,
                summary,
            });
        }
        for (row, (u, m, p, n)) in rows.iter_mut().zip(gpu_acc) {
            if n > 0 {
                let n = f64::from(n);
                (row.gpu_util_pct, row.gpu_mem_pct, row.gpu_power_w) =
                    (Some(u / n), Some(m / n), Some(p / n));
            }
        }
        report.gpu_energy_j = energy;
        report.output_tokens_per_joule = energy
            .filter(|j| *j > 0.0)
            .map(|j| output_tokens as f64 / j);
        let scraping = self.scraper.is_some();
        if let Some(task) = self.scraper {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        let scraped = std::mem::take(&mut *lock(&self.scraped));
        report
            .notes
            .extend(std::mem::take(&mut *lock(&self.scrape_skipped)).into_values());
        let missing: Vec<&str> = self
            .scrape_names
            .iter()
            .filter(|n| !scraped.contains_key(*n))
            .map(String::as_str)
            .collect();
        if scraping && !missing.is_empty() {
            report.notes.push(format!(
                "prometheus: {} never appeared in a scrape",
                missing.join(", ")
            ));
        }
        for (name, points) in scraped {
            let inside: Vec<Point> = points
                .into_iter()
                .filter(|p| (start_ns..=end_ns).contains(&p.at_ns))
                .collect();
            let Some(stat) = series_stat(&inside) else {
                continue;
            };
            report.server_metrics.insert(name.clone(), stat);
            let mut per: BTreeMap<usize, (f64, u32)> = BTreeMap::new();
            for p in &inside {
                if let Some(k) = slot(p.at_ns) {
                    let e = per.entry(k).or_default();
                    e.0 += p.value;
                    e.1 += 1;
                }
            }
            for (k, (v, n)) in per {
                rows[k].server.insert(name.clone(), v / f64::from(n));
            }
        }
        let errors = std::mem::take(&mut *lock(&self.scrape_errors));
        if let Some(first) = errors.first() {
            report
                .notes
                .push(format!("{} scrapes failed (first: {first})", errors.len()));
        }
        (report, rows)
    }
}

/// Average, max and last of one metric's points over the run.
fn series_stat(points: &[Point]) -> Option<SeriesStat> {
    let last = points.last()?;
    let sum: f64 = points.iter().map(|p| p.value).sum();
    Some(SeriesStat {
        avg: sum / points.len() as f64,
        max: points.iter().map(|p| p.value).fold(f64::MIN, f64::max),
        last: last.value,
        samples: points.len() as u64,
        series: points.iter().map(|p| p.series as u64).max().unwrap_or(0),
        aggregation: last.how,
    })
}

async fn connect_exporter(
    addr: &str,
    token: Option<Token>,
    tls: Option<&ClientTls>,
    stop: CancellationToken,
) -> Result<ExporterWatch, String> {
    let mut client = ExporterClient::connect_with(addr, token, tls)
        .await
        .map_err(|e| e.to_string())?;
    let offset = client.clock_offset().await.map_err(|e| e.to_string())?;
    let samples: Shared<Vec<Sample>> = Arc::default();
    let sink = samples.clone();
    let mut stream = Box::pin(client.watch());
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                item = stream.next() => match item {
                    Some(Ok(s)) => lock(&sink).push(s),
                    Some(Err(e)) => return Some(e.to_string()),
                    None => return Some("stream ended".to_owned()),
                },
            }
        }
    });
    Ok(ExporterWatch {
        addr: addr.to_owned(),
        offset,
        samples,
        task,
    })
}

async fn scrape_loop(
    urls: Vec<String>,
    names: Vec<String>,
    every: Duration,
    out: Shared<BTreeMap<String, Vec<Point>>>,
    errors: Shared<Vec<String>>,
    skipped: Shared<BTreeMap<String, String>>,
    stop: CancellationToken,
) {
    let http = match reqwest::Client::builder()
        .timeout(every.max(Duration::from_secs(1)))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            lock(&errors).push(e.to_string());
            return;
        }
    };
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let at_ns = mono_now_ns();
        let mut page = Exposition::default();
        for url in &urls {
            match scrape_one(&http, url).await {
                Ok(p) => {
                    if let Some((line, why)) = p.malformed.first() {
                        let note = format!(
                            "prometheus {url}: {} lines not in the exposition format were skipped (line {line}: {why})",
                            p.malformed.len()
                        );
                        lock(&skipped).insert(url.clone(), note);
                    }
                    absorb(&mut page, p, url);
                }
                Err(e) => lock(&errors).push(format!("{url}: {e}")),
            }
        }
        let mut map = lock(&out);
        for (name, r) in page.reduce(&names) {
            map.entry(name).or_default().push(Point {
                at_ns,
                value: r.value,
                series: r.series,
                how: r.how,
            });
        }
    }
}

async fn scrape_one(http: &reqwest::Client, url: &str) -> Result<Exposition, reqwest::Error> {
    let text = http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(prometheus::parse(&text))
}

/// Adds one endpoint's page to the tick's; its series stay apart from the
/// same label sets on other endpoints.
fn absorb(into: &mut Exposition, page: Exposition, url: &str) {
    into.types.extend(page.types);
    into.samples.extend(page.samples.into_iter().map(|mut s| {
        s.labels.push(("__endpoint__".to_owned(), url.to_owned()));
        s
    }));
}
