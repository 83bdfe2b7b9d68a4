//! Starting one model-server process: which executable (resolved on PATH and
//! checked against `allowed_executables`), which port, which environment, and
//! the child's isolation: its own session and process group, stdin from
//! /dev/null, output to its log file, optionally another user.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::RangeInclusive;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Variables of the agent's own environment a model server must never see:
/// the agent's credentials, and systemd's per-service handles (a server that
/// wrote to NOTIFY_SOCKET could confuse systemd about the agent's state).
pub const STRIPPED_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "GPUFLEET_TOKEN",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LaunchError {
    #[error("executable {program:?} not found on PATH ({path})")]
    NotOnPath { program: String, path: String },
    #[error("executable {path}: {reason}")]
    NotExecutable { path: PathBuf, reason: String },
    #[error("executable {path} is not in allowed_executables ({allowed})")]
    NotAllowed { path: PathBuf, allowed: String },
    #[error("cannot start {path}: {reason}")]
    Spawn { path: PathBuf, reason: String },
}

/// The user model servers run as, when `run_as` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (video, render: the GPU devices), looked up
    /// when the agent starts.
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

/// Looks `name` up; root is refused, since `run_as` exists to keep model
/// servers away from root.
pub fn resolve_run_as(name: &str) -> Result<RunAs, String> {
    let user = nix::unistd::User::from_name(name)
        .map_err(|e| format!("cannot look up user {name:?}: {e}"))?
        .ok_or_else(|| format!("user {name:?} does not exist on this host"))?;
    if user.uid.is_root() {
        return Err(format!(
            "user {name:?} has uid 0; run_as must name an unprivileged user"
        ));
    }
    let cname = std::ffi::CString::new(name).map_err(|_| format!("user {name:?} holds NUL"))?;
    let groups = nix::unistd::getgrouplist(&cname, user.gid)
        .map_err(|e| format!("cannot list the groups of user {name:?}: {e}"))?;
    Ok(RunAs {
        name: name.to_string(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups: groups.into_iter().map(|g| g.as_raw()).collect(),
        home: user.dir,
    })
}

/// Whether a server started now would run as root, and whether that is
/// allowed: with no `run_as` it runs as the agent's user, root under the
/// packaged unit. Returns whether it runs as root.
pub fn check_root(
    run_as: Option<&RunAs>,
    agent_is_root: bool,
    allow_root_replicas: bool,
) -> Result<bool, String> {
    let as_root = run_as.is_none() && agent_is_root;
    if as_root && !allow_root_replicas {
        return Err("the server would run as root (run_as is not set and the agent runs as root); set run_as = \"gpufleet-models\" (the user the package creates) in the agent config, or allow_root_replicas = true to allow it deliberately".into());
    }
    Ok(as_root)
}

/// The path an argument names, if it names one: `/abs/path`, or the value
/// of `--flag=/abs/path` (any `key=/abs/path`).
fn path_in_argument(arg: &str) -> Option<&str> {
    if arg.starts_with('/') {
        return Some(arg);
    }
    let (_, value) = arg.split_once('=')?;
    value.starts_with('/').then_some(value)
}

/// Checks that every argument naming an absolute path resolves (symlinks
/// followed) under `model_roots` or `allowed_paths`. argv[0], the program,
/// is `allowed_executables`' business and is skipped.
pub fn check_argument_paths(
    argv: &[String],
    model_roots: &[PathBuf],
    allowed_paths: &[PathBuf],
) -> Result<(), String> {
    let places: Vec<PathBuf> = model_roots.iter().chain(allowed_paths).cloned().collect();
    for arg in argv.iter().skip(1) {
        let Some(path) = path_in_argument(arg) else {
            continue;
        };
        if let Err(e) = crate::agent::warm::paths::resolve_within(Path::new(path), &places) {
            let why = match e {
                crate::agent::warm::paths::PathError::OutsideRoots { resolved, .. } => {
                    format!("resolves to {}", resolved.display())
                }
                crate::agent::warm::paths::PathError::Unresolvable { reason, .. } => reason,
                crate::agent::warm::paths::PathError::NoRoots { .. } => {
                    "no model_roots or allowed_paths are set".into()
                }
            };
            let list = places
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(format!(
                "argument {arg:?} names {path}, which {why}, outside model_roots and allowed_paths ({list}); add a directory to allowed_paths, or set check_args = false, in the agent config"
            ));
        }
    }
    Ok(())
}

/// Resolves the program the way execvp would (a bare name is looked up on the
/// agent's PATH) and checks that it can be executed.
pub fn resolve_executable(program: &str) -> Result<PathBuf, LaunchError> {
    let candidate = if program.contains('/') {
        PathBuf::from(program)
    } else {
        let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| is_executable_file(p).is_ok())
            .ok_or_else(|| LaunchError::NotOnPath {
                program: program.to_string(),
                path: path.to_string_lossy().into_owned(),
            })?
    };
    is_executable_file(&candidate).map_err(|reason| LaunchError::NotExecutable {
        path: candidate.clone(),
        reason,
    })?;
    Ok(candidate)
}

fn is_executable_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("not executable (no x permission)".into());
    }
    Ok(())
}

/// Checks `executable` against the allow-list; an empty list allows any.
/// Both sides are compared after resolving symlinks too, so `/usr/bin/python3`
/// in the list admits a command naming its target, and the other way round.
pub fn check_allowed(executable: &Path, allowed: &[PathBuf]) -> Result<(), LaunchError> {
    if allowed.is_empty() {
        return Ok(());
    }
    let real = executable.canonicalize().ok();
    let ok = allowed
        .iter()
        .any(|a| a == executable || (real.is_some() && a.canonicalize().ok() == real));
    if ok {
        Ok(())
    } else {
        Err(LaunchError::NotAllowed {
            path: executable.to_path_buf(),
            allowed: allowed
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// The first port of `range`, from `start` on and wrapping, that no replica of
/// this agent holds and that nothing else on the host is bound to.
pub fn pick_port(range: &RangeInclusive<u16>, used: &HashSet<u16>, start: u16) -> Option<u16> {
    let (lo, hi) = (*range.start() as u32, *range.end() as u32);
    if lo > hi {
        return None;
    }
    let len = hi - lo + 1;
    let first = (start as u32).clamp(lo, hi) - lo;
    (0..len)
        .map(|i| (lo + (first + i) % len) as u16)
        .find(|p| !used.contains(p) && TcpListener::bind((Ipv4Addr::LOCALHOST, *p)).is_ok())
}

/// Everything needed to exec one replica's server.
#[derive(Debug)]
pub struct LaunchPlan<'a> {
    pub executable: &'a Path,
    /// argv[0] as the spec wrote it, then the rendered arguments.
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub cuda_visible_devices: String,
    pub log: File,
    pub run_as: Option<&'a RunAs>,
}

/// Starts the server and returns its pid. The child leads a new session (and
/// so a new process group whose id is its pid): it outlives the agent under
/// systemd's KillMode=process and can be signalled as a group.
pub fn spawn(plan: LaunchPlan<'_>) -> Result<u32, LaunchError> {
    let spawn_err = |e: io::Error| LaunchError::Spawn {
        path: plan.executable.to_path_buf(),
        reason: e.to_string(),
    };
    let stderr = plan.log.try_clone().map_err(spawn_err)?;
    let mut cmd = Command::new(plan.executable);
    if let Some((arg0, args)) = plan.argv.split_first() {
        cmd.arg0(arg0).args(args);
    }
    for key in STRIPPED_ENV {
        cmd.env_remove(key);
    }
    if let Some(user) = plan.run_as {
        // Caches (~/.cache/huggingface, ~/.triton) go to the user's home,
        // not the agent's; the spec's env may still say otherwise.
        cmd.env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
    }
    cmd.envs(plan.env.iter().map(|(k, v)| (k, v)))
        .env("CUDA_VISIBLE_DEVICES", &plan.cuda_visible_devices)
        .stdin(Stdio::null())
        .stdout(plan.log)
        .stderr(stderr);
    // std's uid()/gid() would drop the supplementary groups, and with them
    // the video and render groups that open the GPU devices: the switch is
    // done here instead, groups first, uid last.
    let identity = plan.run_as.map(|u| {
        let groups: Vec<nix::unistd::Gid> = u
            .groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        (
            groups,
            nix::unistd::Gid::from_raw(u.gid),
            nix::unistd::Uid::from_raw(u.uid),
        )
    });
    // SAFETY: setsid, setgroups, setgid and setuid are async-signal-safe
    // system calls; the closure only reads memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(io::Error::from)?;
            if let Some((groups, gid, uid)) = &identity {
                nix::unistd::setgroups(groups).map_err(io::Error::from)?;
                nix::unistd::setgid(*gid).map_err(io::Error::from)?;
                nix::unistd::setuid(*uid).map_err(io::Error::from)?;
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(spawn_err)?;
    // The supervisor reaps by pid (waitpid), the same way for adopted
    // servers; dropping the handle neither kills nor waits.
    Ok(child.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_resolve_on_path_and_missing_ones_are_named() {
        let sh = resolve_executable("sh").unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert!(matches!(
            resolve_executable("gpufleet-no-such-server"),
            Err(LaunchError::NotOnPath { program, .. }) if program == "gpufleet-no-such-server"
        ));
    }

    #[test]
    fn files_without_x_permission_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("server.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let err = resolve_executable(script.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("not executable"), "{err}");
        let err = resolve_executable(tmp.path().to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn allow_list_compares_resolved_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("vllm-real");
        std::fs::write(&real, "").unwrap();
        let link = tmp.path().join("vllm");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(check_allowed(&link, &[]).is_ok());
        assert!(check_allowed(&link, std::slice::from_ref(&real)).is_ok());
        assert!(check_allowed(&real, std::slice::from_ref(&link)).is_ok());
        let err = check_allowed(Path::new("/bin/sh"), &[real]).unwrap_err();
        assert!(err.to_string().contains("allowed_executables"), "{err}");
    }

    #[test]
    fn ports_in_use_are_skipped() {
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let p = held.local_addr().unwrap().port();
        let range = p..=p.saturating_add(3);
        let used = HashSet::from([p.saturating_add(1)]);
        let got = pick_port(&range, &used, p).unwrap();
        assert!(got != p && got != p + 1 && range.contains(&got), "{got}");
        assert_eq!(pick_port(&(p..=p), &HashSet::new(), 0), None);
    }

    #[test]
    fn absolute_paths_in_arguments_must_lie_under_the_roots() {
        let roots = tempfile::tempdir().unwrap();
        let extra = tempfile::tempdir().unwrap();
        let model = roots.path().join("m");
        std::fs::create_dir(&model).unwrap();
        let r = vec![roots.path().to_path_buf()];
        let a = vec![extra.path().to_path_buf()];
        let argv = |args: &[&str]| -> Vec<String> {
            std::iter::once("/opt/vllm/bin/vllm")
                .chain(args.iter().copied())
                .map(String::from)
                .collect()
        };
        let m = model.display().to_string();
        let inside = argv(&[
            "serve",
            &m,
            &format!("--download-dir={m}/cache"),
            "--port",
            "8000",
        ]);
        assert_eq!(check_argument_paths(&inside, &r, &[]), Ok(()));
        let err = check_argument_paths(&argv(&["--weights", "/etc/shadow"]), &r, &[]).unwrap_err();
        assert!(
            err.contains("\"/etc/shadow\"") && err.contains("allowed_paths"),
            "{err}"
        );
        assert!(err.contains("check_args = false"), "{err}");
        let err = check_argument_paths(&argv(&["--config=/etc/passwd"]), &r, &[]).unwrap_err();
        assert!(err.contains("names /etc/passwd"), "{err}");
        let elsewhere = format!("--log-dir={}", extra.path().display());
        assert!(check_argument_paths(&argv(&[&elsewhere]), &r, &[]).is_err());
        assert_eq!(check_argument_paths(&argv(&[&elsewhere]), &r, &a), Ok(()));
        // The program itself is the allow-list's business.
        assert_eq!(check_argument_paths(&argv(&[]), &r, &[]), Ok(()));
        // Relative paths and plain words are not paths it can judge.
        assert_eq!(
            check_argument_paths(&argv(&["serve", "a=b", "x/y"]), &r, &[]),
            Ok(())
        );
        assert!(
            check_argument_paths(&argv(&[&m]), &[], &[]).is_err(),
            "no roots, no paths"
        );
    }

    #[test]
    fn a_server_runs_as_root_only_where_allowed() {
        let user = RunAs {
            name: "gpufleet-models".into(),
            uid: 999,
            gid: 999,
            groups: vec![999, 44],
            home: "/var/lib/gpufleet-models".into(),
        };
        assert_eq!(check_root(Some(&user), true, false), Ok(false));
        assert_eq!(check_root(None, false, false), Ok(false));
        assert_eq!(check_root(None, true, true), Ok(true));
        let err = check_root(None, true, false).unwrap_err();
        assert!(
            err.contains("allow_root_replicas = true") && err.contains("run_as"),
            "{err}"
        );
    }

    #[test]
    fn root_is_refused_as_run_as() {
        let err = resolve_run_as("root").unwrap_err();
        assert!(err.contains("uid 0"), "{err}");
        assert!(resolve_run_as("gpufleet-no-such-user").is_err());
    }
}
