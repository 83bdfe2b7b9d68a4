//! OS view of a replica's processes: identity from /proc (start time and
//! cmdline, so a reused pid is never mistaken for our server), exit detection
//! through a pidfd (works for processes that are no longer our children), and
//! signals to the whole process group.

use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// How often exit is polled where pidfds are not available (kernels < 5.3).
const EXIT_POLL: Duration = Duration::from_millis(200);

/// Fields of /proc/<pid>/stat the supervisor relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub pgrp: i32,
    /// Field 22: start time in clock ticks since boot; with the pid, it names
    /// one process for the whole uptime of the host.
    pub start_time: u64,
}

/// Reads /proc/<pid>/stat. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from its closing parenthesis.
pub fn proc_stat(pid: u32) -> io::Result<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: unexpected format"),
        )
    })
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // fields[0] is field 3 of the man page.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The argv a process runs with, from /proc/<pid>/cmdline.
pub fn cmdline(pid: u32) -> io::Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect())
}

fn is_gone(state: char) -> bool {
    matches!(state, 'Z' | 'X' | 'x')
}

/// Whether `pid` is still the process that was started from `executable`
/// with `argv` at `start_time`: alive (not a zombie), same start time, and a
/// cmdline that is `argv`, or `argv` as the kernel rewrites it for a `#!`
/// script (interpreter, its argument, the script path, then `argv[1..]`).
pub fn is_same_process(
    pid: u32,
    start_time: u64,
    argv: &[String],
    executable: &str,
) -> Result<(), String> {
    if pid == 0 {
        return Err("no process was recorded".into());
    }
    let stat = proc_stat(pid).map_err(|_| format!("pid {pid} is gone"))?;
    if is_gone(stat.state) {
        return Err(format!("pid {pid} has exited"));
    }
    if stat.start_time != start_time {
        return Err(format!(
            "pid {pid} now belongs to another process (start time {} ≠ recorded {start_time})",
            stat.start_time
        ));
    }
    let now = cmdline(pid).map_err(|e| format!("pid {pid}: cannot read cmdline: {e}"))?;
    if !cmdline_matches(&now, argv, executable) {
        return Err(format!(
            "pid {pid} runs {:?}, not the recorded {:?}",
            now.join(" "),
            argv.join(" ")
        ));
    }
    Ok(())
}

fn cmdline_matches(seen: &[String], argv: &[String], executable: &str) -> bool {
    if seen == argv {
        return true;
    }
    let Some((arg0, args)) = argv.split_first() else {
        return false;
    };
    // A script run through its #! line: at most interpreter + one argument
    // before the script's path, which replaces argv[0].
    let Some(head_len) = seen.len().checked_sub(args.len()) else {
        return false;
    };
    let (head, tail) = seen.split_at(head_len);
    (2..=3).contains(&head.len())
        && tail == args
        && head
            .last()
            .is_some_and(|script| script == executable || script == arg0)
}

/// Live (non-zombie) members of process group `pgid`. Zombies are skipped:
/// they hold no memory, and whether they are reaped depends on the host's init.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            proc_stat(*pid).is_ok_and(|s| s.pgrp as i64 == pgid as i64 && !is_gone(s.state))
        })
        .collect()
}

/// Sends `signal` to every process of group `pgid`; a group that is already
/// empty is not an error.
pub fn signal_group(pgid: u32, signal: Signal) -> Result<(), Errno> {
    match killpg(Pid::from_raw(pgid as i32), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether a process with this pid exists at all (zombies included).
pub fn pid_exists(pid: u32) -> bool {
    !matches!(kill(Pid::from_raw(pid as i32), None), Err(Errno::ESRCH))
}

/// Whether the process runs with effective uid 0 (`/proc/PID/status`);
/// false when that cannot be read.
pub fn runs_as_root(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            uids.split_whitespace().nth(1).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// How a replica's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitHow {
    Code(i32),
    Signal(Signal),
    /// Not our child (adopted after an agent restart): the kernel gives its
    /// exit status to its parent, not to us.
    Unknown,
}

impl fmt::Display for ExitHow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitHow::Code(c) => write!(f, "exited with code {c}"),
            ExitHow::Signal(s) => write!(f, "killed by {s}"),
            ExitHow::Unknown => {
                f.write_str("exited (status unknown: adopted after an agent restart)")
            }
        }
    }
}

/// Collects the exit status of `pid` if it is our child and has exited;
/// `None` while it is still running.
pub fn reap(pid: u32) -> Option<ExitHow> {
    match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Some(ExitHow::Code(code)),
        Ok(WaitStatus::Signaled(_, sig, _)) => Some(ExitHow::Signal(sig)),
        Ok(_) => None,
        Err(_) => (!pid_exists(pid) || proc_stat(pid).is_ok_and(|s| is_gone(s.state)))
            .then_some(ExitHow::Unknown),
    }
}

/// Resolves when process `pid` (started at `start_time`) has exited, whether
/// or not it is our child, and returns how it ended (reaping it if ours).
pub async fn wait_exit(pid: u32, start_time: u64) -> ExitHow {
    match open_pidfd(pid) {
        // SAFETY: the AsyncFd takes the OwnedFd, so the descriptor stays open
        // and names this pidfd for the AsyncFd's whole life.
        Ok(fd) => match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
            Ok(fd) => {
                // A pidfd turns readable once the process has terminated.
                if let Ok(mut guard) = fd.readable().await {
                    guard.retain_ready();
                }
            }
            Err(_) => poll_exit(pid, start_time).await,
        },
        Err(Errno::ESRCH) => {}
        Err(_) => poll_exit(pid, start_time).await,
    }
    // The pidfd fires when the process is a zombie; waitpid may lag by a moment.
    for _ in 0..50 {
        if let Some(how) = reap(pid) {
            return how;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ExitHow::Unknown
}

async fn poll_exit(pid: u32, start_time: u64) {
    loop {
        if reap(pid).is_some() {
            return;
        }
        let alive = proc_stat(pid).is_ok_and(|s| !is_gone(s.state) && s.start_time == start_time);
        if !alive {
            return;
        }
        tokio::time::sleep(EXIT_POLL).await;
    }
}

fn open_pidfd(pid: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let line = "4242 (my (odd) srv) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.pgrp, 4242);
        assert_eq!(stat.start_time, 987654);
        assert!(parse_stat("garbage").is_none());
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cmdline_of_a_shebang_script_still_matches() {
        let argv = strings(&["vllm", "serve", "/m", "--port", "20001"]);
        let exe = "/opt/vllm/bin/vllm";
        assert!(cmdline_matches(&argv, &argv, exe));
        let shebang = strings(&[
            "/opt/vllm/bin/python",
            exe,
            "serve",
            "/m",
            "--port",
            "20001",
        ]);
        assert!(cmdline_matches(&shebang, &argv, exe));
        // `#!/usr/bin/env python3`, before and after env execs python.
        let env_shebang = strings(&[
            "/usr/bin/env",
            "python3",
            exe,
            "serve",
            "/m",
            "--port",
            "20001",
        ]);
        assert!(cmdline_matches(&env_shebang, &argv, exe));
        let after_env = strings(&["python3", exe, "serve", "/m", "--port", "20001"]);
        assert!(cmdline_matches(&after_env, &argv, exe));
        let too_long = strings(&["a", "b", "c", exe, "serve", "/m", "--port", "20001"]);
        assert!(!cmdline_matches(&too_long, &argv, exe));
        let other_port = strings(&[
            "/opt/vllm/bin/python",
            exe,
            "serve",
            "/m",
            "--port",
            "20002",
        ]);
        assert!(!cmdline_matches(&other_port, &argv, exe));
        let other_script = strings(&[
            "/usr/bin/python",
            "/tmp/evil",
            "serve",
            "/m",
            "--port",
            "20001",
        ]);
        assert!(!cmdline_matches(&other_script, &argv, exe));
        assert!(!cmdline_matches(&[], &argv, exe));
    }

    #[tokio::test]
    async fn identity_and_exit_of_a_real_process() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let stat = proc_stat(pid).unwrap();
        let argv = vec!["sleep".to_string(), "30".to_string()];
        // The spawner resumes while the kernel is still finishing the exec;
        // the new argv shows up a moment later.
        for _ in 0..100 {
            if !cmdline(pid).unwrap().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(cmdline(pid).unwrap(), argv);
        assert!(is_same_process(pid, stat.start_time, &argv, "/usr/bin/sleep").is_ok());
        assert!(
            is_same_process(pid, stat.start_time + 1, &argv, "/usr/bin/sleep")
                .unwrap_err()
                .contains("another process")
        );
        assert!(is_same_process(
            pid,
            stat.start_time,
            &["sleep".to_string()],
            "/usr/bin/sleep"
        )
        .is_err());

        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        let how = tokio::time::timeout(Duration::from_secs(5), wait_exit(pid, stat.start_time))
            .await
            .unwrap();
        assert_eq!(how, ExitHow::Signal(Signal::SIGKILL));
        assert!(child.try_wait().is_err(), "already reaped by wait_exit");
        assert!(is_same_process(pid, stat.start_time, &argv, "/usr/bin/sleep").is_err());
    }
}
