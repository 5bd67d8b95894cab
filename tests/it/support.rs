//! Pieces the integration test modules share.

use dexscope::sim::SimHandle;

/// The process-wide `reqwest::Client` as `Tenant::from_config` builds it (default HTTP settings),
/// for senders that share it, like the alert webhook.
pub fn shared_reqwest() -> reqwest::Client {
    let root = url::Url::parse("http://127.0.0.1/").unwrap();
    dexscope::http::Client::build_reqwest(&dexscope::http::Settings::new(root.clone(), root))
        .unwrap()
}

/// A loopback address that refuses connections for as long as the returned socket lives.
///
/// The socket is bound and never listens: a connection gets a reset, and no other process can
/// take the port meanwhile, as it could between binding a listener and dropping it.
pub fn refusing_addr() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// The start of a config pointed at the simulated tenant: its tenant and client ids, the three
/// endpoints on its loopback URL, and `[scope] user_group_id`. Callers append the rest of
/// `[scope]` and any further sections.
pub fn sim_config_head(sim: &SimHandle) -> String {
    let base = sim.base_url();
    format!(
        "[tenant]\ntenant_id = \"{}\"\nclient_id = \"{}\"\n\
         [endpoints]\nlogin = \"{base}\"\ngraph = \"{base}\"\ndefender = \"{base}\"\n\
         [scope]\nuser_group_id = \"{}\"\n",
        sim.tenant_id(),
        sim.client_id(),
        sim.user_group_id(),
    )
}

/// Logs captured from the current thread while the value lives.
///
/// One subscriber for the whole test binary (every level, installed on first use) writes each event to
/// the buffer of the thread that emitted it, when that thread is capturing, and drops it
/// otherwise. A subscriber per test (`set_default`) raced with the callsite interest cache that
/// test threads share: an event could miss the buffer, and the test failed now and then.
/// Capturing tests run on a current-thread runtime, so every event they cause is on their thread.
pub struct LogCapture {
    buf: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

thread_local! {
    static CAPTURING: std::cell::RefCell<Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>> =
        const { std::cell::RefCell::new(None) };
}

struct ThreadWriter;

impl std::io::Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURING.with(|c| {
            if let Some(b) = &*c.borrow() {
                b.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn capture_logs() -> LogCapture {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| ThreadWriter)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in the test binary");
    });
    let buf = std::sync::Arc::default();
    CAPTURING.with(|c| *c.borrow_mut() = Some(std::sync::Arc::clone(&buf)));
    LogCapture { buf }
}

impl LogCapture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        CAPTURING.with(|c| *c.borrow_mut() = None);
    }
}

/// Writes a secret file as an operator must: mode 0600, owned by the user running the tests
/// (dexscope refuses a secret file that group or others can read).
pub fn write_secret(path: &std::path::Path, content: impl AsRef<[u8]>) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(content.as_ref()).unwrap();
}

/// `dexscope --config CONFIG run` against the simulated tenant: the sim's secret in the
/// environment, nothing inherited that would change the daemon (`RUST_LOG`, `DEXSCOPE_CONFIG`,
/// `NOTIFY_SOCKET`, `CREDENTIALS_DIRECTORY`), stdout discarded. Callers add to the environment,
/// choose stderr and spawn.
pub fn daemon_command(sim: &SimHandle, config: &std::path::Path) -> std::process::Command {
    use secrecy::ExposeSecret;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_dexscope"));
    command
        .arg("--config")
        .arg(config)
        .arg("run")
        .env_remove("RUST_LOG")
        .env_remove("DEXSCOPE_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env(
            "DEXSCOPE_CLIENT_SECRET",
            sim.client_secret().expose_secret(),
        )
        .stdout(std::process::Stdio::null());
    command
}

/// The lines a child writes to `stream`, collected as they come on a thread of their own (the
/// thread ends when the child closes the stream).
pub type Lines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

pub fn collect_lines(
    stream: impl std::io::Read + Send + 'static,
) -> (Lines, std::thread::JoinHandle<()>) {
    use std::io::BufRead;
    let lines = Lines::default();
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().unwrap().push(line);
            }
        })
    };
    (lines, reader)
}
