//! What the multi-process tests share: child processes of the test binary read line by line, and
//! schemas of their own on the shared server.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The server every test but the restart test uses.
pub fn url() -> String {
    std::env::var("HERALD_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema name of this process for `test`; schemas of dead processes with `prefix` are dropped.
pub async fn fresh_schema(prefix: &str, test: &str) -> String {
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
            &[&format!("{prefix}\\_%")],
        )
        .await
        .unwrap();
    for r in rows {
        let name: String = r.get(0);
        let pid: Option<u32> = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('_').nth(1)?.parse().ok());
        if pid.is_some_and(|p| p != std::process::id() && !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .await;
        }
    }
    let schema = format!("{prefix}_{}_{test}", std::process::id());
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .unwrap();
    schema
}

/// Drops `schema` (best effort: a failure only leaves it for the next run to drop).
pub async fn drop_schema(schema: &str) {
    if let Ok((client, conn)) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await {
        tokio::spawn(conn);
        let _ = client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await;
    }
}

/// A line a child wrote, with which child and when the parent read it.
#[derive(Debug, Clone)]
pub struct Line {
    pub child: usize,
    pub text: String,
    pub at_ms: i64,
}

/// Children of this test binary, their stdout lines merged into one channel. Killed when dropped.
pub struct Children {
    children: Vec<Option<Child>>,
    tx: mpsc::Sender<Line>,
    pub lines: mpsc::Receiver<Line>,
}

impl Children {
    pub fn new() -> Self {
        let (tx, lines) = mpsc::channel();
        Children {
            children: Vec::new(),
            tx,
            lines,
        }
    }

    /// Starts the test `entry` of this binary again, with `env`, under `wrapper` (a command and
    /// its arguments, such as `faketime -f +2s`) if given. Returns the child's index.
    pub fn spawn(&mut self, entry: &str, env: &[(&str, String)], wrapper: &[&str]) -> usize {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(["--exact", entry, "--nocapture", "--test-threads=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let index = self.children.len();
        let stdout = child.stdout.take().unwrap();
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(text) = line else { return };
                let at_ms = herald_core::Timestamp::now_system().as_millis();
                if tx
                    .send(Line {
                        child: index,
                        text,
                        at_ms,
                    })
                    .is_err()
                {
                    return;
                }
            }
        });
        self.children.push(Some(child));
        index
    }

    /// Reads lines until `enough` says so, failing after `deadline`; returns every line read.
    pub fn read_until(&self, what: &str, deadline: Duration, mut enough: impl FnMut(&Line) -> bool) -> Vec<Line> {
        let until = Instant::now() + deadline;
        let mut seen = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = enough(&line);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(e) => panic!("waiting for {what}: {e}; read {} lines: {:?}", seen.len(), seen.last()),
            }
        }
    }

    /// Kills child `index` with SIGKILL and waits for it.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut c) = self.children.get_mut(index).and_then(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills every child, then returns the lines not read yet.
    pub fn kill_all(&mut self) -> Vec<Line> {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        // The reader threads end with the pipes; what they read is in the channel.
        let mut rest = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            rest.push(l);
        }
        rest
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

/// In a child: exits when the parent closes our stdin (it finished or died), so that no child
/// outlives its test.
pub fn exit_with_parent() {
    std::thread::spawn(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
        std::process::exit(0);
    });
}

/// `values` sorted, and the value at quantile `q` of them.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let i = ((values.len() - 1) as f64 * q).round() as usize;
    values[i]
}
