//! A `controller serve` for tests: in-process on an ephemeral loopback
//! port (`TestService`), or the real binary as a child process
//! (`ServiceProcess`, for restarts and signals); a client that speaks its
//! API with the token.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use barrage_controller::service::{self, ServeConfig, Service};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Speaks the service's API: base URL and token.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: Option<String>,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: String, token: Option<&str>) -> Self {
        Self {
            base,
            token: token.map(str::to_owned),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the bearer token (when the service has one).
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let b = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => b.bearer_auth(t),
            None => b,
        }
    }

    /// Submits a TOML plan; its RunInfo (201 expected).
    pub async fn submit(&self, plan: &str) -> Value {
        let resp = self
            .req(reqwest::Method::POST, "/api/runs")
            .body(plan.to_owned())
            .send()
            .await
            .expect("submit");
        let status = resp.status();
        let body: Value = resp.json().await.expect("json");
        assert_eq!(status, 201, "submit: {body}");
        body
    }

    pub async fn json(&self, path: &str) -> (u16, Value) {
        let resp = self
            .req(reqwest::Method::GET, path)
            .send()
            .await
            .expect("get");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn run(&self, id: &str) -> Value {
        let (status, v) = self.json(&format!("/api/runs/{id}")).await;
        assert_eq!(status, 200, "get run {id}: {v}");
        v
    }

    /// Polls run `id` until `done(status)`; its RunInfo. Panics after `limit`.
    pub async fn wait(&self, id: &str, limit: Duration, done: impl Fn(&str) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let run = self.run(id).await;
            if done(run["status"].as_str().unwrap_or("")) {
                return run;
            }
            assert!(start.elapsed() < limit, "run {id} still {run}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the run to end (any terminal state).
    pub async fn wait_end(&self, id: &str, limit: Duration) -> Value {
        self.wait(id, limit, |s| !matches!(s, "queued" | "running"))
            .await
    }

    /// The Server-Sent Events of run `id` until the stream ends: (event,
    /// data) pairs.
    pub async fn events(&self, id: &str, limit: Duration) -> Vec<(String, Value)> {
        let resp = self
            .req(reqwest::Method::GET, &format!("/api/runs/{id}/events"))
            .timeout(limit)
            .send()
            .await
            .expect("events");
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.expect("event stream ends");
        parse_sse(&text)
    }
}

/// (event, data) pairs of an event-stream text.
pub fn parse_sse(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut event = String::from("message");
        let mut data = String::new();
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.trim_start());
            }
        }
        if !data.is_empty() {
            out.push((
                event,
                serde_json::from_str(&data).expect("event data is JSON"),
            ));
        }
    }
    out
}

/// The service in this process.
pub struct TestService {
    pub api: Api,
    pub data: PathBuf,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TestService {
    pub async fn start(data: &Path, token: Option<&str>) -> Self {
        Self::start_with(ServeConfig {
            data: data.to_owned(),
            token: token.map(barrage_common::auth::Token::new),
            ..ServeConfig::default()
        })
        .await
    }

    pub async fn start_with(cfg: ServeConfig) -> Self {
        let svc = Service::open(&cfg).expect("open service");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let task = tokio::spawn(service::serve_on(listener, svc, stop.clone()));
        // The client carries the service's token: tests of refusals make
        // their own with `Api::new(base, None)`.
        let token = cfg.token.as_ref().map(|t| t.expose().to_owned());
        Self {
            api: Api::new(format!("http://{addr}"), token.as_deref()),
            data: cfg.data,
            stop,
            task,
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(40), self.task)
            .await
            .expect("service stops")
            .expect("join");
    }
}

/// `controller serve` as a child process on an ephemeral loopback port.
pub struct ServiceProcess {
    pub api: Api,
    pub child: Child,
}

impl ServiceProcess {
    pub fn start(data: &Path, token: Option<&str>) -> Self {
        let mut cmd = super::controller();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(t) = token {
            cmd.env("TEST_SERVICE_TOKEN", t)
                .args(["--token-env", "TEST_SERVICE_TOKEN"]);
        }
        let mut child = cmd.spawn().expect("spawn controller serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("first line");
        let base = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .map(|a| format!("http://{a}"))
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Self {
            api: Api::new(base, token),
            child,
        }
    }

    /// Kills it at once (no clean-up: as a crash or an OOM kill would).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then its exit status (bounded).
    pub fn terminate(mut self, limit: Duration) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("controller serve did not stop within {limit:?} of SIGTERM");
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plan against the llm-sim at `sim`: `users` closed-loop users for
/// `duration`, results anywhere (the service sets the folder).
pub fn sim_plan(name: &str, sim: std::net::SocketAddr, users: u32, duration: &str) -> String {
    format!(
        "name = \"{name}\"\n\
         [target]\nurl = \"http://{sim}\"\napi = \"openai-chat\"\nstream = true\n\
         [request]\nmax_tokens = 16\n\
         [dataset]\nkind = \"random\"\ninput_words = 32\nprompts = 16\n\
         [load]\nusers = {users}\nduration = \"{duration}\"\ndrain = \"1s\"\n\
         [metrics]\ninterval = \"500ms\"\n"
    )
}
