//! The server stops and starts again under a running node: a private PostgreSQL (initdb into a
//! temporary directory, `postgres` on a free loopback port, its socket in that directory) is shut
//! down with SIGQUIT (immediate: no checkpoint, crash recovery at the next start) while a node
//! publishes and handles events, then started again on the same port.
//!
//! Every publish that returned `Ok` is handled; publishes during the outage return errors (never
//! a silent loss); the same runtime goes on once the server is back, without a restart of its own.
//! Skipped, with a message, where the PostgreSQL server binaries are missing (`$HERALD_PG_BIN`, else
//! the newest `/usr/lib/postgresql/*/bin`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use herald_core::{Context, DeliveryStatus, EventId, HandlerError, Herald, SubscriptionName};
use herald_postgres::PostgresStore;
use tokio::sync::Notify;

/// Where the server's binaries are: `$HERALD_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`
/// (Debian's layout).
fn bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HERALD_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists() && bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}
const DEADLINE: Duration = Duration::from_secs(90);

/// The uid and gid to run PostgreSQL as: `postgres` when we are root (it refuses to run as root),
/// else ourselves.
fn server_user() -> Option<(u32, u32)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid: u32 = status
        .lines()
        .find(|l| l.starts_with("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    if uid != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let mut f = line.split(':').skip(2);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

fn as_server_user(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = server_user() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// A private PostgreSQL: its directory, port and (while it runs) its postmaster. Stopped and
/// removed when dropped, also when the test panics.
struct PrivateServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    postmaster: Option<Child>,
}

impl PrivateServer {
    fn init(bin: PathBuf) -> PrivateServer {
        let dir = std::env::temp_dir().join(format!("herald-pg-restart-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some((uid, gid)) = server_user() {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let out = as_server_user(Command::new(bin.join("initdb")).args([
            "-D",
            dir.join("data").to_str().unwrap(),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]))
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        PrivateServer {
            bin,
            dir,
            port,
            postmaster: None,
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the postmaster and waits until it accepts connections (it says so on stderr).
    fn start(&mut self) {
        let mut child = as_server_user(Command::new(self.bin.join("postgres")).args([
            "-D",
            self.dir.join("data").to_str().unwrap(),
            "-p",
            &self.port.to_string(),
            "-k",
            self.dir.to_str().unwrap(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=40",
        ]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        self.postmaster = Some(child);
        let until = Instant::now() + DEADLINE;
        loop {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("ready to accept connections") => return,
                Ok(_) => {}
                Err(e) => panic!("the private PostgreSQL did not start: {e}"),
            }
        }
    }

    /// Stops the postmaster with `signal` (by its PID) and waits for it to exit.
    fn stop(&mut self, signal: &str) {
        if let Some(mut child) = self.postmaster.take() {
            let _ = Command::new("kill").args([signal, &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop("-QUIT");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_server_restart_loses_no_acknowledged_event() {
    let Some(bin) = bin() else {
        println!(
            "SKIPPED a_server_restart_loses_no_acknowledged_event: no PostgreSQL server binaries in \
             /usr/lib/postgresql/*/bin nor $HERALD_PG_BIN (apt-get install postgresql)"
        );
        return;
    };
    let mut server = PrivateServer::init(bin);
    server.start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let handled: Arc<Mutex<HashMap<EventId, u32>>> = Arc::default();
    let progress = Arc::new(Notify::new());
    let herald = rt.block_on(async {
        let store = PostgresStore::builder(server.url())
            .pool_size(8)
            .connect()
            .await
            .unwrap();
        let herald = Herald::builder()
            .store(store)
            .workers(8)
            .lease(Duration::from_secs(2))
            .system_events(false)
            .unbounded()
            .build()
            .await
            .unwrap();
        let (seen, notify) = (handled.clone(), progress.clone());
        herald
            .subscribe("work", "work.>")
            .handle(move |_: u64, ctx: Context| {
                let (seen, notify) = (seen.clone(), notify.clone());
                async move {
                    *seen.lock().unwrap().entry(ctx.event_id()).or_default() += 1;
                    notify.notify_waiters();
                    Ok::<_, HandlerError>(())
                }
            })
            .await
            .unwrap();
        herald
    });

    // Publishers run through the outage, keeping the ids whose publish returned Ok.
    let acked: Arc<Mutex<Vec<EventId>>> = Arc::default();
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..4)
        .map(|_| {
            let (herald, acked, failed, stop, progress) = (
                herald.clone(),
                acked.clone(),
                failed.clone(),
                stop.clone(),
                progress.clone(),
            );
            rt.spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    match herald.publish("work.job", &n).await {
                        Ok(id) => acked.lock().unwrap().push(id),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            // Do not spin while the server is away.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    progress.notify_waiters();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    let wait_for = |what: &str, cond: &dyn Fn() -> bool| {
        rt.block_on(async {
            let until = tokio::time::Instant::now() + DEADLINE;
            loop {
                let woken = progress.notified();
                if cond() {
                    return;
                }
                assert!(tokio::time::Instant::now() < until, "timed out waiting for {what}");
                // Progress notifies; the bound keeps checking if a notification was missed.
                let _ = tokio::time::timeout(Duration::from_millis(100), woken).await;
            }
        })
    };
    wait_for("events before the outage", &|| acked.lock().unwrap().len() >= 300);
    let before_outage = acked.lock().unwrap().len();
    server.stop("-QUIT");
    let failed_before = failed.load(Ordering::Relaxed);
    wait_for("publishes to fail during the outage", &|| {
        failed.load(Ordering::Relaxed) >= failed_before + 200
    });
    let acked_during = acked.lock().unwrap().len() - before_outage;
    server.start();
    let restarted_at = acked.lock().unwrap().len();
    wait_for("events after the restart", &|| {
        acked.lock().unwrap().len() >= restarted_at + 300
    });
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for p in publishers {
            p.await.unwrap();
        }
    });
    let acked: BTreeSet<EventId> = acked.lock().unwrap().iter().copied().collect();
    println!(
        "{} events acknowledged ({before_outage} before the outage, {acked_during} while it began), {} publishes failed",
        acked.len(),
        failed.load(Ordering::Relaxed)
    );
    wait_for("every acknowledged event to be handled", &|| {
        let seen = handled.lock().unwrap();
        acked.iter().all(|id| seen.contains_key(id))
    });
    // And recorded as handled, by the same runtime.
    let sub = SubscriptionName::new("work").unwrap();
    rt.block_on(async {
        let until = tokio::time::Instant::now() + DEADLINE;
        for id in &acked {
            loop {
                let rec = herald
                    .store()
                    .get(*id)
                    .await
                    .unwrap()
                    .expect("an acknowledged event is stored");
                let d = rec.deliveries.iter().find(|d| d.subscription == sub).unwrap();
                if d.status == DeliveryStatus::Succeeded {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < until,
                    "{id} was never recorded handled: {d:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let twice = handled.lock().unwrap().values().filter(|&&n| n > 1).count();
    println!("{twice} events ran twice (their outcome was lost with the server; at least once)");
    rt.block_on(herald.shutdown(Duration::from_secs(5)));
}
