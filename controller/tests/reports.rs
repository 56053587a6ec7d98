//! report.html and compare.html from real runs against llm-sim (single,
//! one request, unstreamed, sweep, interrupted, degraded, failed): each page
//! is self-contained (nothing on it would load a network resource), and a
//! real headless Chromium with the network off draws its charts with no
//! script error. Screenshots land in the test's results folder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use barrage_controller::run::{RunOptions, RunOutcome, Verdict, execute};
use barrage_controller::sweep::{PlanOutcome, execute_plan};
use tokio_util::sync::CancellationToken;

use crate::support::{LOAD, TEST_LIMIT, controller, output, plan_from, scratch};

/// A plan on the built-in simulator writing below `out`.
fn sim_plan(name: &str, out: &Path, load: &str, extra: &str) -> String {
    format!(
        r#"
        name = "{name}"
        [load]
        {load}
        [cluster]
        embedded_agents = 1
        [output]
        dir = "{}"
        [metrics]
        interval = "200ms"
        [simulator]
        ttft = "15ms"
        itl = "3ms"
        {extra}
        "#,
        out.display()
    )
}

async fn run(text: &str, cancel: CancellationToken) -> RunOutcome {
    tokio::time::timeout(
        TEST_LIMIT,
        execute(plan_from(text), RunOptions::default(), cancel),
    )
    .await
    .expect("bounded")
    .expect("run")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of every `<tag ...>...</tag>` element of `html` whose opening
/// tag does not contain `unless`.
fn elements<'a>(html: &'a str, tag: &str, unless: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i..];
        let Some(gt) = after.find('>') else { break };
        let Some(end) = after.find(&close) else { break };
        if !after[..gt].contains(unless) {
            out.push(&after[gt + 1..end]);
        }
        rest = &after[end..];
    }
    out
}

/// Every way a page could make the browser fetch something: an attribute
/// (src, href...) naming another origin, elements that load (link, img,
/// iframe...), CSS url() and @import, and script APIs that load. Text and
/// the embedded JSON data are escaped content, not loads.
fn network_references(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut found = Vec::new();
    for attr in [
        " src=",
        " href=",
        " srcset=",
        " action=",
        " poster=",
        " data=",
        " xlink:href=",
    ] {
        for (i, _) in lower.match_indices(attr) {
            let value: String = lower[i + attr.len()..]
                .trim_start_matches(['"', '\''])
                .chars()
                .take_while(|c| !matches!(c, '"' | '\'' | ' ' | '>'))
                .collect();
            if value.contains(':') || value.starts_with("//") {
                found.push(format!("{attr}{value}"));
            }
        }
    }
    for tag in [
        "<link", "<img", "<iframe", "<object", "<embed", "<base", "<audio", "<video", "<source",
        "<frame",
    ] {
        if lower.contains(tag) {
            found.push(tag.to_owned());
        }
    }
    let code: Vec<&str> = elements(&lower, "style", "\u{0}")
        .into_iter()
        .chain(elements(&lower, "script", "application/json"))
        .collect();
    for c in code {
        for needle in [
            "url(",
            "@import",
            "fetch(",
            "xmlhttprequest",
            "websocket",
            "eventsource",
            "sendbeacon",
            "import(",
            "importscripts",
            ".src",
            "location.href",
            "window.open",
        ] {
            if c.contains(needle) {
                found.push(needle.to_owned());
            }
        }
    }
    found
}

#[test]
fn the_scanner_finds_what_would_load() {
    for bad in [
        "<script src=\"https://cdn.example/x.js\"></script>",
        "<style>@import 'x.css'</style>",
        "<style>body{background:url(x.png)}</style>",
        "<link rel=stylesheet href=\"//fonts.example/css\">",
        "<script>fetch('/api')</script>",
        "<img src=\"a.png\">",
    ] {
        assert!(!network_references(bad).is_empty(), "{bad}");
    }
    let fine = "<a href=\"#errors\">e</a><a href=\"step/report.html\">s</a><p>error sending request for url(http://x)</p><script type=\"application/json\">{\"m\":\"fetch(x)\"}</script>";
    assert!(
        network_references(fine).is_empty(),
        "{:?}",
        network_references(fine)
    );
}

fn assert_offline(path: &Path) -> String {
    let html = read(path);
    let refs = network_references(&html);
    assert!(
        refs.is_empty(),
        "{}: network references {refs:?}",
        path.display()
    );
    assert!(
        html.contains("<style>") && html.contains("BarrageCharts"),
        "styles and charts inlined"
    );
    html
}

/// The Chromium binary, or why there is none.
fn chromium() -> Result<PathBuf, String> {
    let names = ["chromium", "chromium-browser", "google-chrome"];
    if let Some(p) = std::env::var_os("BARRAGE_CHROMIUM") {
        return Ok(PathBuf::from(p));
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err("no chromium binary on PATH (install Debian's chromium; .ci/run does)".into())
}

/// What the browser saw once the scripts ran.
#[derive(Debug)]
struct Rendered {
    charts: u64,
    points: u64,
    /// Data points drawn (circles with data-x) and series paths.
    circles: usize,
    paths: usize,
    errors: String,
    dom: String,
}

fn chromium_cmd(bin: &Path, profile: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        // The network is off: every name resolves nowhere, every proxy
        // connection is refused.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=127.0.0.1:9",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

fn attr(dom: &str, name: &str) -> u64 {
    let key = format!("{name}=\"");
    dom.find(&key)
        .and_then(|i| dom[i + key.len()..].split('"').next()?.parse().ok())
        .unwrap_or(0)
}

/// Opens `page` in headless Chromium (network off): the DOM after its
/// scripts ran, and a screenshot saved as `shot`. None (with the reason
/// printed) when no browser is installed.
async fn browse(page: &Path, shot: &Path) -> Option<Rendered> {
    let bin = match chromium() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("SKIPPED browser check of {}: {why}", page.display());
            return None;
        }
    };
    let page = page.canonicalize().expect("page path");
    let url = format!("file://{}", page.display());
    let profile = scratch("chromium-profile");
    let mut dump = chromium_cmd(&bin, &profile);
    dump.args(["--virtual-time-budget=5000", "--dump-dom", &url]);
    let out = tokio::time::timeout(Duration::from_secs(60), output(dump))
        .await
        .expect("chromium bounded");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut snap = chromium_cmd(&bin, &profile);
    snap.arg(format!("--screenshot={}", shot.display())).args([
        "--window-size=1400,6000",
        "--hide-scrollbars",
        "--virtual-time-budget=5000",
        &url,
    ]);
    let s = tokio::time::timeout(Duration::from_secs(60), output(snap))
        .await
        .expect("chromium bounded");
    assert!(
        s.status.success() && shot.is_file(),
        "screenshot: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    println!("screenshot: {}", shot.display());
    let errors = dom
        .split("id=\"script-errors\"")
        .nth(1)
        .and_then(|r| r.split_once('>'))
        .and_then(|(_, r)| r.split("</pre>").next())
        .unwrap_or("")
        .to_owned();
    Some(Rendered {
        charts: attr(&dom, "data-charts"),
        points: attr(&dom, "data-points"),
        circles: dom.matches("class=\"pt\"").count(),
        paths: dom.matches("class=\"series").count(),
        errors,
        dom,
    })
}

/// The page rendered every chart it placed, with data points and no error.
fn assert_drawn(r: &Rendered, html: &str, what: &str) {
    assert!(
        r.errors.trim().is_empty(),
        "{what}: script errors: {}",
        r.errors
    );
    let placed = html.matches("class=\"chart-box\"").count() as u64;
    assert!(placed > 0, "{what}: no chart placed");
    assert_eq!(r.charts, placed, "{what}: every placed chart drawn");
    assert!(
        r.points > 0 && r.circles > 0 && r.paths > 0,
        "{what}: data points drawn: {r:?}"
    );
    assert_eq!(
        r.dom.matches("data-empty=\"true\"").count(),
        0,
        "{what}: a chart with no data"
    );
}

/// report.html of a run's folder, checked offline and in the browser.
async fn check_report(dir: &Path, what: &str) -> (String, Option<Rendered>) {
    let page = dir.join("report.html");
    let html = assert_offline(&page);
    let r = browse(&page, &dir.join("report.png")).await;
    if let Some(r) = &r {
        assert_drawn(r, &html, what);
    }
    (html, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_run_report_holds_every_section_and_its_charts_render() {
    let _serial = LOAD.lock().await;
    let out = scratch("report-single");
    let o = run(
        &sim_plan("single", &out, "users = 4\nduration = \"2s\"", ""),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(o.verdict, Verdict::Completed);
    let (html, r) = check_report(&o.dir, "single").await;
    for section in [
        "id=\"summary\"",
        "id=\"timeline\"",
        "id=\"distributions\"",
        "id=\"errors\"",
        "id=\"accuracy\"",
        "id=\"definitions\"",
    ] {
        assert!(html.contains(section), "{section}");
    }
    // The headline shows the run's own figures, and the alias table is there.
    let ok = o.summary.requests_ok.to_string();
    assert!(
        html.contains(&format!("<div class=\"v\">{ok}<")),
        "requests ok {ok}"
    );
    assert!(html.contains("AIPerf") && html.contains("GuideLLM") && html.contains("EvalScope"));
    // The accuracy budget, key by key, whatever its fields.
    let acc = serde_json::to_value(&o.summary.accuracy).expect("json");
    for key in acc.as_object().expect("an object").keys() {
        assert!(
            html.contains(&format!("<dt>{}</dt>", key.replace('_', " "))),
            "accuracy {key}"
        );
    }
    // Percentile curves go as far into the tail as the samples resolve
    // (1 - 1/count), then the exact max; in summary.json too.
    let itl = &o.summary.percentile_curves["itl"];
    let n = o.summary.metrics["itl"].count as f64;
    let tail = itl[itl.len() - 2][0];
    assert!(
        tail >= 99.0 && tail / 100.0 <= 1.0 - 1.0 / n,
        "itl tail p{tail} of {n}"
    );
    assert_eq!(itl.last().map(|p| p[0]), Some(100.0));
    assert_eq!(itl.last().map(|p| p[1]), o.summary.metrics["itl"].max);
    let json = read(&o.dir.join("summary.json"));
    assert!(json.contains("percentile_curves"));
    if let Some(r) = r {
        // Time series at 200 ms over 2 s: ~10 points per line; curves 43.
        assert!(r.circles > 100, "{} points", r.circles);
        assert!(r.dom.contains("data-series=\"ttft\""), "ttft curve drawn");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_unstreamed_shows_dashes_not_charts_of_zeros() {
    let _serial = LOAD.lock().await;
    let out = scratch("report-one");
    let o = run(
        &sim_plan(
            "one",
            &out,
            "users = 1\nrequests = 1",
            "[target]\nstream = false",
        ),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(o.summary.requests_ok, 1);
    assert!(o.summary.not_observable.iter().any(|n| n == "itl"));
    let (html, r) = check_report(&o.dir, "one request, unstreamed").await;
    assert!(html.contains("not observable: responses were not streamed"));
    assert!(
        !html.contains("ITL p50 / p99 (ms)</figcaption><div"),
        "no ITL chart"
    );
    if let Some(r) = r {
        assert!(!r.dom.contains("data-series=\"itl\""), "no itl curve drawn");
    }
}

async fn sweep(text: &str) -> barrage_controller::sweep::SweepOutcome {
    let out = tokio::time::timeout(
        TEST_LIMIT,
        execute_plan(
            plan_from(text),
            RunOptions::default(),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("bounded")
    .expect("sweep");
    let PlanOutcome::Sweep(s) = out else {
        panic!("a sweep")
    };
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_report_has_one_point_per_step_and_links_each_steps_report() {
    let _serial = LOAD.lock().await;
    let out = scratch("report-sweep");
    let s = sweep(&sim_plan(
        "sweep",
        &out,
        "users = 1\nrequests = 8",
        "[sweep]\nusers = [1, 2, 4, 8]\nrequests = [8, 16, 32, 64]",
    ))
    .await;
    assert_eq!(s.verdict, Verdict::Completed);
    let (html, r) = check_report(&s.dir, "sweep").await;
    for row in &s.report.steps {
        // Each step has its own report, linked relative to the sweep's.
        let rel = row.dir.strip_prefix(&s.dir).expect("step below the sweep");
        assert!(row.dir.join("report.html").is_file());
        assert!(html.contains(&format!("href=\"{}/report.html\"", rel.display())));
    }
    assert!(html.contains("Throughput vs latency") && html.contains("users (concurrency)"));
    // A sweep compared with itself: step by step, every change 0 and within noise.
    let page = out.join("compare.html");
    let o = compare(&[&s.dir, &s.dir], &page).await;
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("step u8-n64"), "{text}");
    let cmp = assert_offline(&page);
    assert!(cmp.contains("id=\"sweeps\""));
    if let Some(r) = browse(&page, &out.join("compare.png")).await {
        assert_drawn(&r, &cmp, "compare of sweeps");
    }
    if let Some(r) = r {
        // The knee chart: one point per step on each of its two lines.
        assert!(
            r.dom.contains("data-series=\"p50\" data-points=\"4\""),
            "4 steps drawn"
        );
        // Steps' curves overlaid, one line per step.
        assert!(
            r.dom.contains("data-series=\"u8-n64\""),
            "step curves labelled"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_step_sweep_still_draws_its_point() {
    let _serial = LOAD.lock().await;
    let out = scratch("report-sweep1");
    let s = sweep(&sim_plan(
        "sweep1",
        &out,
        "users = 2\nrequests = 6",
        "[sweep]\nusers = [2]",
    ))
    .await;
    let (_, r) = check_report(&s.dir, "single-step sweep").await;
    if let Some(r) = r {
        assert!(r.dom.contains("data-points=\"1\""));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_reports_what_it_measured() {
    let _serial = LOAD.lock().await;
    let out = scratch("report-interrupted");
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        c.cancel();
    });
    let o = run(
        &sim_plan("interrupted", &out, "users = 4\nduration = \"30s\"", ""),
        cancel,
    )
    .await;
    assert_eq!(o.verdict, Verdict::Interrupted);
    let (html, _) = check_report(&o.dir, "interrupted").await;
    assert!(html.contains("status-interrupted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_where_every_request_failed_says_so_and_still_renders() {
    let _serial = LOAD.lock().await;
    let out = scratch("report-failed");
    // A port nobody listens on: every request fails to connect.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let text = format!(
        "name = \"failed\"\n[target]\nurl = \"{url}\"\nmodel = \"m\"\n[load]\nusers = 2\nrequests = 6\n[cluster]\nembedded_agents = 1\n[output]\ndir = \"{}\"\n[metrics]\ninterval = \"200ms\"\n",
        out.display()
    );
    let o = run(&text, CancellationToken::new()).await;
    assert_eq!(o.summary.requests_ok, 0);
    assert_eq!(o.verdict, Verdict::Failed);
    let (html, r) = check_report(&o.dir, "failed").await;
    assert!(html.contains("FAILED: all 6 requests failed"), "headline");
    assert!(html.contains("<code>connect</code>"), "error class listed");
    assert!(html.contains("class=\"example\""), "example messages");
    assert!(
        html.contains("no samples in this run"),
        "no latency chart of nothing"
    );
    if let Some(r) = r {
        assert!(r.dom.contains("data-series=\"failed / s\""));
    }
}

/// An agent on its own runtime and thread; sending on the returned channel
/// drops that runtime: every task and socket of the agent vanishes at once,
/// as when its process is killed.
fn agent_to_lose(token: &str) -> (String, std::sync::mpsc::Sender<()>) {
    use barrage_agent::{AgentOptions, AgentService, server};
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let token = barrage_common::auth::Token::new(token);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            addr_tx
                .send(listener.local_addr().expect("addr").to_string())
                .expect("send");
            let service = AgentService::new(AgentOptions {
                load_threads: 1,
                ..AgentOptions::default()
            })
            .expect("agent");
            tokio::spawn(server::serve(
                listener,
                service,
                Some(token),
                std::future::pending::<()>(),
            ));
        });
        let _ = kill_rx.recv();
        rt.shutdown_background();
    });
    (addr_rx.recv().expect("agent address"), kill_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_run_names_the_lost_agent_in_its_report() {
    let _serial = LOAD.lock().await;
    let sim = crate::support::sim_with(barrage_common::simulator::SimConfig::default()).await;
    let out = scratch("report-degraded");
    let (a, _keep) = agent_to_lose("report-token");
    let (b, kill) = agent_to_lose("report-token");
    let text = format!(
        "name = \"degraded\"\n[target]\nurl = \"http://{}\"\n[request]\nmax_tokens = 8\n[load]\nusers = 4\nduration = \"3s\"\n[cluster]\nagents = [\"{a}\", \"{b}\"]\n[output]\ndir = \"{}\"\n[metrics]\ninterval = \"200ms\"\n",
        sim.addr(),
        out.display()
    );
    let opts = RunOptions {
        agent_token: Some(barrage_common::auth::Token::new("report-token")),
        ..RunOptions::default()
    };
    let run = tokio::spawn(execute(plan_from(&text), opts, CancellationToken::new()));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    kill.send(()).expect("kill agent");
    let o = tokio::time::timeout(TEST_LIMIT, run)
        .await
        .expect("bounded")
        .expect("join")
        .expect("run");
    assert_eq!(o.verdict, Verdict::Degraded);
    let (html, _) = check_report(&o.dir, "degraded").await;
    assert!(html.contains("status-degraded"));
    assert!(
        html.contains("Lost agent") && html.contains(&b),
        "lost agent {b} named"
    );
    sim.shutdown().await;
}

/// `controller compare` on `dirs`, writing the page to `page`.
async fn compare(dirs: &[&Path], page: &Path) -> std::process::Output {
    let mut cmd = controller();
    cmd.arg("compare").args(dirs).arg("--html").arg(page);
    output(cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_prints_changes_with_noise_marks_and_overlays_curves() {
    let _serial = LOAD.lock().await;
    let out = scratch("compare");
    let slow = run(
        &sim_plan("slow", &out, "users = 2\nduration = \"2s\"", ""),
        CancellationToken::new(),
    )
    .await;
    let fast = run(
        &sim_plan("fast", &out, "users = 2\nduration = \"2s\"", "")
            .replace("ttft = \"15ms\"", "ttft = \"5ms\""),
        CancellationToken::new(),
    )
    .await;
    let page = out.join("compare.html");
    let o = compare(&[&slow.dir, &fast.dir], &page).await;
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for want in [
        "A = ",
        "B = ",
        "request throughput (req/s)",
        "ttft p50 (ms)",
        "B vs A",
        "within the runs' own noise",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    // TTFT p50 fell by 10 ms of the simulator's: a real change, beyond noise.
    let ttft = text
        .lines()
        .find(|l| l.contains("ttft p50 (ms)"))
        .expect("ttft row");
    let pct: f64 = ttft
        .split_whitespace()
        .find_map(|w| w.strip_suffix('%')?.parse().ok())
        .expect("a % change");
    assert!(
        pct < -30.0 && !ttft.contains('≈') && !ttft.ends_with('?'),
        "{ttft}"
    );
    let html = assert_offline(&page);
    if let Some(r) = browse(&page, &out.join("compare.png")).await {
        assert_drawn(&r, &html, "compare");
        assert!(
            r.dom.contains("data-series=\"A slow\"") && r.dom.contains("data-series=\"B fast\"")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_refuses_what_is_not_a_results_folder_naming_it() {
    let dir = scratch("compare-bad");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).expect("mkdir");
    std::fs::write(broken.join("summary.json"), "{ not json").expect("write");
    let missing = dir.join("missing");
    for (bad, names) in [
        (&empty, empty.display().to_string()),
        (&broken, broken.join("summary.json").display().to_string()),
        (&missing, missing.display().to_string()),
    ] {
        let o = compare(&[bad, &empty], &dir.join("c.html")).await;
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(&names), "{names} in {err}");
    }
    assert!(!dir.join("c.html").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_turn_report_draws_its_figures_by_turn() {
    let _serial = LOAD.lock().await;
    let out = scratch("report-turns");
    let o = run(
        &sim_plan(
            "turns",
            &out,
            "users = 2\nconversations = 4",
            "[conversation]\nturns = 3",
        ),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(o.verdict, Verdict::Completed);
    let (html, r) = check_report(&o.dir, "multi-turn").await;
    assert!(html.contains("id=\"conversations\""));
    assert!(
        html.contains("4 started, 4 completed, 0 abandoned"),
        "counts shown"
    );
    assert!(html.contains("TTFT by turn (ms)") && html.contains("e2e by turn (ms)"));
    if let Some(r) = r {
        assert!(
            r.dom.contains("data-series=\"ttft p50\""),
            "per-turn chart drawn"
        );
    }
    let txt = read(&o.dir.join("summary.txt"));
    assert!(
        txt.contains("Conversations: 4 started, 4 completed"),
        "{txt}"
    );
}
