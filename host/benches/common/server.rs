//! The in-memory API server in a child process: the bench binary re-executed with
//! [`SERVE_ENV`] set, so the bench process's memory and CPU are the operator's own. The child
//! prints its URL, then answers `reset` and `stats` (request counts by verb and resource) on
//! its stdin until stdin closes.
// Each bench uses part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use wasmop_apiserver::{ApiServer, Config};

/// Set (to the simulator delay in ms, or `off`) in the child that serves.
const SERVE_ENV: &str = "WASMOP_BENCH_SERVE";

/// When this process is the server child, serves until stdin closes and exits; otherwise
/// returns at once. Call first thing in `main`.
pub fn serve_if_child() {
    let Ok(spec) = std::env::var(SERVE_ENV) else { return };
    let delay = spec.parse::<u64>().ok();
    let config = Config {
        simulate_deployments: delay.is_some(),
        simulate_delay: Duration::from_millis(delay.unwrap_or(0)),
        ..Config::default()
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let server = rt.block_on(ApiServer::start(config)).expect("api server");
    println!("{}", server.url());
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "reset" => server.reset_stats(),
            "stats" => {
                for ((verb, resource), n) in &server.stats().counts {
                    println!("{verb} {resource} {n}");
                }
            }
            _ => {}
        }
        println!("end");
    }
    rt.block_on(server.shutdown());
    std::process::exit(0);
}

/// A server running in a child process.
pub struct Remote {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    url: String,
}

impl Remote {
    /// Starts the child; `simulate` is the Deployment simulator's delay (`None`: off).
    pub fn start(simulate: Option<Duration>) -> Remote {
        let spec = simulate.map_or("off".to_string(), |d| d.as_millis().to_string());
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .env(SERVE_ENV, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the server process");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut url = String::new();
        stdout.read_line(&mut url).expect("server url");
        Remote { child, stdin, stdout, url: url.trim().to_string() }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn ask(&mut self, command: &str) -> Vec<String> {
        writeln!(self.stdin, "{command}").expect("server stdin");
        self.stdin.flush().expect("server stdin");
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line).unwrap_or(0) == 0 || line.trim() == "end" {
                return lines;
            }
            lines.push(line.trim().to_string());
        }
    }

    /// Resets the request counts.
    pub fn reset_stats(&mut self) {
        self.ask("reset");
    }

    /// Request counts by (verb, resource) since the last reset.
    pub fn stats(&mut self) -> BTreeMap<(String, String), u64> {
        self.ask("stats")
            .iter()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                Some(((parts.next()?.to_string(), parts.next()?.to_string()), parts.next()?.parse().ok()?))
            })
            .collect()
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        // Closing stdin ends the child; kill it if it does not go.
        let _ = self.stdin.flush();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `VmHWM:`); `pid` `None` for this process.
pub fn memory_kib(pid: Option<u32>, field: &str) -> u64 {
    let path = pid.map_or("/proc/self/status".to_string(), |p| format!("/proc/{p}/status"));
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used; `pid` `None` for this process.
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = pid.map_or("/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let Ok(stat) = std::fs::read_to_string(path) else { return 0.0 };
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse().ok()).collect();
    fields.iter().sum::<u64>() as f64 / 100.0
}
