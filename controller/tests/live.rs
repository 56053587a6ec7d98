//! The console while a run goes: on a terminal the live view (a progress bar
//! of the stop condition and the last interval's figures, cleared before the
//! summary), through a pipe the plain line per interval, with `--quiet`
//! neither; and summary.txt beside summary.json. The real `controller`
//! binary on the built-in simulator, under a pseudo-terminal made by
//! `script` (util-linux).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{LOAD, controller, output, scratch};

/// A plan on the built-in simulator, results below `dir/out`.
fn plan(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"
        name = "live"
        [request]
        max_tokens = 8
        [dataset]
        kind = "random"
        input_words = 8
        prompts = 10
        [load]
        users = 2
        duration = "1500ms"
        [metrics]
        interval = "250ms"
        [cluster]
        embedded_agents = 1
        [output]
        dir = "{}"
        [simulator]
        ttft = "20ms"
        itl = "5ms"
        {extra}
        "#,
        dir.join("out").display()
    );
    let path = dir.join("plan.toml");
    std::fs::write(&path, text).expect("write plan");
    path
}

/// Whether `script` can give a command a pseudo-terminal here.
fn have_script() -> bool {
    Command::new("script")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `controller run PLAN ARGS` with stdout and stderr on a pseudo-terminal;
/// what the terminal received.
async fn on_a_terminal(plan: &Path, args: &str) -> (Option<i32>, String) {
    let cmd = format!(
        "'{}' run '{}' {args}",
        env!("CARGO_BIN_EXE_controller"),
        plan.display()
    );
    let mut script = Command::new("script");
    // -e: the command's exit status; the typescript itself is discarded.
    script
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null());
    let out = output(script).await;
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn piped(plan: &Path) -> Output {
    let mut cmd = controller();
    cmd.arg("run").arg(plan);
    output(cmd).await
}

/// The only folder below `dir`.
fn only_dir(dir: &Path) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("results")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_gets_the_live_view_and_a_pipe_the_plain_lines() {
    if !have_script() {
        eprintln!("skipped: `script` (util-linux) is not installed, no pseudo-terminal to test on");
        return;
    }
    let _serial = LOAD.lock().await;
    let dir = scratch("live-tty");
    let plan = plan(&dir, "");
    let (code, tty) = on_a_terminal(&plan, "").await;
    assert_eq!(code, Some(0), "{tty}");
    for field in [
        "live [=",
        "/2 s",
        "in-flight ",
        " · ok ",
        " · failed 0",
        "req/s",
        "out tok/s",
        "ttft p50 ",
        "itl p50 ",
    ] {
        assert!(
            tty.contains(field),
            "the live view shows {field:?}: {tty:?}"
        );
    }
    assert!(
        !tty.contains("s] ok "),
        "no plain lines on a terminal: {tty:?}"
    );
    // The bar is cleared (erase-line) after its last frame and before the
    // summary prints.
    let last_frame = tty.rfind("in-flight ").expect("a frame");
    let summary = tty.find("Summary: live").expect("the summary");
    assert!(last_frame < summary);
    assert!(
        tty[last_frame..summary].contains("\x1b[2K"),
        "cleared before the summary: {:?}",
        &tty[last_frame..summary]
    );
    assert!(
        !tty[summary..].contains("in-flight "),
        "nothing of the view after the summary"
    );

    // The same run with stderr piped: a plain line per interval, no escapes.
    let out = piped(&plan).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("s] ok ")).collect();
    assert!(lines.len() >= 4, "a plain line per interval: {stderr}");
    assert!(lines.iter().all(|l| l.contains("ttft p50")), "{stderr}");
    assert!(
        !stderr.contains('\x1b') && !stderr.contains("live ["),
        "{stderr}"
    );
    assert!(stdout.contains("Summary: live"), "{stdout}");

    // --quiet: neither.
    let (code, quiet) = on_a_terminal(&plan, "--quiet").await;
    assert_eq!(code, Some(0), "{quiet}");
    assert!(
        !quiet.contains("in-flight") && !quiet.contains("s] ok "),
        "{quiet:?}"
    );
    assert!(quiet.contains("Summary: live"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_txt_holds_the_console_tables() {
    let _serial = LOAD.lock().await;
    let dir = scratch("live-summary-txt");
    let plan = plan(&dir, "");
    let mut cmd = controller();
    cmd.arg("run").arg(&plan).arg("--quiet");
    let out = output(cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let run = only_dir(&dir.join("out"));
    let text = std::fs::read_to_string(run.join("summary.txt")).expect("summary.txt");
    assert!(
        text.contains("Summary: live") && text.contains("Accuracy budget"),
        "{text}"
    );
    assert!(
        stdout.starts_with(&text),
        "the file is what the console printed:\n{text}\n---\n{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_shows_its_step_and_writes_each_summary_txt() {
    if !have_script() {
        eprintln!("skipped: `script` (util-linux) is not installed, no pseudo-terminal to test on");
        return;
    }
    let _serial = LOAD.lock().await;
    let dir = scratch("live-sweep");
    let plan = plan(&dir, "[sweep]\nusers = [1, 2]\n");
    let text = std::fs::read_to_string(&plan)
        .expect("plan")
        .replace("duration = \"1500ms\"", "duration = \"750ms\"");
    std::fs::write(&plan, text).expect("plan");
    let (code, tty) = on_a_terminal(&plan, "").await;
    assert_eq!(code, Some(0), "{tty}");
    assert!(tty.contains("step 1/2 · users=1 ["), "{tty:?}");
    assert!(tty.contains("step 2/2 · users=2 ["), "{tty:?}");
    // Messages of the run are printed above the view, not erased by it.
    assert!(tty.contains("sweep step 2/2: "), "{tty:?}");
    let sweep = only_dir(&dir.join("out"));
    let table = std::fs::read_to_string(sweep.join("summary.txt")).expect("sweep summary.txt");
    assert!(
        tty.replace("\r\n", "\n").contains(&table),
        "the sweep's table as printed: {table}"
    );
    let steps: Vec<PathBuf> = std::fs::read_dir(&sweep)
        .expect("sweep folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(steps.len(), 2, "{steps:?}");
    for s in steps {
        let text = std::fs::read_to_string(s.join("summary.txt")).expect("step summary.txt");
        assert!(text.contains("Accuracy budget"), "{text}");
    }
}

/// Records the live view's frames of a real run (the pure renderer fed by
/// the run's own events).
struct Frames(
    barrage_controller::live::LiveView,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
);

impl barrage_controller::events::Consumer for Frames {
    fn name(&self) -> &'static str {
        "frames"
    }
    fn event(
        &mut self,
        ev: &barrage_controller::events::RunEvent,
    ) -> Result<(), barrage_controller::events::OutputError> {
        self.0.apply(ev);
        if let (Some(f), Ok(mut v)) = (self.0.frame(), self.1.lock()) {
            v.push(f.text(30));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_view_shows_the_gpu_exporters_reading() {
    let _serial = LOAD.lock().await;
    let (addr, _stop) = crate::monitor::exporter(1).await;
    let dir = scratch("live-gpu");
    let text = std::fs::read_to_string(plan(
        &dir,
        &format!("[monitor]\ngpu_exporters = [\"{addr}\"]\nscrape_interval = \"100ms\"\n"),
    ))
    .expect("plan");
    let frames = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let opts = barrage_controller::run::RunOptions {
        monitor_token: Some(barrage_common::auth::Token::new(crate::monitor::TOKEN)),
        ..Default::default()
    };
    let mut outputs = barrage_controller::outputs::defaults(&opts);
    outputs.push(Box::new(Frames(Default::default(), frames.clone())));
    let outcome = tokio::time::timeout(
        crate::support::TEST_LIMIT,
        barrage_controller::run::execute_with(
            crate::support::plan_from(&text),
            opts,
            tokio_util::sync::CancellationToken::new(),
            outputs,
        ),
    )
    .await
    .expect("bounded")
    .expect("run");
    assert!(outcome.summary.requests_ok > 0);
    let frames = frames.lock().expect("lock").clone();
    assert!(
        frames.iter().any(|f| f.contains(" · gpu 70 %")),
        "the fake exporter's 70 %: {frames:#?}"
    );
    assert!(
        frames
            .iter()
            .any(|f| f.starts_with("live [") && f.contains("/2 s")),
        "{frames:#?}"
    );
}

/// Ctrl-C typed on the terminal (the pseudo-terminal turns it into SIGINT):
/// the view is cleared, the summary of what was measured prints, and
/// nothing is left hidden (the cursor) or half-drawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_a_terminal_clears_the_view_and_prints_the_summary() {
    use std::io::{Read, Write};
    if !have_script() {
        eprintln!("skipped: `script` (util-linux) is not installed, no pseudo-terminal to test on");
        return;
    }
    let _serial = LOAD.lock().await;
    let dir = scratch("live-ctrl-c");
    let plan = plan(&dir, "");
    let text = std::fs::read_to_string(&plan)
        .expect("plan")
        .replace("duration = \"1500ms\"", "duration = \"60s\"");
    std::fs::write(&plan, text).expect("plan");
    let cmd = format!(
        "'{}' run '{}'",
        env!("CARGO_BIN_EXE_controller"),
        plan.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn script");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&all).contains("in-flight ") {
                let _ = tx.send(());
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let going = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
        .await
        .expect("join");
    let mut stdin = child.stdin.take().expect("stdin");
    if going.is_err() {
        let _ = child.kill();
        panic!("the live view never drew");
    }
    stdin.write_all(b"\x03").expect("type Ctrl-C");
    stdin.flush().expect("flush");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the controller did not stop within 30 s of Ctrl-C");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(stdin);
    let tty = reader.join().expect("reader");
    assert_eq!(status.code(), Some(130), "interrupted: {tty:?}");
    let last_frame = tty.rfind("in-flight ").expect("a frame");
    let summary = tty.find("Summary: live").expect("the summary");
    assert!(last_frame < summary, "{tty:?}");
    assert!(
        tty[last_frame..summary].contains("\x1b[2K"),
        "cleared before the summary: {:?}",
        &tty[last_frame..summary]
    );
    assert!(tty[summary..].contains("interrupted"), "{tty:?}");
    assert!(
        tty[..summary].contains("interrupted: stopping all agents"),
        "the stop message survives the view: {tty:?}"
    );
    // The cursor is never hidden, so nothing has to restore it.
    assert!(!tty.contains("\x1b[?25l"), "{tty:?}");
}
