//! The harness of the end-to-end tests: the real `nyala` binary on ephemeral ports.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nyala_client::{Client, ClientError};

pub struct Server {
    pub child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub pg: SocketAddr,
}

impl Server {
    /// Starts `nyala serve` on `dir` and waits until it says where it listens.
    // The child is waited for by `stop` or, on a failed test, by `Drop`.
    #[allow(clippy::zombie_processes)]
    pub fn start(dir: &Path) -> Server {
        Self::start_with(dir, &[])
    }

    /// `nyala serve` on `dir`, every listener on an ephemeral loopback port, its log on a
    /// pipe (human format unless `flags` say otherwise).
    pub fn command(dir: &Path, flags: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nyala"));
        c.args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--pg-addr",
            "127.0.0.1:0",
        ])
        .args(flags)
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        c
    }

    /// Starts `nyala serve` on `dir` with extra flags.
    #[allow(clippy::zombie_processes)]
    pub fn start_with(dir: &Path, flags: &[&str]) -> Server {
        let flags: Vec<&str> = flags
            .iter()
            .copied()
            .chain(["--log-format", "json"])
            .collect();
        let mut child = Self::command(dir, &flags).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let line = lines
                .next()
                .expect("the server exited before listening")
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let f = &v["fields"];
            if let (Some(g), Some(h), Some(p)) =
                (f["grpc"].as_str(), f["http"].as_str(), f["pg"].as_str())
            {
                // Keep draining the log so the server never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines {});
                return Server {
                    child,
                    grpc: g.parse().unwrap(),
                    http: h.parse().unwrap(),
                    pg: p.parse().unwrap(),
                };
            }
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    /// Sends `signal` and waits for the exit code.
    pub fn stop(mut self, signal: &str) -> Option<i32> {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
        self.child.wait().unwrap().code()
    }
}

impl Drop for Server {
    /// A failed test must not leave a server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

pub fn status(e: ClientError) -> tonic::Status {
    match e {
        ClientError::Status(s) => s,
        other => panic!("expected a status, got {other}"),
    }
}
