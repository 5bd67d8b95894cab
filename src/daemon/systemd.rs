//! systemd integration: `sd_notify` messages (sent off the runtime) and the watchdog, fed only
//! while every loop shows progress.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::lock;

/// Sends a notification to systemd; a no-op when `NOTIFY_SOCKET` is unset. The datagram is sent
/// from a dedicated thread, because a send blocks while the service manager's queue is full and
/// must never stall the runtime; when even the hand-over queue is full the message is dropped
/// (the next status or ping supersedes it). A failure to send is logged at debug.
pub fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Some(tx) = notifier() {
        let message: String = states.iter().map(|s| format!("{s}\n")).collect();
        let _ = tx.try_send(Note::Send(message));
    }
}

/// Waits (up to `limit`) until the notifications handed over so far were sent: called before
/// the process exits, so `STOPPING=1` is not lost.
pub fn notify_flush(limit: Duration) {
    if let Some(tx) = notifier() {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        if tx.try_send(Note::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(limit);
        }
    }
}

enum Note {
    Send(String),
    Flush(std::sync::mpsc::SyncSender<()>),
}

fn notifier() -> Option<&'static std::sync::mpsc::SyncSender<Note>> {
    use std::sync::OnceLock;
    use std::sync::mpsc::{SyncSender, sync_channel};
    static SENDER: OnceLock<Option<SyncSender<Note>>> = OnceLock::new();
    SENDER
        .get_or_init(|| {
            std::env::var_os("NOTIFY_SOCKET")?;
            let (tx, rx) = sync_channel::<Note>(64);
            std::thread::Builder::new()
                .name("sd-notify".into())
                .spawn(move || {
                    for note in rx {
                        match note {
                            Note::Send(message) => {
                                let state = sd_notify::NotifyState::Custom(message.trim_end());
                                if let Err(e) = sd_notify::notify(&[state]) {
                                    tracing::debug!(error = %e, "cannot notify the service manager");
                                }
                            }
                            Note::Flush(done) => {
                                let _ = done.try_send(());
                            }
                        }
                    }
                })
                .ok()?;
            Some(tx)
        })
        .as_ref()
}

/// Sets the systemd status line.
pub(super) fn status(text: &str) {
    notify(&[sd_notify::NotifyState::Status(text)]);
}

/// When each loop must next show progress. The watchdog is fed only while every deadline is
/// in the future, so a hung pass or a dead loop lets systemd restart the daemon.
#[derive(Debug, Default)]
pub struct Progress {
    deadlines: Mutex<BTreeMap<&'static str, Instant>>,
}

impl Progress {
    pub fn reset(&self, loops: &[(&'static str, Instant)]) {
        let mut d = lock(&self.deadlines);
        d.clear();
        d.extend(loops.iter().copied());
    }

    pub fn set(&self, name: &'static str, deadline: Instant) {
        lock(&self.deadlines).insert(name, deadline);
    }

    /// `Ok` while every loop is within its deadline; else the first late loop.
    pub fn check(&self, now: Instant) -> Result<(), &'static str> {
        match lock(&self.deadlines).iter().find(|(_, d)| **d < now) {
            Some((name, _)) => Err(name),
            None => Ok(()),
        }
    }
}

/// Feeds the systemd watchdog at half its interval while [`Progress::check`] passes.
pub(super) async fn watchdog(progress: Arc<Progress>) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut tick = tokio::time::interval(interval / 2);
    let mut late = None;
    loop {
        tick.tick().await;
        match progress.check(Instant::now()) {
            Ok(()) => {
                late = None;
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
            Err(name) if late != Some(name) => {
                late = Some(name);
                tracing::error!(
                    r#loop = name,
                    "the {name} loop made no progress within its interval; not feeding the \
                     watchdog, so systemd restarts dexscope"
                );
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reports_the_first_late_loop() {
        let p = Progress::default();
        let t = Instant::now();
        p.reset(&[
            ("a", t + Duration::from_secs(10)),
            ("b", t + Duration::from_secs(5)),
        ]);
        assert_eq!(p.check(t), Ok(()));
        assert_eq!(p.check(t + Duration::from_secs(6)), Err("b"));
        p.set("b", t + Duration::from_secs(20));
        assert_eq!(p.check(t + Duration::from_secs(6)), Ok(()));
        assert_eq!(p.check(t + Duration::from_secs(11)), Err("a"));
    }
}
