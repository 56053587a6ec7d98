//! Test support: `agent` processes on ephemeral loopback ports, plans, and
//! a lock so load-generating tests do not compete for the cores.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use barrage_common::auth::{AttachToken, Token};
use barrage_common::plan::{self, PlanFile};
use barrage_common::simulator::SimConfig;
use barrage_controller::run::{RunError, RunOptions, RunOutcome};
use barrage_llm_sim::SimServer;
use barrage_proto::agent::v1::{self as pb, agent_client::AgentClient, controller_msg};
use figment::Figment;
use figment::providers::{Format, Toml};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub static LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
pub const TEST_LIMIT: Duration = Duration::from_secs(120);
pub const TOKEN_VAR: &str = "BARRAGE_TEST_AGENT_TOKEN";

/// A running `agent serve` process; killed when dropped.
pub struct AgentProcess {
    pub child: Child,
    pub addr: String,
}

impl AgentProcess {
    pub fn start(token: &str, extra: &[&str]) -> Self {
        Self::start_on("127.0.0.1:0", token, extra)
    }

    /// An agent on a given address (a port reserved with [`free_port`]).
    pub fn start_on(listen: &str, token: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
            .args([
                "serve",
                "--listen",
                listen,
                "--token-env",
                TOKEN_VAR,
                "--threads",
                "1",
            ])
            .args(extra)
            .env(TOKEN_VAR, token)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agent");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("address line");
        let addr = line.trim().rsplit(' ').next().expect("addr").to_owned();
        assert!(
            addr.starts_with("127.0.0.1:"),
            "unexpected agent output {line:?}"
        );
        Self { child, addr }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address nobody listens on (yet): bound, read, released.
pub fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

pub fn plan_from(text: &str) -> PlanFile {
    plan::from_figment(Figment::new().merge(Toml::string(text))).expect("valid plan")
}

/// A plan named `name` against `sim` through the agents at `agents`, with
/// `sections` (TOML tables, `[load]` among them) between `[request]` and
/// `[cluster]`; results go to a fresh scratch folder.
pub fn cluster_plan(name: &str, sim: &SimServer, agents: &[&str], sections: &str) -> String {
    let list: Vec<String> = agents.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
        name = "{name}"
        [target]
        url = "http://{}"
        [request]
        max_tokens = 8
        {sections}
        [cluster]
        agents = [{}]
        [output]
        dir = "{}"
        "#,
        sim.addr(),
        list.join(", "),
        scratch(name).display()
    )
}

/// Run options that present `token` to the agents.
pub fn opts(token: &str) -> RunOptions {
    RunOptions {
        agent_token: Some(Token::new(token)),
        ..RunOptions::default()
    }
}

/// Waits for a spawned run, bounded by [`TEST_LIMIT`]; a run that errors
/// fails the test.
pub async fn finish(run: tokio::task::JoinHandle<Result<RunOutcome, RunError>>) -> RunOutcome {
    tokio::time::timeout(TEST_LIMIT, run)
        .await
        .expect("bounded")
        .expect("join")
        .expect("run")
}

/// An llm-sim on an ephemeral loopback port.
pub async fn sim_with(cfg: SimConfig) -> SimServer {
    SimServer::spawn(cfg, ([127, 0, 0, 1], 0).into())
        .await
        .expect("sim")
}

/// An llm-sim configured by TOML text.
pub async fn sim_toml(cfg: &str) -> SimServer {
    sim_with(toml::from_str(cfg).expect("sim config")).await
}

/// A raw session client of an agent: the test plays the controller.
pub type RawClient = AgentClient<InterceptedService<Channel, AttachToken>>;

/// Connects a raw session client to `agent`, presenting `token`.
pub async fn raw_client(agent: &AgentProcess, token: &str) -> RawClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", agent.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let attach = AttachToken::new(Some(&Token::new(token))).expect("token");
    AgentClient::with_interceptor(channel, attach)
}

/// A controller message carrying `m`.
pub fn cmsg(m: controller_msg::Msg) -> pb::ControllerMsg {
    pb::ControllerMsg { msg: Some(m) }
}
