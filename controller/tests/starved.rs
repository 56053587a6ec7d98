//! A starved agent still times what the server did (issue 11): the agent,
//! the controller and a busy-looping CPU hog share one core, the simulator
//! has another to itself. Timed by the kernel's receive timestamps,
//! `chunk_gap` stays within 1 ms at p10/p50/p99 and TTFT at p50 of the
//! simulator's injected values (plus the simulator's own lateness), while
//! the agent's reads trail the arrivals by milliseconds: what read-time
//! figures (the way barrage timed before, and TLS targets still are) would
//! have added. TTFT's p95 and p99 are printed, not asserted: on this
//! loopback setup a few requests now and then run 3–5 ms over.
//!
//! Linux only, with at least 2 cores (it says so and returns otherwise).

#[cfg(target_os = "linux")]
mod linux {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use barrage_common::simulator::SimConfig;
    use barrage_controller::report::Summary;
    use barrage_llm_sim::{SimServer, SimStats};
    use figment::Figment;
    use figment::providers::{Format, Toml};
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;

    const TTFT_MS: f64 = 60.0;
    const ITL_MS: f64 = 25.0;
    /// Busy loops sharing the agent's core (with 3, the TTFT tail grows:
    /// on loopback the server's receive processing of each request runs
    /// on the sender's starved core).
    const HOGS: usize = 1;
    /// Every thread of this test stops by itself after this.
    const LIMIT: Duration = Duration::from_secs(60);

    /// Pins the calling thread (and the threads it starts later) to `cpu`.
    fn pin(cpu: usize) {
        let mut set = CpuSet::new();
        set.set(cpu).expect("cpu index");
        sched_setaffinity(Pid::from_raw(0), &set).expect("sched_setaffinity");
    }

    /// llm-sim on its own thread and core: its address, and a stop flag
    /// whose setting returns the simulator's own statistics.
    fn sim_on(
        cpu: usize,
    ) -> (
        std::net::SocketAddr,
        Arc<AtomicBool>,
        std::thread::JoinHandle<SimStats>,
    ) {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            pin(cpu);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let cfg = SimConfig {
                    ttft: Duration::from_secs_f64(TTFT_MS / 1000.0),
                    itl: Duration::from_secs_f64(ITL_MS / 1000.0),
                    ..SimConfig::default()
                };
                let sim = SimServer::spawn(cfg, ([127, 0, 0, 1], 0).into())
                    .await
                    .expect("sim");
                tx.send(sim.addr()).expect("address");
                let until = Instant::now() + LIMIT;
                while !flag.load(Ordering::Relaxed) && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                sim.stats()
            })
        });
        (rx.recv().expect("sim address"), stop, thread)
    }

    /// Busy loops on the calling thread's core until `stop` (or LIMIT).
    fn hogs(stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
        (0..HOGS)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let until = Instant::now() + LIMIT;
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                })
            })
            .collect()
    }

    fn plan(sim: std::net::SocketAddr, out: &std::path::Path) -> String {
        format!(
            r#"
            name = "starved"
            [target]
            url = "http://{sim}"
            api = "openai-chat"
            stream = true
            [request]
            max_tokens = 12
            [dataset]
            kind = "random"
            input_words = 16
            prompts = 16
            [load]
            users = 8
            warmup = "1s"
            duration = "5s"
            drain = "5s"
            [metrics]
            interval = "500ms"
            [cluster]
            embedded_agents = 1
            [output]
            dir = "{}"
            "#,
            out.display()
        )
    }

    fn run_starved(sim: std::net::SocketAddr) -> Summary {
        let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("starved-{:08x}", rand::random::<u32>()));
        let plan = barrage_common::plan::from_figment(
            Figment::new().merge(Toml::string(&plan(sim, &out))),
        )
        .expect("plan");
        // The controller, its embedded agent and the hogs inherit core 1.
        let stop = Arc::new(AtomicBool::new(false));
        let hogs = hogs(&stop);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let outcome = rt.block_on(async {
            tokio::time::timeout(
                LIMIT,
                barrage_controller::run::execute(
                    plan,
                    barrage_controller::run::RunOptions::default(),
                    tokio_util::sync::CancellationToken::new(),
                ),
            )
            .await
        });
        stop.store(true, Ordering::Relaxed);
        for h in hogs {
            let _ = h.join();
        }
        outcome.expect("bounded").expect("run").summary
    }

    fn pct(s: &Summary, metric: &str, p: &str) -> f64 {
        s.metrics[metric].percentiles[p]
    }

    #[test]
    fn kernel_timestamps_keep_ttft_and_itl_exact_when_the_agent_is_starved() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores < 2 {
            eprintln!("skipped: needs 2 cores to starve the agent but not the simulator");
            return;
        }
        let (sim, sim_stop, sim_thread) = sim_on(0);
        pin(1);
        let s = run_starved(sim);
        sim_stop.store(true, Ordering::Relaxed);
        let stats = sim_thread.join().expect("sim thread");
        // The simulator's own lateness is the server's, not the client's
        // error: the bound allows for it (tiny on an otherwise idle core).
        let server_late_ms = stats.emit_late_p99_us as f64 / 1000.0;
        let bound = 1.0 + server_late_ms;

        assert!(s.requests_ok >= 40, "{} requests ok", s.requests_ok);
        assert_eq!(s.requests_failed, 0);
        let a = &s.accuracy.arrivals;
        assert_eq!(a.read_requests, 0, "{a:?}");
        assert!(a.kernel_requests >= s.requests_ok, "{a:?}");

        // What read times would have added: the agent read its chunks
        // milliseconds after they arrived.
        let lag_p99 = pct(&s, "read_lag", "p99");
        let lag_max = s.metrics["read_lag"].max.unwrap_or(0.0);
        assert!(
            lag_p99 >= 1.0 && lag_max >= 2.0,
            "the hogs did not starve the agent: read lag p99 {lag_p99} ms, max {lag_max} ms"
        );

        // What the kernel's timestamps measured: the injected values.
        let ttft_p50 = pct(&s, "ttft", "p50");
        let ttft_p95 = pct(&s, "ttft", "p95");
        let ttft_p99 = pct(&s, "ttft", "p99");
        let gap_p50 = pct(&s, "chunk_gap", "p50");
        let gap_p99 = pct(&s, "chunk_gap", "p99");
        let gap_p10 = pct(&s, "chunk_gap", "p10");
        eprintln!(
            "starved agent: read lag p99 {lag_p99:.2} / max {lag_max:.2} ms; \
             ttft p50 {ttft_p50:.2} / p95 {ttft_p95:.2} / p99 {ttft_p99:.2} ms (injected {TTFT_MS}); \
             chunk_gap p10 {gap_p10:.2} / p50 {gap_p50:.2} / p99 {gap_p99:.2} ms (injected {ITL_MS}); \
             simulator emit lateness p50 {} / p99 {} / max {} µs",
            stats.emit_late_p50_us, stats.emit_late_p99_us, stats.emit_late_max_us
        );
        for (what, v, want) in [
            ("ttft p50", ttft_p50, TTFT_MS),
            ("chunk_gap p10", gap_p10, ITL_MS),
            ("chunk_gap p50", gap_p50, ITL_MS),
            ("chunk_gap p99", gap_p99, ITL_MS),
        ] {
            assert!(
                (v - want).abs() <= bound,
                "{what} {v:.3} ms is not within 1 ms (+ the simulator's own lateness \
                 {server_late_ms:.3} ms) of the injected {want} ms (read lag p99 {lag_p99:.2} ms)"
            );
        }
        // TTFT's tail is not asserted: in some runs ~5 % of requests ran
        // 3-5 ms over on this loopback setup (see the note on HOGS); it is
        // printed above.
    }
}

#[cfg(not(target_os = "linux"))]
#[test]
fn kernel_timestamps_keep_ttft_and_itl_exact_when_the_agent_is_starved() {
    eprintln!("skipped: kernel receive timestamps are read on Linux only");
}
