//! The one-machine default: N in-process agents served over the real gRPC
//! service on loopback ports, so one machine and a cluster run the same code
//! path. Each gets its own load runtime and a per-run random token.

use std::net::SocketAddr;

use barrage_agent::{AgentOptions, AgentService, server};
use barrage_common::auth::Token;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct EmbeddedAgents {
    pub addrs: Vec<SocketAddr>,
    pub token: Token,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<Result<(), server::ServeError>>>,
}

impl EmbeddedAgents {
    /// Starts `n` agents, each with `load_threads` load worker threads.
    pub async fn start(n: usize, load_threads: usize) -> std::io::Result<Self> {
        let token = Token::new(format!("{:032x}", rand::random::<u128>()));
        let mut me = Self {
            addrs: Vec::new(),
            token: token.clone(),
            stops: Vec::new(),
            tasks: Vec::new(),
        };
        for i in 0..n {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            me.addrs.push(listener.local_addr()?);
            let service = AgentService::new(AgentOptions {
                agent_id: format!("embedded-{i}"),
                load_threads,
                ..AgentOptions::default()
            })?;
            let (stop, stopped) = oneshot::channel();
            me.stops.push(stop);
            let token = Some(token.clone());
            me.tasks.push(tokio::spawn(async move {
                server::serve(listener, service, token, async {
                    let _ = stopped.await;
                })
                .await
            }));
        }
        Ok(me)
    }

    pub async fn shutdown(self) {
        for s in self.stops {
            let _ = s.send(());
        }
        for t in self.tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
    }
}
