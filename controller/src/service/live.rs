//! Live updates of runs: a consumer per run turns its events into
//! Server-Sent Events, broadcast to whoever watches, with the latest
//! progress kept for `GET /api/runs/{id}`. A watcher that connects late (or
//! reloads) first gets the run's history from its results.sqlite, then the
//! live events it did not get from the history (docs/service.md).

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::response::sse::Event;
use futures::Stream;
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::events::{Consumer, OutputError, RunEvent};
use crate::store::verdict_name;

/// Live events a slow watcher may lag behind before it misses some.
const CHANNEL: usize = 1024;

/// The latest events kept per run: the store's consumer runs on its own
/// thread and may not have written what the live view already sent; a
/// watcher joining then gets these too (deduplicated), so no event falls
/// between the stored history and the live stream.
const RECENT: usize = 256;

/// One Server-Sent Event, and what it covers (to skip what the history
/// already sent).
#[derive(Debug, Clone)]
pub struct LiveItem {
    pub kind: &'static str,
    pub data: String,
    pub key: ItemKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemKey {
    /// Always sent (messages, monitor readings, state changes).
    Any,
    Step(u32),
    Interval(u32, u64),
    StepFinished(u32),
    End,
}

impl LiveItem {
    pub fn new(kind: &'static str, data: &serde_json::Value, key: ItemKey) -> Self {
        Self {
            kind,
            data: data.to_string(),
            key,
        }
    }

    fn sse(&self) -> Event {
        Event::default().event(self.kind).data(&self.data)
    }
}

/// A run's progress while it runs (`RunInfo.progress`).
/// A watcher's live stream, with the events sent just before it joined.
pub struct Subscription {
    pub rx: broadcast::Receiver<Arc<LiveItem>>,
    pub recent: Vec<Arc<LiveItem>>,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Progress {
    pub step: u32,
    pub step_name: String,
    /// Seconds from the step's start to the end of the latest interval.
    pub t_s: f64,
    pub duration_s: Option<f64>,
    pub requests: Option<u64>,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub in_flight: u64,
    pub req_per_s: f64,
    pub output_tok_per_s: f64,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub itl_p50_ms: Option<f64>,
}

struct Live {
    tx: broadcast::Sender<Arc<LiveItem>>,
    recent: VecDeque<Arc<LiveItem>>,
    progress: Option<Progress>,
    interval_s: f64,
}

/// Every run that has not ended: its broadcast and progress.
#[derive(Default)]
pub struct LiveHub {
    runs: Mutex<HashMap<String, Live>>,
}

impl LiveHub {
    fn runs(&self) -> MutexGuard<'_, HashMap<String, Live>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A queued run: watchers may subscribe before it starts.
    pub fn register(&self, id: &str) {
        self.runs().entry(id.to_owned()).or_insert_with(|| Live {
            tx: broadcast::channel(CHANNEL).0,
            recent: VecDeque::new(),
            progress: None,
            interval_s: 1.0,
        });
    }

    /// The live stream and the latest events already sent, taken together
    /// (nothing falls between them). None once the run ended (or for an
    /// unknown run).
    pub fn subscribe(&self, id: &str) -> Option<Subscription> {
        self.runs().get(id).map(|l| Subscription {
            rx: l.tx.subscribe(),
            recent: l.recent.iter().cloned().collect(),
        })
    }

    pub fn progress(&self, id: &str) -> Option<Progress> {
        self.runs().get(id).and_then(|l| l.progress.clone())
    }

    /// Sends `item` to the run's watchers (none listening is fine).
    pub fn publish(&self, id: &str, item: LiveItem) {
        if let Some(l) = self.runs().get_mut(id) {
            let item = Arc::new(item);
            if l.recent.len() == RECENT {
                l.recent.pop_front();
            }
            l.recent.push_back(Arc::clone(&item));
            let _ = l.tx.send(item);
        }
    }

    /// The run ended: watchers get `end` with its final state; the run
    /// leaves the hub.
    pub fn end(&self, id: &str, info: &serde_json::Value) {
        if let Some(l) = self.runs().remove(id) {
            let _ =
                l.tx.send(Arc::new(LiveItem::new("end", info, ItemKey::End)));
        }
    }

    fn observe(&self, id: &str, ev: &RunEvent) {
        let mut runs = self.runs();
        let Some(live) = runs.get_mut(id) else {
            return;
        };
        match ev {
            RunEvent::StepStarted(s) => {
                live.interval_s = s.interval_s;
                live.progress = Some(Progress {
                    step: s.step,
                    step_name: s.name.clone(),
                    duration_s: s.duration_s,
                    requests: s.requests,
                    ..Progress::default()
                });
            }
            RunEvent::Interval(iv) => {
                if let Some(p) = live.progress.as_mut() {
                    let secs = live.interval_s.max(1e-9);
                    let r = &iv.row;
                    p.t_s = r.t_s + live.interval_s;
                    p.requests_ok = iv.totals.requests_ok;
                    p.requests_failed = iv.totals.requests_failed;
                    p.in_flight = r.in_flight;
                    p.req_per_s = r.requests_ok as f64 / secs;
                    p.output_tok_per_s = r.output_tokens as f64 / secs;
                    p.ttft_p50_ms = r.ttft_p50_ms;
                    p.ttft_p99_ms = r.ttft_p99_ms;
                    p.itl_p50_ms = r.itl_p50_ms;
                }
            }
            _ => {}
        }
    }

    /// The consumer that feeds run `id`'s watchers; `on_dir` learns the
    /// run's results folder when the plan starts.
    pub fn consumer(
        self: &Arc<Self>,
        id: &str,
        on_dir: Box<dyn FnMut(&Path) + Send>,
    ) -> Box<dyn Consumer> {
        Box::new(LiveConsumer {
            hub: Arc::clone(self),
            id: id.to_owned(),
            on_dir,
        })
    }
}

struct LiveConsumer {
    hub: Arc<LiveHub>,
    id: String,
    on_dir: Box<dyn FnMut(&Path) + Send>,
}

impl Consumer for LiveConsumer {
    fn name(&self) -> &'static str {
        "live view (service)"
    }

    /// Per-request records are not shown here.
    fn wants_requests(&self) -> bool {
        false
    }

    fn event(&mut self, ev: &RunEvent) -> Result<(), OutputError> {
        if let RunEvent::PlanStarted(p) = ev {
            (self.on_dir)(&p.dir);
        }
        self.hub.observe(&self.id, ev);
        if let Some(item) = item_of(ev) {
            self.hub.publish(&self.id, item);
        }
        Ok(())
    }
}

/// The Server-Sent Event of a run event (None: not for watchers).
pub fn item_of(ev: &RunEvent) -> Option<LiveItem> {
    let item = match ev {
        RunEvent::StepStarted(s) => LiveItem::new(
            "step",
            &json!({"step": s.step, "name": s.name, "interval_s": s.interval_s,
                    "duration_s": s.duration_s, "requests": s.requests,
                    "users": s.users, "rate": s.rate}),
            ItemKey::Step(s.step),
        ),
        RunEvent::Interval(iv) => LiveItem::new(
            "interval",
            &json!({"step": iv.step, "row": iv.row,
                    "totals": {"requests_ok": iv.totals.requests_ok,
                               "requests_failed": iv.totals.requests_failed,
                               "input_tokens": iv.totals.input_tokens,
                               "output_tokens": iv.totals.output_tokens}}),
            ItemKey::Interval(iv.step, iv.row.index),
        ),
        RunEvent::Monitor(m) => LiveItem::new(
            "monitor",
            &json!({"step": m.step, "t_s": m.t_s, "sample": m.sample}),
            ItemKey::Any,
        ),
        RunEvent::Message(text) => LiveItem::new("message", &json!({"text": text}), ItemKey::Any),
        RunEvent::StepFinished(end) => LiveItem::new(
            "step_finished",
            &json!({"step": end.step, "verdict": verdict_name(end.verdict),
                    "headline": super::api::headline_of(&end.summary)}),
            ItemKey::StepFinished(end.step),
        ),
        RunEvent::PlanStarted(_) | RunEvent::Requests(_) | RunEvent::PlanFinished(_) => {
            return None;
        }
    };
    Some(item)
}

/// The run's history so far, from the store of its results folder (empty
/// before the store exists).
pub fn history(dir: &Path) -> Vec<LiveItem> {
    let items = Arc::new(Mutex::new(Vec::new()));
    let collector = Collector {
        items: Arc::clone(&items),
    };
    match crate::store::replay::replay_timeline(dir, vec![Box::new(collector)]) {
        Ok(_) | Err(crate::store::StoreError::Missing { .. }) => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot read a run's history"),
    }
    let mut items = items.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut *items)
}

struct Collector {
    items: Arc<Mutex<Vec<LiveItem>>>,
}

impl Consumer for Collector {
    fn name(&self) -> &'static str {
        "history"
    }

    fn event(&mut self, ev: &RunEvent) -> Result<(), OutputError> {
        if let Some(item) = item_of(ev) {
            self.items
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(item);
        }
        Ok(())
    }
}

/// What a watcher is sent: `first` (the run's state), the stored history,
/// the recent events the history lacks, then the live events none of them
/// covered, until the run ends. `live` must have been subscribed before the
/// history was read.
pub fn watch(
    first: LiveItem,
    history: Vec<LiveItem>,
    live: Option<Subscription>,
    end_now: Option<LiveItem>,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    let mut seen: HashSet<ItemKey> = history.iter().map(|i| i.key).collect();
    let (rx, recent) = match live {
        Some(s) => (Some(s.rx), s.recent),
        None => (None, Vec::new()),
    };
    let mut head: Vec<Result<Event, Infallible>> = std::iter::once(&first)
        .chain(&history)
        .map(|i| Ok(i.sse()))
        .collect();
    for item in recent {
        if item.key == ItemKey::Any || seen.insert(item.key) {
            head.push(Ok(item.sse()));
        }
    }
    head.extend(end_now.iter().map(|i| Ok(i.sse())));
    let tail = rx.map(|rx| {
        BroadcastStream::new(rx)
            .scan(false, |ended, item| {
                // Stop after the `end` event.
                if *ended {
                    return futures::future::ready(None);
                }
                let out = match item {
                    Ok(i) => {
                        *ended = i.key == ItemKey::End;
                        Some(i)
                    }
                    Err(BroadcastStreamRecvError::Lagged(n)) => Some(Arc::new(LiveItem::new(
                        "message",
                        &json!({"text": format!("{n} live updates were skipped (slow connection): reload for the whole history")}),
                        ItemKey::Any,
                    ))),
                };
                futures::future::ready(Some(out))
            })
            .filter_map(move |i| {
                let keep = i.filter(|i| i.key == ItemKey::Any || seen.insert(i.key));
                futures::future::ready(keep.map(|i| Ok(i.sse())))
            })
    });
    futures::stream::iter(head).chain(futures::stream::iter(tail).flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(kind: &'static str, key: ItemKey) -> LiveItem {
        LiveItem::new(kind, &json!({"kind": kind}), key)
    }

    /// The event names a watcher receives, in order.
    async fn kinds(stream: impl Stream<Item = Result<Event, Infallible>>) -> Vec<String> {
        let events: Vec<Result<Event, Infallible>> = stream.collect().await;
        events
            .into_iter()
            .filter_map(|e| e.ok())
            .map(|e| {
                // The event's wire form: "event: <name>\ndata: ...".
                let text = format!("{e:?}");
                text.split("event: ")
                    .nth(1)
                    .and_then(|t| t.split("\\n").next())
                    .unwrap_or("?")
                    .to_owned()
            })
            .collect()
    }

    #[tokio::test]
    async fn events_sent_before_the_store_wrote_them_still_reach_a_late_watcher() {
        let hub = LiveHub::default();
        hub.register("r");
        // Sent live, not yet in the store when the watcher reads it.
        hub.publish("r", item("step", ItemKey::Step(1)));
        hub.publish("r", item("interval", ItemKey::Interval(1, 0)));
        let sub = hub.subscribe("r").expect("registered");
        // The store had only the first interval... and the step not yet.
        let history = vec![item("interval", ItemKey::Interval(1, 0))];
        hub.publish("r", item("interval", ItemKey::Interval(1, 1)));
        hub.publish("r", item("interval", ItemKey::Interval(1, 1)));
        hub.end("r", &json!({"kind": "end"}));
        let got = kinds(watch(item("run", ItemKey::Any), history, Some(sub), None)).await;
        assert_eq!(got, ["run", "interval", "step", "interval", "end"]);
    }

    #[tokio::test]
    async fn an_ended_run_is_its_history_then_end() {
        let history = vec![
            item("step", ItemKey::Step(0)),
            item("interval", ItemKey::Interval(0, 0)),
        ];
        let end = item("end", ItemKey::End);
        let got = kinds(watch(item("run", ItemKey::Any), history, None, Some(end))).await;
        assert_eq!(got, ["run", "step", "interval", "end"]);
    }
}
