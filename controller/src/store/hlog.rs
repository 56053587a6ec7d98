//! `histograms.hlog`: every interval's merged histograms as a standard
//! HdrHistogram interval log (format 1.3, V2 + DEFLATE, base64), one tag
//! per metric, readable by HdrHistogram's own tools (HistogramLogProcessor,
//! the Rust `interval_log` reader). Timestamps are seconds from the step's
//! agreed start (BaseTime is its wall-clock start); latencies are in µs,
//! token counts in tokens. Intervals inside the warmup carry the tag
//! `warmup_<metric>`, so the `<metric>` tags hold exactly the summary's
//! samples. A sweep: one log in each step's folder.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use barrage_common::metrics::Metric;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};

use crate::events::{Consumer, IntervalEvent, OutputError, RunEvent, StepStart};

pub const FILE: &str = "histograms.hlog";

/// The header comment that states the units.
pub const UNITS: &str = "values: latencies in microseconds (µs), token counts in tokens";

/// The tag of a metric's histograms inside the warmup.
pub fn warmup_tag(m: Metric) -> String {
    format!("warmup_{}", m.name())
}

struct Open {
    path: PathBuf,
    w: BufWriter<File>,
    interval_s: f64,
}

#[derive(Default)]
pub struct Hlog {
    file: Option<Open>,
    ser: V2DeflateSerializer,
    written: Vec<PathBuf>,
}

impl Hlog {
    pub fn new() -> Self {
        Self::default()
    }

    fn start(&mut self, s: &StepStart) -> Result<(), OutputError> {
        self.close()?;
        std::fs::create_dir_all(&s.dir).map_err(|e| OutputError::io(&s.dir, e))?;
        let path = s.dir.join(FILE);
        let f = File::create(&path).map_err(|e| OutputError::io(&path, e))?;
        let mut w = BufWriter::new(f);
        let mut b = IntervalLogWriterBuilder::new();
        b.add_comment("[Histogram log format version 1.3]")
            .add_comment(&format!(
                "[barrage run {} step {} \"{}\"; one tag per metric; {UNITS}]",
                s.run_id, s.step, s.name
            ));
        if let Some(t) = wall_clock(&s.started_at) {
            b.with_start_time(t).with_base_time(t);
        }
        b.begin_log_with(&mut w, &mut self.ser)
            .map_err(|e| OutputError::io(&path, e))?;
        writeln!(
            w,
            "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
        )
        .map_err(|e| OutputError::io(&path, e))?;
        self.file = Some(Open {
            path,
            w,
            interval_s: s.interval_s,
        });
        Ok(())
    }

    fn interval(&mut self, iv: &IntervalEvent) -> Result<(), OutputError> {
        let Some(o) = self.file.as_mut() else {
            return Ok(());
        };
        // No header this time: the builder writes none when given none.
        let mut log = IntervalLogWriterBuilder::new()
            .begin_log_with(&mut o.w, &mut self.ser)
            .map_err(|e| OutputError::io(&o.path, e))?;
        let start = Duration::try_from_secs_f64(iv.row.t_s).unwrap_or_default();
        let length = Duration::try_from_secs_f64(o.interval_s).unwrap_or_default();
        for m in Metric::ALL {
            let s = iv.metrics.get(m);
            if s.is_empty() {
                continue;
            }
            let name = if iv.row.warmup {
                warmup_tag(m)
            } else {
                m.name().to_owned()
            };
            log.write_histogram(&s.hist, start, length, Tag::new(&name))
                .map_err(|e| OutputError::Other(format!("{}: {e}", o.path.display())))?;
        }
        o.w.flush().map_err(|e| OutputError::io(&o.path, e))
    }

    fn close(&mut self) -> Result<(), OutputError> {
        if let Some(mut o) = self.file.take() {
            o.w.flush().map_err(|e| OutputError::io(&o.path, e))?;
            self.written.push(o.path);
        }
        Ok(())
    }
}

/// RFC 3339 → wall clock (None when it does not parse: no time headers).
fn wall_clock(rfc3339: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(SystemTime::from)
}

impl Consumer for Hlog {
    fn name(&self) -> &'static str {
        "histograms.hlog"
    }

    fn wants_requests(&self) -> bool {
        false
    }

    fn event(&mut self, ev: &RunEvent) -> Result<(), OutputError> {
        match ev {
            RunEvent::StepStarted(s) => self.start(s),
            RunEvent::Interval(iv) => self.interval(iv),
            RunEvent::StepFinished(_) => self.close(),
            _ => Ok(()),
        }
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, OutputError> {
        self.close()?;
        Ok(std::mem::take(&mut self.written))
    }
}
