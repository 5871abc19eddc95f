//! Child processes that cannot outlive the test binary or `wasmop dev`.
//!
//! Three layers make sure no control-plane process is orphaned:
//! - [`Supervised`] kills its process on drop (SIGTERM, then SIGKILL after a grace period);
//! - every process is registered, and an `atexit` hook kills what is still registered when the
//!   program exits normally — a control plane shared through a `static` is never dropped;
//! - every process is spawned from one thread that lives as long as the program, with
//!   `PR_SET_PDEATHSIG=SIGKILL`, so the kernel kills it when the program dies any other way
//!   (a signal, an abort). The death signal follows the *thread* that spawned the child, which
//!   is why spawning happens on that long-lived thread and not on a short-lived test thread.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::Error;

/// Pids of every live supervised process, killed by the `atexit` hook.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Directories removed by the `atexit` hook once the processes are dead.
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes `dir` when the program exits, if it still exists then.
pub fn remove_at_exit(dir: &Path) {
    let _ = spawner();
    if let Ok(mut dirs) = DIRS.lock() {
        dirs.push(dir.to_path_buf());
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// The long-lived spawner thread's inbox.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("controlplane-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // The sender lives in a static, so this loop (and thread) ends only with the program.
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start the control-plane spawner thread"));
        // SAFETY: `kill_all_live` is an `extern "C" fn()` that only locks a mutex and sends signals.
        unsafe { libc::atexit(kill_all_live) };
        Mutex::new(tx)
    })
}

extern "C" fn kill_all_live() {
    let pids = match LIVE.lock() {
        Ok(mut live) => std::mem::take(&mut *live),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    for pid in &pids {
        // SAFETY: plain syscall on a pid we spawned and have not reaped.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    for pid in pids {
        // SAFETY: reaps our own killed child; a null status pointer is allowed.
        unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
    }
    let dirs = match DIRS.lock() {
        Ok(mut dirs) => std::mem::take(&mut *dirs),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A running child process, its name and its log file.
pub struct Supervised {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Supervised {
    /// Starts `program args…` with its stdout and stderr in `log_dir/NAME.log`.
    pub fn spawn(name: &'static str, program: &Path, args: &[String], log_dir: &Path) -> Result<Self, Error> {
        let log = log_dir.join(format!("{name}.log"));
        let file =
            File::create(&log).map_err(|source| Error::Io { what: format!("create {}", log.display()), source })?;
        let err = file.try_clone().map_err(|source| Error::Io { what: format!("open {}", log.display()), source })?;
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(file).stderr(err);
        // Its own process group: a Ctrl-C in the terminal reaches the owner, which stops the
        // control plane in order, instead of killing every process at once.
        command.process_group(0);
        // SAFETY: the closure runs between fork and exec and only calls the async-signal-safe prctl.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (tx, rx) = mpsc::channel();
        let send = spawner()
            .lock()
            .map_err(|_| Error::Spawn { name, reason: "spawner lock poisoned".into() })?
            .send((command, tx));
        send.map_err(|_| Error::Spawn { name, reason: "the spawner thread is gone".into() })?;
        let child = rx
            .recv()
            .map_err(|_| Error::Spawn { name, reason: "the spawner thread is gone".into() })?
            .map_err(|e| Error::Spawn { name, reason: format!("{}: {e}", program.display()) })?;
        if let Ok(mut live) = LIVE.lock() {
            live.push(child.id());
        }
        Ok(Supervised { name, child, log })
    }

    /// The process's name (`etcd`, `kube-apiserver`, …).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `Some(status)` if the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of the process's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Path of the process's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// SIGTERM, then SIGKILL if the process has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let pid = self.child.id();
        if self.exited().is_none() {
            // SAFETY: plain syscall on our own unreaped child.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let deadline = Instant::now() + grace;
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.exited().is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|p| *p != pid);
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}
