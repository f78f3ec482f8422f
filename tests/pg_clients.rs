//! The clients people use, against the real server: psycopg2, psycopg 3, SQLAlchemy (1.4 and
//! 2.x) and pandas (the pytest suite in tests/pg/, once per Python environment), and psql.
//!
//! Python environments come from `NYALA_TEST_PYTHONS` (a `:`-separated list of interpreters;
//! `.ci/run` creates them). Without it, or without psql, the parts that need them are
//! skipped with a note, unless `NYALA_REQUIRE_CLIENTS=1` (CI) makes that a failure.

mod common;

use std::path::Path;
use std::process::Command;

use common::Server;

fn required() -> bool {
    std::env::var("NYALA_REQUIRE_CLIENTS").is_ok_and(|v| v == "1")
}

fn skip(what: &str) {
    assert!(!required(), "{what} is required (NYALA_REQUIRE_CLIENTS=1)");
    eprintln!("skipped: {what} not available");
}

#[test]
fn python_clients() {
    let Ok(pythons) = std::env::var("NYALA_TEST_PYTHONS") else {
        return skip("NYALA_TEST_PYTHONS (Python environments with the client libraries)");
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--pg-password", "pw"]);
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pg");
    for python in pythons.split(':').filter(|p| !p.is_empty()) {
        let status = Command::new(python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .arg(&tests)
            .env("NYALA_PG_HOST", server.pg.ip().to_string())
            .env("NYALA_PG_PORT", server.pg.port().to_string())
            .status()
            .unwrap_or_else(|e| panic!("{python}: {e}"));
        assert!(status.success(), "the client tests failed under {python}");
    }
}

#[test]
fn psql() {
    if Command::new("psql").arg("--version").output().is_err() {
        return skip("psql");
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let url = format!("postgresql://nyala@{}/nyala", server.pg);
    let psql = |args: &[&str]| {
        let out = Command::new("psql")
            .arg(&url)
            .args(["-X", "-v", "ON_ERROR_STOP=1"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "psql {args:?} failed: {}{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    psql(&[
        "-c",
        "CREATE TABLE traffic (uid INT, lane SMALLINT, ts TIMESTAMP, speed REAL, PRIMARY KEY (uid, lane, ts))",
        "-c",
        "INSERT INTO traffic VALUES (1, 1, '2026-11-15 08:00:00', 52.5), (1, 2, '2026-11-15 08:00:00', 48)",
    ]);
    let out = psql(&["-c", "SELECT lane, speed FROM traffic ORDER BY lane"]);
    assert!(out.contains(" lane | speed"), "{out}");
    assert!(out.contains("(2 rows)"), "{out}");
    let out = psql(&["-c", "\\dt"]);
    assert!(out.contains("traffic"), "{out}");
    let out = psql(&["-c", "\\d traffic"]);
    for expected in [
        "uid",
        "smallint",
        "timestamp without time zone",
        "real",
        "not null",
    ] {
        assert!(
            out.contains(expected),
            "\\d traffic lacks {expected}: {out}"
        );
    }
}

#[test]
fn psql_over_tls_with_a_password() {
    if Command::new("psql").arg("--version").output().is_err()
        || Command::new("openssl").arg("version").output().is_err()
    {
        return skip("psql and openssl");
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let server = Server::start_with(
        &dir.path().join("data"),
        &[
            "--pg-password",
            "pw",
            "--pg-tls-cert",
            cert.to_str().unwrap(),
            "--pg-tls-key",
            key.to_str().unwrap(),
        ],
    );
    let run = |url: String| {
        Command::new("psql")
            .arg(url)
            .args(["-X", "-A", "-t", "-c", "SELECT 6 * 7"])
            .env("PGPASSWORD", "pw")
            .output()
            .unwrap()
    };
    let out = run(format!(
        "postgresql://nyala@{}/nyala?sslmode=require",
        server.pg
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    // A wrong password is refused over TLS too.
    let out = Command::new("psql")
        .arg(format!(
            "postgresql://nyala@{}/nyala?sslmode=require",
            server.pg
        ))
        .args(["-X", "-c", "SELECT 1"])
        .env("PGPASSWORD", "nope")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));
}
