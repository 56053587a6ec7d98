//! The dashboard in a real browser: headless Chromium driven over WebDriver
//! (Debian's chromedriver) with fantoccini. It logs in through the form,
//! starts runs through the forms against the built-in simulator, watches the
//! live page update (and reloads it mid-run), opens the finished run's
//! report and a comparison of two runs, and saves screenshots under the
//! target dir (their paths are printed). Without Chromium or chromedriver
//! it prints why and returns.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::support::service::{Api, TestService};
use crate::support::{LOAD, scratch};

/// The whole test, browser start to last page.
const LIMIT: Duration = Duration::from_secs(300);
/// One wait for something on a page.
const WAIT: Duration = Duration::from_secs(60);
/// A laptop screen.
const SCREEN: (u32, u32) = (1366, 768);

/// `env` if set, else the first of `names` on PATH.
fn find_bin(env: &str, names: &[&str]) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env) {
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
    Err(format!(
        "no {} on PATH (Debian: apt-get install chromium chromium-driver; .ci/run does)",
        names.join(" / ")
    ))
}

/// Polls `f` every 200 ms until it gives Some; panics naming `what` after
/// `limit`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A free loopback port (bound then released: chromedriver takes it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Headless Chromium behind chromedriver, both ended when this is dropped.
struct Browser {
    client: Client,
    /// chromedriver's base URL and this session, for the commands
    /// fantoccini has no call for (browser log, DevTools).
    driver_url: String,
    session: String,
    http: reqwest::Client,
    shots: PathBuf,
    _driver: Child,
}

impl Browser {
    /// Starts chromedriver and a Chromium session; Err: why there is none.
    async fn start(shots: &Path) -> Result<Self, String> {
        let chromium = find_bin("BARRAGE_CHROMIUM", &["chromium", "chromium-browser"])?;
        let chromedriver = find_bin("BARRAGE_CHROMEDRIVER", &["chromedriver"])?;
        let port = free_port();
        let log = std::fs::File::create(shots.join("chromedriver.log"))
            .map_err(|e| format!("chromedriver log: {e}"))?;
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group, with the Chromium it starts: ended
            // together on drop.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", chromedriver.display()))?;
        let driver_url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        wait_for("chromedriver to answer", WAIT, || async {
            let r = http.get(format!("{driver_url}/status")).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        let profile = scratch("chromium-profile");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-quic", "--hide-scrollbars", "--force-device-scale-factor=1",
                    format!("--window-size={},{}", SCREEN.0, SCREEN.1),
                    format!("--user-data-dir={}", profile.display()),
                    // No network but loopback: every name resolves nowhere.
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(caps) = caps else {
            unreachable!("a JSON object")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = tokio::time::timeout(
            WAIT,
            ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&driver_url),
        )
        .await
        .map_err(|_| "chromedriver did not start a session in time".to_owned())?
        .map_err(|e| format!("chromedriver could not start Chromium: {e}"))?;
        let session = client
            .session_id()
            .await
            .ok()
            .flatten()
            .ok_or("no WebDriver session id")?;
        client
            .set_window_size(SCREEN.0, SCREEN.1)
            .await
            .map_err(|e| format!("window size: {e}"))?;
        Ok(Self {
            client,
            driver_url,
            session,
            http,
            shots: shots.to_owned(),
            _driver: driver,
        })
    }

    /// The browser's process group (chromedriver's id).
    fn group(&self) -> Option<u32> {
        self._driver.id()
    }

    /// A screenshot of what the screen shows, saved as `name`.png.
    async fn shot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        self.save(name, &png)
    }

    fn save(&self, name: &str, png: &[u8]) -> PathBuf {
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        println!("screenshot: {}", path.display());
        path
    }

    /// A DevTools command through chromedriver (full-page and print-media
    /// screenshots).
    async fn cdp(&self, cmd: &str, params: Value) -> Value {
        let url = format!(
            "{}/session/{}/goog/cdp/execute",
            self.driver_url, self.session
        );
        let r = self
            .http
            .post(url)
            .json(&json!({ "cmd": cmd, "params": params }))
            .send()
            .await
            .expect("cdp command");
        let v: Value = r.json().await.expect("cdp answer");
        v["value"].clone()
    }

    /// The whole page, past the screen's bottom, as `name`.png; with
    /// `print`, as the print stylesheet lays it out.
    async fn full_shot(&self, name: &str, print: bool) -> PathBuf {
        let media = if print { "print" } else { "" };
        self.cdp("Emulation.setEmulatedMedia", json!({ "media": media }))
            .await;
        let v = self
            .cdp(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        self.cdp("Emulation.setEmulatedMedia", json!({ "media": "" }))
            .await;
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["data"].as_str().expect("screenshot data"))
            .expect("base64 png");
        self.save(name, &png)
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.expect("script")
    }

    /// An attribute of <body> (the pages' state for tests).
    async fn body(&self, attr: &str) -> Option<String> {
        let v = self
            .client
            .execute(
                "return document.body && document.body.getAttribute(arguments[0]);",
                vec![json!(attr)],
            )
            .await
            .ok()?;
        v.as_str().map(str::to_owned)
    }

    async fn body_num(&self, attr: &str) -> u64 {
        self.body(attr)
            .await
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    async fn path(&self) -> String {
        let u = self.client.current_url().await.expect("url");
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        }
    }

    async fn wait_path(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        wait_for(what, WAIT, || async {
            let p = self.path().await;
            f(&p).then_some(p)
        })
        .await
    }

    /// The element matching `css`, once it is there and shown.
    async fn shown(&self, css: &str) -> fantoccini::elements::Element {
        wait_for(&format!("{css} on the page"), WAIT, || async {
            let e = self.client.find(Locator::Css(css)).await.ok()?;
            e.is_displayed().await.ok()?.then_some(e)
        })
        .await
    }

    async fn fill(&self, css: &str, text: &str) {
        let e = self.shown(css).await;
        e.clear().await.expect("clear field");
        e.send_keys(text).await.expect("type");
    }

    async fn click(&self, css: &str) {
        self.shown(css).await.click().await.expect("click");
    }

    /// Script errors on the page (recorded by dashboard.js or the report's
    /// errors.js) and severe entries of the browser's console since the
    /// last call.
    async fn errors(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let page = self
            .js("var e = (window.dashboardErrors || []).slice();\
                 var b = document.getElementById('script-errors');\
                 if (b && b.textContent.trim() && !e.length) e.push(b.textContent.trim());\
                 return e;")
            .await;
        for e in page.as_array().into_iter().flatten() {
            out.push(e.as_str().unwrap_or_default().to_owned());
        }
        let url = format!("{}/session/{}/se/log", self.driver_url, self.session);
        if let Ok(r) = self
            .http
            .post(url)
            .json(&json!({ "type": "browser" }))
            .send()
            .await
        {
            let v: Value = r.json().await.unwrap_or_default();
            for e in v["value"].as_array().into_iter().flatten() {
                // The 400 and 401 this test provokes (a bad plan, a wrong
                // token) are the browser's "failed to load resource" lines;
                // anything else counts.
                let msg = e["message"].as_str().unwrap_or_default();
                let provoked = e["source"] == "network"
                    && (msg.contains("status of 400") || msg.contains("status of 401"));
                if e["level"] == "SEVERE" && !provoked {
                    out.push(msg.to_owned());
                }
            }
        }
        out
    }

    async fn assert_no_errors(&self, page: &str) {
        let errors = self.errors().await;
        assert!(
            errors.is_empty(),
            "{page}: errors in the browser: {errors:#?}"
        );
    }
}

/// The service's token in this test (typed into the login form).
const TOKEN: &str = "browser-test-token";

impl Drop for Browser {
    /// Ends chromedriver and every Chromium process it started, also when a
    /// failed assertion skipped closing the session.
    fn drop(&mut self) {
        if let Some(pgid) = self.group() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A plan that is wrong in one key (users = 0).
const BAD_PLAN: &str = "name = \"bad\"\n[load]\nusers = 0\nduration = \"5s\"\n[simulator]\n";

/// The second run, pasted into the plan form: a few seconds, bounded by
/// its request count too.
const PASTED_PLAN: &str = "name = \"browser-pasted\"\n[request]\nmax_tokens = 16\n\
    [load]\nusers = 2\nrequests = 60\nduration = \"8s\"\n[simulator]\nttft = \"20ms\"\nitl = \"5ms\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_in_a_real_browser() {
    let _load = LOAD.lock().await;
    let shots = scratch("dashboard-shots");
    let browser = match Browser::start(&shots).await {
        Ok(b) => b,
        Err(why) => {
            eprintln!("SKIPPED dashboard browser test: {why}");
            return;
        }
    };
    tokio::time::timeout(LIMIT, walk(&browser))
        .await
        .expect("the browser test ends in time");
    let _ = browser.client.clone().close().await;
}

/// The whole visit, page by page.
async fn walk(b: &Browser) {
    let data = scratch("dashboard-data");
    let svc = TestService::start(&data, Some(TOKEN)).await;
    let base = svc.api.base.clone();

    login(b, &base).await;
    bad_plan_message(b, &base, &svc).await;
    let first = live_run(b, &base).await;
    report(b, &first).await;
    let second = pasted_run(b, &base).await;
    compare(b, &base, &first, &second).await;
    filter(b, &base, &second).await;
    sweep_steps(b, &base).await;
    cancel_and_delete(b, &base, &svc).await;
    error_run(b, &base, &svc).await;
    batch_message(b, &base, &svc).await;
    session_end(b, &base).await;
    errors_are_seen(b, &base).await;
    svc.stop().await;
}

/// `/` sends a stranger to the login form; the token typed there opens the
/// runs list.
async fn login(b: &Browser, base: &str) {
    b.client.goto(&format!("{base}/")).await.expect("open /");
    b.wait_path("the login page", |p| p.starts_with("/login"))
        .await;
    b.shown("#login input[name=token]").await;
    b.shot("01-login").await;
    b.fill("#login input[name=token]", "not-the-token").await;
    b.click("#login button[type=submit]").await;
    b.wait_path("the login page again", |p| p.contains("error="))
        .await;
    let said = b.shown("#error").await.text().await.expect("error text");
    assert!(said.contains("not accepted"), "{said}");
    b.shot("01b-login-wrong-token").await;
    b.fill("#login input[name=token]", TOKEN).await;
    b.click("#login button[type=submit]").await;
    b.wait_path("the runs list", |p| p == "/").await;
    wait_for("the runs list to load", WAIT, || async {
        b.body("data-runs").await
    })
    .await;
    b.shot("02-runs-empty").await;
    b.assert_no_errors("runs list").await;
}

/// An invalid plan pasted into the form: the page shows the API's message,
/// word for word (the CLI's message naming the key).
async fn bad_plan_message(b: &Browser, base: &str, svc: &TestService) {
    b.client
        .goto(&format!("{base}/new#plan"))
        .await
        .expect("open /new");
    b.fill("#plan-form textarea[name=plan]", BAD_PLAN).await;
    b.click("#plan-form button[type=submit]").await;
    let shown = wait_for("the plan's error on the page", WAIT, || async {
        let e = b
            .client
            .find(Locator::Css("#plan-form .error"))
            .await
            .ok()?;
        let t = e.text().await.ok()?;
        (!t.trim().is_empty()).then_some(t)
    })
    .await;
    let res = svc
        .api
        .req(reqwest::Method::POST, "/api/runs")
        .body(BAD_PLAN)
        .send()
        .await
        .expect("POST /api/runs");
    assert_eq!(res.status(), 400);
    let v: Value = res.json().await.expect("JSON error");
    let message = v["error"]["message"].as_str().expect("message");
    assert_eq!(shown.trim(), message.trim(), "the API's message, verbatim");
    assert!(message.contains("load.users"), "names the key: {message}");
    assert_eq!(b.path().await, "/new", "stays on the form");
    b.shot("03-new-bad-plan").await;
    b.assert_no_errors("new run (bad plan)").await;
}

/// Waits until the run page's status is one of `states`.
async fn wait_status(b: &Browser, what: &str, limit: Duration, states: &[&str]) -> String {
    wait_for(what, limit, || async {
        let s = b.body("data-status").await?;
        states.contains(&s.as_str()).then_some(s)
    })
    .await
}

const TERMINAL: [&str; 7] = [
    "completed",
    "degraded",
    "breached",
    "failed",
    "cancelled",
    "interrupted",
    "error",
];

/// A run started from the common fields: its page updates while it runs,
/// shows its whole history again after a reload, and ends completed with
/// its report. Returns the run's id.
async fn live_run(b: &Browser, base: &str) -> String {
    b.client
        .goto(&format!("{base}/new"))
        .await
        .expect("open /new");
    b.fill("#fields-form input[name=name]", "browser-live")
        .await;
    b.fill("#fields-form input[name=users]", "2").await;
    b.fill("#fields-form input[name=duration]", "20s").await;
    b.fill("#fields-form input[name=max_tokens]", "16").await;
    b.shot("04-new-fields").await;
    b.click("#fields-form button[type=submit]").await;
    let path = b
        .wait_path("the run's page", |p| p.starts_with("/runs/"))
        .await;
    let id = path.trim_start_matches("/runs/").to_owned();

    // Live: more intervals and more chart points while it runs.
    wait_status(b, "the run to start", WAIT, &["running"]).await;
    let (n1, p1) = wait_for("a first interval on the charts", WAIT, || async {
        let n = b.body_num("data-intervals").await;
        (n >= 2).then_some((n, b.body_num("data-points").await))
    })
    .await;
    let (n2, p2) = wait_for("the charts to grow", WAIT, || async {
        let n = b.body_num("data-intervals").await;
        (n >= n1 + 2).then_some((n, b.body_num("data-points").await))
    })
    .await;
    assert!(p2 > p1, "chart points grow during the run: {p1} then {p2}");
    let progress = b
        .shown("#progress-text")
        .await
        .text()
        .await
        .expect("progress");
    assert!(
        progress.ends_with("of 20 s"),
        "the step's length is known live: {progress}"
    );
    assert_eq!(b.body("data-status").await.as_deref(), Some("running"));
    b.shot("05-live").await;
    b.assert_no_errors("live run page").await;

    // A reload mid-run shows the history again.
    assert_eq!(
        b.body("data-status").await.as_deref(),
        Some("running"),
        "still running at the reload (a longer run is needed on a slow machine)"
    );
    b.client.refresh().await.expect("reload");
    wait_for("the history after the reload", WAIT, || async {
        (b.body_num("data-intervals").await >= n2).then_some(())
    })
    .await;
    b.shot("06-reloaded").await;
    b.full_shot("07-live-full-page", false).await;

    let status = wait_status(b, "the run to end", Duration::from_secs(120), &TERMINAL).await;
    assert_eq!(status, "completed");
    b.shown("#report-link").await;
    b.shown("#files a").await;
    b.shot("08-finished").await;
    b.full_shot("09-finished-full-page", false).await;
    b.full_shot("10-finished-print", true).await;
    b.assert_no_errors("finished run page").await;
    id
}

/// The finished run's report opens from its page and draws its charts.
async fn report(b: &Browser, id: &str) {
    let link = b.shown("#report-link").await;
    let href = link.attr("href").await.expect("href").expect("a link");
    assert!(href.contains(id) && href.ends_with("report.html"), "{href}");
    link.click().await.expect("open the report");
    b.wait_path("report.html", |p| p.ends_with("/report.html"))
        .await;
    let charts = wait_for("the report's charts", WAIT, || async {
        let n = b.body_num("data-charts").await;
        (n > 0).then_some(n)
    })
    .await;
    assert!(
        b.body_num("data-points").await > 0,
        "{charts} charts, no point"
    );
    b.shot("11-report").await;
    b.assert_no_errors("report.html").await;
}

/// A second run from a pasted plan; returns its id once it completed.
async fn pasted_run(b: &Browser, base: &str) -> String {
    // The fields' plan, taken to the plan form to edit (here: replaced).
    b.client
        .goto(&format!("{base}/new"))
        .await
        .expect("open /new");
    b.click("#to-plan").await;
    let text = b.shown("#plan-form textarea[name=plan]").await;
    let taken = text.prop("value").await.expect("value").unwrap_or_default();
    assert!(
        taken.starts_with("name = \"dashboard-run\"") && taken.contains("[simulator]"),
        "{taken}"
    );
    b.fill("#plan-form textarea[name=plan]", PASTED_PLAN).await;
    b.click("#plan-form button[type=submit]").await;
    let path = b
        .wait_path("the second run's page", |p| p.starts_with("/runs/"))
        .await;
    let status = wait_status(
        b,
        "the second run to end",
        Duration::from_secs(120),
        &TERMINAL,
    )
    .await;
    assert_eq!(status, "completed");
    path.trim_start_matches("/runs/").to_owned()
}

/// Both runs ticked on the list open the comparison page.
async fn compare(b: &Browser, base: &str, first: &str, second: &str) {
    b.client.goto(&format!("{base}/")).await.expect("open /");
    for id in [first, second] {
        let css = format!("tr[data-id=\"{id}\"] input[type=checkbox]");
        // The list refreshes itself: click again if the row was redrawn
        // under the click.
        wait_for(&format!("ticking {id}"), WAIT, || async {
            let e = b.client.find(Locator::Css(&css)).await.ok()?;
            if e.prop("checked").await.ok()?.as_deref() == Some("true") {
                return Some(());
            }
            let _ = e.click().await;
            None
        })
        .await;
    }
    wait_for("the compare button", WAIT, || async {
        let e = b.client.find(Locator::Css("#compare")).await.ok()?;
        e.is_enabled().await.ok()?.then_some(())
    })
    .await;
    b.shot("12-runs-two-ticked").await;
    b.assert_no_errors("runs list").await;
    b.click("#compare").await;
    let path = b
        .wait_path("the comparison", |p| p.starts_with("/compare"))
        .await;
    assert!(path.contains(first) && path.contains(second), "{path}");
    let source = b.client.source().await.expect("page source");
    for name in ["browser-live", "browser-pasted"] {
        assert!(source.contains(name), "the comparison names {name}");
    }
    b.shot("13-compare").await;
    b.assert_no_errors("compare page").await;
}

/// The name filter narrows the list (and stays in the address).
async fn filter(b: &Browser, base: &str, second: &str) {
    b.client.goto(&format!("{base}/")).await.expect("open /");
    b.fill("#filters input[name=name]", "pasted").await;
    b.click("#filters button[type=submit]").await;
    b.wait_path("the filtered list", |p| {
        p == "/?name=pasted&status=&since=&until="
    })
    .await;
    wait_for("one row left", WAIT, || async {
        let rows = b
            .client
            .find_all(Locator::Css("#runs tbody tr"))
            .await
            .ok()?;
        let id = rows.first()?.attr("data-id").await.ok()??;
        (rows.len() == 1 && id == second).then_some(())
    })
    .await;
    b.shot("14-runs-filtered").await;
    b.assert_no_errors("filtered runs list").await;
}

/// A sweep of two steps: the page lets one pick a step and shows its
/// charts.
const SWEEP_PLAN: &str = "name = \"browser-sweep\"\n[request]\nmax_tokens = 16\n\
    [load]\nusers = 1\nduration = \"3s\"\n[sweep]\nusers = [1, 2]\n\
    [simulator]\nttft = \"20ms\"\nitl = \"5ms\"\n";

async fn sweep_steps(b: &Browser, base: &str) {
    b.client
        .goto(&format!("{base}/new#plan"))
        .await
        .expect("open /new");
    // Uploaded as a file this time.
    let file = b.shots.join("sweep.toml");
    std::fs::write(&file, SWEEP_PLAN).expect("plan file");
    let input = b.shown("#plan-form input[type=file]").await;
    input
        .send_keys(&file.display().to_string())
        .await
        .expect("choose the file");
    wait_for("the file in the plan field", WAIT, || async {
        let e = b
            .client
            .find(Locator::Css("#plan-form textarea"))
            .await
            .ok()?;
        (e.prop("value").await.ok()??.as_str() == SWEEP_PLAN).then_some(())
    })
    .await;
    b.click("#plan-form button[type=submit]").await;
    b.wait_path("the sweep's page", |p| p.starts_with("/runs/"))
        .await;
    let status = wait_status(b, "the sweep to end", Duration::from_secs(120), &TERMINAL).await;
    assert_eq!(status, "completed");
    let options = b
        .client
        .find_all(Locator::Css("#step-pick option"))
        .await
        .expect("steps");
    assert_eq!(options.len(), 2, "one choice per step");
    let last = b.body_num("data-intervals").await;
    assert!(last > 0, "the last step's intervals are drawn");
    let first = options[0]
        .attr("value")
        .await
        .expect("value")
        .expect("a step");
    assert_eq!(first, "1", "a sweep's steps count from 1");
    options[0].click().await.expect("pick step 1");
    wait_for("step 1's charts", WAIT, || async {
        let picked = b.shown("#step-pick").await.prop("value").await.ok()??;
        let label = b.shown("#step-label").await.text().await.ok()?;
        let drawn = b.body_num("data-points").await > 0;
        (picked == first && drawn && label.starts_with("step 2")).then_some(())
    })
    .await;
    b.shot("15-sweep-step-1").await;
    b.assert_no_errors("sweep page").await;
}

/// A run cancelled from its page ends `cancelled`; deleting it from its
/// page removes it from the list.
async fn cancel_and_delete(b: &Browser, base: &str, svc: &TestService) {
    let plan = "name = \"browser-cancel\"\n[load]\nusers = 1\nduration = \"60s\"\n[simulator]\n";
    let run = svc.api.submit(plan).await;
    let id = run["id"].as_str().expect("id").to_owned();
    b.client
        .goto(&format!("{base}/runs/{id}"))
        .await
        .expect("open the run");
    wait_status(b, "the run to start", WAIT, &["running"]).await;
    wait_for("two intervals before the cancel", WAIT, || async {
        (b.body_num("data-intervals").await >= 2).then_some(())
    })
    .await;
    b.click("#cancel").await;
    let status = wait_status(b, "the cancel", Duration::from_secs(30), &TERMINAL).await;
    assert_eq!(status, "cancelled");
    assert!(
        b.body_num("data-intervals").await >= 2,
        "what it measured is still drawn"
    );
    b.shown("#delete").await;
    b.shot("16-cancelled").await;
    b.assert_no_errors("cancelled run page").await;
    b.click("#delete").await;
    b.client.accept_alert().await.expect("confirm the delete");
    b.wait_path("the list after the delete", |p| p == "/").await;
    let (code, _) = svc.api.json(&format!("/api/runs/{id}")).await;
    assert_eq!(code, 404, "the run is gone");
}

/// A run that cannot start (its dataset file is missing) ends `error`; its
/// page says why, in the queue's words.
async fn error_run(b: &Browser, base: &str, svc: &TestService) {
    b.client
        .goto(&format!("{base}/new#plan"))
        .await
        .expect("open /new");
    let plan = "name = \"browser-error\"\n[dataset]\nkind = \"lines\"\npath = \"missing.txt\"\n\
        [load]\nusers = 1\nrequests = 2\n[simulator]\n";
    b.fill("#plan-form textarea[name=plan]", plan).await;
    b.click("#plan-form button[type=submit]").await;
    let path = b
        .wait_path("the run's page", |p| p.starts_with("/runs/"))
        .await;
    let status = wait_status(b, "the run to fail", WAIT, &TERMINAL).await;
    assert_eq!(status, "error");
    let said = b.shown("#run-error").await.text().await.expect("text");
    let run = svc.api.run(path.trim_start_matches("/runs/")).await;
    assert_eq!(said.trim(), run["error"].as_str().expect("error").trim());
    assert!(said.contains("missing.txt"), "{said}");
    let note = b.shown("#charts-note").await.text().await.expect("note");
    assert_eq!(note, "No interval was recorded.");
    b.shot("17-error-run").await;
    b.assert_no_errors("error run page").await;
}

/// The batch form shows the API's message for a bad batch, word for word.
async fn batch_message(b: &Browser, base: &str, svc: &TestService) {
    b.client
        .goto(&format!("{base}/new#batch"))
        .await
        .expect("open /new");
    b.fill("#batch-form input[name=name]", "browser-batch")
        .await;
    b.fill("#batch-form input[name=description]", "from the browser")
        .await;
    b.fill("#batch-form input[name=num_prompts_list]", "10, 20")
        .await;
    b.fill("#batch-form input[name=max_concurrency_list]", "2")
        .await;
    b.fill("#batch-form input[name=input_output_pairs]", "32:8")
        .await;
    b.click("#batch-form button[type=submit]").await;
    let shown = wait_for("the batch's error on the page", WAIT, || async {
        let e = b
            .client
            .find(Locator::Css("#batch-form .error"))
            .await
            .ok()?;
        let t = e.text().await.ok()?;
        (!t.trim().is_empty()).then_some(t)
    })
    .await;
    // What the form sent, sent again.
    let same = json!({"name": "browser-batch", "description": "from the browser",
        "num_prompts_list": [10, 20], "max_concurrency_list": [2], "input_output_pairs": [[32, 8]]});
    let res = svc
        .api
        .req(reqwest::Method::POST, "/api/batch")
        .json(&same)
        .send()
        .await
        .expect("POST /api/batch");
    assert_eq!(res.status(), 400);
    let v: Value = res.json().await.expect("JSON error");
    let message = v["error"]["message"].as_str().expect("message");
    assert_eq!(shown.trim(), message.trim());
    assert!(message.contains("same length"), "{message}");
    b.shot("18-batch-error").await;
    b.assert_no_errors("batch form").await;

    // Corrected: the batch runs as a sweep of two steps on the simulator.
    b.fill("#batch-form input[name=max_concurrency_list]", "1, 2")
        .await;
    b.click("#batch-form button[type=submit]").await;
    b.wait_path("the batch's page", |p| p.starts_with("/runs/"))
        .await;
    let status = wait_status(b, "the batch to end", Duration::from_secs(120), &TERMINAL).await;
    assert_eq!(status, "completed");
    let steps = b
        .client
        .find_all(Locator::Css("#step-pick option"))
        .await
        .expect("steps");
    assert_eq!(steps.len(), 2, "one step per (prompts, concurrency) pair");
    let meta = b.shown("#run-meta").await.text().await.expect("meta");
    assert!(
        meta.contains("sweep") && meta.contains("from the browser"),
        "{meta}"
    );
    b.shot("19-batch-done").await;
    b.assert_no_errors("batch run page").await;
}

/// A page whose cookie went away sends the user to the login form at its
/// next call (and back after it); "Log out" forgets the token.
async fn session_end(b: &Browser, base: &str) {
    b.client
        .goto(&format!("{base}/new"))
        .await
        .expect("open /new");
    b.shown("#fields-form").await;
    let cookie = b
        .client
        .get_named_cookie("barrage_token")
        .await
        .expect("the login cookie");
    assert_eq!(
        cookie.http_only(),
        Some(true),
        "scripts cannot read the token"
    );
    b.client.goto(&format!("{base}/")).await.expect("open /");
    b.shown("#runs").await;
    b.client
        .delete_all_cookies()
        .await
        .expect("forget the cookie");
    // The list refreshes itself every few seconds: that call gets a 401.
    b.wait_path("the login page after a 401", |p| p == "/login?next=%2F")
        .await;
    b.fill("#login input[name=token]", TOKEN).await;
    b.click("#login button[type=submit]").await;
    b.wait_path("back to the list", |p| p == "/").await;
    b.click("header.bar a.logout").await;
    b.wait_path("the login page after logging out", |p| {
        p.starts_with("/login")
    })
    .await;
    b.client.goto(&format!("{base}/")).await.expect("open /");
    b.wait_path("the login page again", |p| p.starts_with("/login"))
        .await;
    b.fill("#login input[name=token]", TOKEN).await;
    b.click("#login button[type=submit]").await;
    b.wait_path("back to the list", |p| p == "/").await;
}

/// The error check itself: a script error thrown on a page is reported.
async fn errors_are_seen(b: &Browser, base: &str) {
    b.client.goto(&format!("{base}/")).await.expect("open /");
    b.shown("#runs").await;
    b.assert_no_errors("runs list").await;
    b.js("setTimeout(function () { null.boom(); }, 0); return null;")
        .await;
    let errors = wait_for("the provoked error to be seen", WAIT, || async {
        let e = b.errors().await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert!(
        errors.iter().any(|e| e.contains("boom")),
        "the provoked error: {errors:?}"
    );
}

/// Every `src="..."` and `href="..."` value of a page.
fn links(html: &str) -> Vec<String> {
    ["src=\"", "href=\""]
        .iter()
        .flat_map(|key| {
            html.split(key)
                .skip(1)
                .filter_map(|rest| rest.split('"').next())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Without a browser: the pages carry a policy that allows nothing from
/// elsewhere and link only to this service; the assets need no token, the
/// pages send a stranger to the login form.
#[tokio::test]
async fn dashboard_pages_load_nothing_from_elsewhere_and_sit_behind_the_token() {
    use barrage_controller::service::dashboard::CSP;
    let data = scratch("dashboard-http");
    let svc = TestService::start(&data, Some(TOKEN)).await;
    let stranger = Api::new(svc.api.base.clone(), None);
    let get = |api: &Api, path: &str| api.req(reqwest::Method::GET, path).send();
    for (path, kind) in [
        ("/assets/dashboard.js", "text/javascript"),
        ("/assets/charts.js", "text/javascript"),
        ("/assets/dashboard.css", "text/css"),
    ] {
        let r = get(&stranger, path).await.expect("asset");
        assert_eq!(r.status(), 200, "{path} needs no token");
        let ct = r.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .expect("type");
        assert!(ct.starts_with(kind), "{path}: {ct}");
        assert!(!r.text().await.expect("body").is_empty());
    }
    for path in ["/", "/new", "/runs/r-1"] {
        let r = get(&stranger, path).await.expect("page");
        assert!(r.status().is_redirection(), "{path}: {}", r.status());
        let to = r.headers()[reqwest::header::LOCATION].to_str().expect("to");
        assert!(to.starts_with("/login?next="), "{path} → {to}");
    }
    for (path, api) in [
        ("/", &svc.api),
        ("/new", &svc.api),
        ("/runs/r-1", &svc.api),
        ("/login", &stranger),
    ] {
        let r = get(api, path).await.expect("page");
        assert_eq!(r.status(), 200, "{path}");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .expect("csp");
        assert_eq!(csp, CSP, "{path}");
        let html = r.text().await.expect("html");
        assert!(html.contains("data-page=\""), "{path}");
        for l in links(&html) {
            let local = (l.starts_with('/') && !l.starts_with("//")) || l == "data:,";
            assert!(local, "{path} links to {l}");
        }
    }
    svc.stop().await;
}
