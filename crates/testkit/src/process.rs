//! Child processes that cannot outlive the test process, scratch directories, free ports.

use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A free TCP port on 127.0.0.1 (bound and released; callers retry if someone else takes
/// it before their server binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// The directory under which all fixtures of all test processes keep their files.
pub fn scratch_root() -> PathBuf {
    std::env::temp_dir().join("phalanx-testkit")
}

/// A new empty directory `<scratch_root>/<kind>-<pid>-<n>`. The first call of a process
/// also removes the directories of test processes that no longer run.
pub fn scratch_dir(kind: &str) -> anyhow::Result<PathBuf> {
    static SWEPT: OnceLock<()> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let root = scratch_root();
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    SWEPT.get_or_init(|| sweep_dead(&root));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = root.join(format!("{kind}-{}-{n}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

fn sweep_dead(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.split('-').nth(1))
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() as i32 && kill(Pid::from_raw(pid), None).is_err() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

struct SpawnRequest {
    command: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

/// Spawns `command` so that it is killed when the test process dies.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, so every child
/// is forked from one thread that lives as long as the process.
pub fn spawn_tied(mut command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let parent = std::process::id() as i32;
    // SAFETY: the closure only makes async-signal-safe calls (prctl, getppid, _exit).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for mut request in receiver {
                    let _ = request.reply.send(request.command.spawn());
                }
            })
            .expect("start the spawner thread");
        Mutex::new(sender)
    });
    let (reply, result) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(SpawnRequest { command, reply })
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

type ExitHook = Box<dyn FnOnce() + Send>;

fn exit_hooks() -> &'static Mutex<HashMap<u64, ExitHook>> {
    static HOOKS: OnceLock<Mutex<HashMap<u64, ExitHook>>> = OnceLock::new();
    HOOKS.get_or_init(|| {
        extern "C" fn run_exit_hooks() {
            // try_lock: never block process exit on a thread that died holding the lock.
            let hooks = match exit_hooks().try_lock() {
                Ok(mut hooks) => std::mem::take(&mut *hooks),
                Err(_) => return,
            };
            for (_, hook) in hooks {
                hook();
            }
        }
        // SAFETY: registering a plain extern "C" fn with no arguments.
        unsafe {
            libc::atexit(run_exit_hooks);
        }
        Mutex::new(HashMap::new())
    })
}

/// Registers `hook` to run when the process exits normally; returns an id for
/// [`cancel_at_exit`].
pub fn at_exit(hook: impl FnOnce() + Send + 'static) -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    exit_hooks()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, Box::new(hook));
    id
}

/// Cancels a hook registered with [`at_exit`].
pub fn cancel_at_exit(id: u64) {
    exit_hooks()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
}

/// Sends `signal` to `pid` and waits up to `grace` for it to exit, then kills it.
/// Returns true when it exited within the grace period.
pub fn stop_pid(pid: u32, signal: Signal, grace: Duration) -> bool {
    let pid = Pid::from_raw(pid as i32);
    if kill(pid, signal).is_err() {
        return true;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        // Our children become zombies until reaped, so ask waitpid first.
        match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {}
            Ok(_) => return true,
            Err(_) => {
                if kill(pid, None).is_err() {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = kill(pid, Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(pid, None);
    false
}

/// Sends a signal to a child (SIGSTOP, SIGCONT, SIGKILL ...).
pub fn signal(child: &Child, signal: Signal) -> anyhow::Result<()> {
    kill(Pid::from_raw(child.id() as i32), signal)
        .with_context(|| format!("send {signal} to pid {}", child.id()))
}

/// The uid and gid to run a server as: unchanged for an ordinary user, the named system
/// user when running as root (PostgreSQL refuses to run as root).
pub fn server_user(system_user: &str) -> anyhow::Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name(system_user)?.with_context(|| {
        format!("running as root needs the system user {system_user:?} (install the package that creates it)")
    })?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

/// Hands a directory tree to `owner` (when running as root).
pub fn chown_tree(path: &Path, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .context("run chown")?;
    anyhow::ensure!(status.success(), "chown -R {} failed", path.display());
    Ok(())
}

/// Finds a server binary: `$<env_var>/<name>` if set, then `PATH`, then `extra_dirs`.
pub fn find_binary(name: &str, env_var: &str, extra_dirs: &[PathBuf]) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(env_var) {
        let path = PathBuf::from(dir).join(name);
        anyhow::ensure!(
            path.is_file(),
            "{env_var} is set but {} does not exist",
            path.display()
        );
        return Ok(path);
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .iter()
        .chain(extra_dirs)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .with_context(|| {
            format!(
                "{name} not found on PATH or in {extra_dirs:?}; run ./scripts/test (it installs the servers) or set {env_var}"
            )
        })
}

/// Which of `needles` occur anywhere in the readable memory of process `pid` (its heap,
/// stacks and mapped files), read through `/proc/PID/mem`; a test process may read its
/// own children's. Regions the kernel will not let us read are skipped.
pub fn memory_contains(pid: u32, needles: &[&[u8]]) -> io::Result<Vec<bool>> {
    use std::io::{BufRead, Read, Seek, SeekFrom};
    let maps = std::fs::File::open(format!("/proc/{pid}/maps"))?;
    let mut memory = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let longest = needles.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut found = vec![false; needles.len()];
    const CHUNK: usize = 1 << 20;
    let mut buffer = vec![0u8; CHUNK + longest];
    for line in io::BufReader::new(maps).lines() {
        let line = line?;
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let path = fields.nth(3).unwrap_or("");
        if !perms.starts_with('r') || path == "[vvar]" || path == "[vsyscall]" {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        // Chunks overlap by the longest needle, so that none is missed at a boundary.
        let mut at = start;
        let mut carried = 0usize;
        while at < end {
            let want = CHUNK.min((end - at) as usize);
            if memory.seek(SeekFrom::Start(at)).is_err() {
                break;
            }
            let Ok(read) = memory.read(&mut buffer[carried..carried + want]) else {
                break;
            };
            if read == 0 {
                break;
            }
            let window = &buffer[..carried + read];
            for (index, needle) in needles.iter().enumerate() {
                if !found[index] && window.windows(needle.len()).any(|w| w == *needle) {
                    found[index] = true;
                }
            }
            let keep = longest.saturating_sub(1).min(window.len());
            let tail_start = window.len() - keep;
            buffer.copy_within(tail_start..carried + read, 0);
            carried = keep;
            at += read as u64;
        }
    }
    Ok(found)
}
