//! The real `nyala serve` process, as the server benchmarks (`grpc.rs`, `mixed.rs`) drive it,
//! and the helpers both use. Each bench uses a part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nyala_client::Client;

/// An environment variable as a number, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile (0..=1) of `v`; NaN when `v` is empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p) as usize]
}

/// A `nyala serve` child process (this profile's binary) on loopback: gRPC on `port`, HTTP on
/// `port + 1`, PostgreSQL on an ephemeral port. Killed when dropped.
pub struct Server {
    child: Child,
    http: u16,
}

impl Server {
    pub fn start(dir: &std::path::Path, port: u16) -> Server {
        let child = Command::new(env!("CARGO_BIN_EXE_nyala"))
            .args(["serve", "--log", "warn", "--data-dir"])
            .arg(dir)
            .args(["--grpc-addr", &format!("127.0.0.1:{port}")])
            .args(["--http-addr", &format!("127.0.0.1:{}", port + 1)])
            .args(["--pg-addr", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .spawn()
            .expect("the nyala binary");
        Server {
            child,
            http: port + 1,
        }
    }

    /// SIGTERM and wait: the server flushes every buffer on the way out.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// The server's resident memory, in MiB.
    pub fn rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }

    /// A metric from `/metrics` (summed over its label sets); NaN if the server does not answer.
    pub fn metric(&self, name: &str) -> f64 {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.http)) else {
            return f64::NAN;
        };
        let _ = write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until background flushes and compactions have stopped (none running and the
    /// compaction count unchanged for two seconds, at most five minutes); returns the seconds
    /// waited.
    pub fn wait_for_idle_maintenance(&self) -> f64 {
        let started = Instant::now();
        let (mut last, mut quiet) = (f64::NAN, 0);
        while quiet < 4 && started.elapsed() < Duration::from_secs(300) {
            std::thread::sleep(Duration::from_millis(500));
            let done = self.metric("nyala_maintenance_compactions_total");
            if self.metric("nyala_maintenance_running") == 0.0 && done == last {
                quiet += 1;
            } else {
                quiet = 0;
            }
            last = done;
        }
        started.elapsed().as_secs_f64()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of the server at `url`, retrying while it starts (up to two minutes).
pub async fn connect(url: &str) -> Client {
    let started = Instant::now();
    loop {
        match Client::connect(url).await {
            Ok(c) => return c,
            Err(e) if started.elapsed() > Duration::from_secs(120) => panic!("{e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
