//! A real OCI registry (`crane registry serve`, go-containerregistry) and a real client
//! (`oras`), both built by `make registry` into `target/registry/bin`. Shared by the tests and
//! `benches/delivery.rs`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Where `make registry` links the binaries.
pub fn bin(name: &str) -> PathBuf {
    // Not `super::workspace()`: the benches include this file too.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/registry/bin").join(name);
    assert!(path.exists(), "{} is missing: build it with `make registry` (make test does)", path.display());
    path
}

/// A `crane registry serve` on a free loopback port (blobs in memory), stopped when dropped.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`: the registry part of references.
    pub host: String,
}

impl Registry {
    /// Starts a registry and waits until it listens.
    pub fn start() -> Registry {
        let mut child = Command::new(bin("crane"))
            .args(["registry", "serve", "--address", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start crane registry serve");
        let stderr = child.stderr.take().expect("crane's stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // crane logs every request: keep reading so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(port) = line.rsplit("serving on port ").next().filter(|_| line.contains("serving on port "))
                {
                    let _ = tx.send(port.trim().to_string());
                }
            }
        });
        let port = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("crane registry serve did not start");
        Registry { child, host: format!("127.0.0.1:{port}") }
    }

    /// `HOST/REPOSITORY` of this registry.
    pub fn repo(&self, repository: &str) -> String {
        format!("{}/{repository}", self.host)
    }

    /// Stops the registry (connections are refused from now on).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `oras ARGS` in `dir` to its end.
pub fn oras(dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(bin("oras"));
    command.current_dir(dir).args(args);
    if matches!(args.first(), Some(&("push" | "pull"))) {
        command.arg("--no-tty");
    }
    command.output().expect("run oras")
}

/// The standard output of an `oras` run that must have succeeded.
pub fn oras_ok(dir: &Path, args: &[&str]) -> String {
    let out = oras(dir, args);
    assert!(out.status.success(), "oras {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pushes `file` (relative to `dir`) with `oras` in the CNCF Wasm layout; returns the digest.
pub fn oras_push_wasm(dir: &Path, reference: &str, file: &str) -> String {
    std::fs::write(dir.join("config.json"), br#"{"architecture":"wasm","os":"wasip2"}"#).unwrap();
    oras_ok(
        dir,
        &[
            "push",
            "--plain-http",
            reference,
            "--config",
            "config.json:application/vnd.wasm.config.v0+json",
            &format!("{file}:application/wasm"),
            "--format",
            "go-template={{.digest}}",
        ],
    )
    .trim()
    .to_string()
}

/// A loopback address nothing listens on.
pub fn closed_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    address
}

/// `bytes` with a custom section appended: the same component, another content hash (a
/// second build of a plugin, as a new release would be).
pub fn rebuilt(bytes: &[u8], tag: &str) -> Vec<u8> {
    let name = b"wasmop-test-build";
    let payload_len = 1 + name.len() + tag.len();
    let mut out = bytes.to_vec();
    out.push(0);
    leb128(&mut out, payload_len);
    leb128(&mut out, name.len());
    out.extend_from_slice(name);
    out.extend_from_slice(tag.as_bytes());
    out
}

fn leb128(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
