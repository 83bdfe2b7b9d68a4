//! Environment variables that make a program load or run code it was not
//! started with: a preloaded library, an interpreter's startup file, a
//! module path. `allowed_executables` means nothing if a spec can set one, so
//! they are refused at `model apply` (coordinator) and again before every
//! start (agent), unless that side's `allowed_env` names them.
//!
//! The list is glibc's own (`unsecvars.h`: what the loader drops for setuid
//! programs), less TMPDIR; what language runtimes and shells read at start;
//! and the CUDA injection hooks. Tuning variables pass: `MALLOC_ARENA_MAX`,
//! `OMP_NUM_THREADS`, `NCCL_*`, `HF_HOME`.

/// (name, or prefix ending in `*`; what it does).
const CODE_LOADING: &[(&str, &str)] = &[
    (
        "LD_*",
        "the dynamic loader reads it (preloads, library paths, audit modules)",
    ),
    (
        "DYLD_*",
        "the macOS dynamic loader reads it (preloads, library paths)",
    ),
    (
        "GCONV_PATH",
        "glibc loads character-set modules (shared objects) from it",
    ),
    ("GETCONF_DIR", "glibc's getconf runs programs from it"),
    (
        "GLIBC_TUNABLES",
        "the dynamic loader parses it before the program runs",
    ),
    (
        "HOSTALIASES",
        "it redirects host name lookups; glibc ignores it in privileged programs",
    ),
    (
        "LOCALDOMAIN",
        "it redirects host name lookups; glibc ignores it in privileged programs",
    ),
    (
        "RES_OPTIONS",
        "it changes the resolver; glibc ignores it in privileged programs",
    ),
    (
        "RESOLV_HOST_CONF",
        "it changes the resolver; glibc ignores it in privileged programs",
    ),
    (
        "NIS_PATH",
        "it redirects NIS+ lookups; glibc ignores it in privileged programs",
    ),
    ("LOCPATH", "glibc loads locale data from it"),
    (
        "NLSPATH",
        "glibc loads message catalogs (format strings) from it",
    ),
    ("TZDIR", "glibc loads time zone files from it"),
    (
        "MALLOC_TRACE",
        "glibc's malloc writes a trace to the file it names",
    ),
    ("PYTHONPATH", "Python imports modules from it"),
    ("PYTHONHOME", "Python loads its standard library from it"),
    ("PYTHONSTARTUP", "Python runs the file it names"),
    ("PYTHONUSERBASE", "Python imports modules from it"),
    (
        "PYTHONPYCACHEPREFIX",
        "Python loads compiled modules from it",
    ),
    ("PYTHONEXECUTABLE", "Python takes it for its own program"),
    (
        "NODE_OPTIONS",
        "Node.js takes options from it (--require loads code)",
    ),
    ("NODE_PATH", "Node.js loads modules from it"),
    ("PERL5OPT", "Perl takes options from it (-M loads code)"),
    ("PERL5LIB", "Perl loads modules from it"),
    ("PERLLIB", "Perl loads modules from it"),
    ("PERL5DB", "Perl runs it as its debugger"),
    ("RUBYOPT", "Ruby takes options from it (-r loads code)"),
    ("RUBYLIB", "Ruby loads libraries from it"),
    ("LUA_INIT*", "Lua runs it at start"),
    ("LUA_PATH*", "Lua loads modules from it"),
    ("LUA_CPATH*", "Lua loads native modules from it"),
    (
        "JAVA_TOOL_OPTIONS",
        "the JVM takes options from it (-javaagent loads code)",
    ),
    (
        "_JAVA_OPTIONS",
        "the JVM takes options from it (-javaagent loads code)",
    ),
    (
        "JDK_JAVA_OPTIONS",
        "the java launcher takes options from it",
    ),
    ("CLASSPATH", "the JVM loads classes from it"),
    ("BASH_ENV", "bash runs the file it names"),
    ("ENV", "sh runs the file it names"),
    ("BASH_FUNC_*", "bash imports a function definition from it"),
    ("SHELLOPTS", "bash takes options from it"),
    ("BASHOPTS", "bash takes options from it"),
    (
        "PS4",
        "bash expands it, running command substitutions, when tracing",
    ),
    ("PROMPT_COMMAND", "bash runs it"),
    (
        "PATH",
        "programs the server starts (a compiler, say) are looked up on it",
    ),
    (
        "CC",
        "kernel compilers (Triton's, for one) run the program it names",
    ),
    ("CXX", "kernel compilers run the program it names"),
    (
        "OPENSSL_CONF",
        "OpenSSL loads engines and providers its file names",
    ),
    ("OPENSSL_ENGINES", "OpenSSL loads engines from it"),
    ("OPENSSL_MODULES", "OpenSSL loads providers from it"),
    (
        "CUDA_INJECTION64_PATH",
        "the CUDA driver loads the library it names",
    ),
    (
        "CUDA_INJECTION32_PATH",
        "the CUDA driver loads the library it names",
    ),
    ("NVTX_INJECTION64_PATH", "NVTX loads the library it names"),
    ("NVTX_INJECTION32_PATH", "NVTX loads the library it names"),
];

/// A variable the policy refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvRefusal {
    pub name: String,
    /// The denylist entry it matched (`LD_*`, `PYTHONPATH`).
    pub rule: &'static str,
    pub why: &'static str,
}

impl EnvRefusal {
    /// One line naming the variable and the setting that would allow it.
    pub fn message(&self, setting: &str) -> String {
        let also = if self.rule != self.name {
            format!(" (or \"{}\")", self.rule)
        } else {
            String::new()
        };
        format!(
            "env {name} is refused: it can load code into the model server ({why}); to allow it deliberately, add \"{name}\"{also} to allowed_env in {setting}",
            name = self.name,
            why = self.why,
        )
    }
}

/// Whether `name` matches a pattern: exact, or a prefix ending in `*`.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// The first of `names` the policy refuses, given what `allowed` lets through
/// (names or prefixes ending in `*`, as the denylist writes them).
pub fn refused<'a>(
    names: impl IntoIterator<Item = &'a str>,
    allowed: &[String],
) -> Option<EnvRefusal> {
    names.into_iter().find_map(|name| {
        let (rule, why) = CODE_LOADING.iter().find(|(p, _)| matches(p, name))?;
        if allowed.iter().any(|a| matches(a, name)) {
            return None;
        }
        Some(EnvRefusal {
            name: name.to_string(),
            rule,
            why,
        })
    })
}

/// What an `allowed_env` entry may be, in words.
pub const ALLOWED_ENV_RULE: &str =
    "a variable name (A-Z, a-z, 0-9, _; not starting with a digit), optionally ending in * for a prefix";

/// Checks one `allowed_env` entry.
pub fn valid_allowed_env(entry: &str) -> bool {
    let name = entry.strip_suffix('*').unwrap_or(entry);
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn code_loading_variables_are_refused_by_name_or_prefix() {
        for name in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "GCONV_PATH",
            "PYTHONPATH",
            "PYTHONSTARTUP",
            "PYTHONHOME",
            "NODE_OPTIONS",
            "BASH_ENV",
            "ENV",
            "PERL5OPT",
            "RUBYOPT",
            "JAVA_TOOL_OPTIONS",
            "BASH_FUNC_ls%%",
            "CUDA_INJECTION64_PATH",
            "DYLD_INSERT_LIBRARIES",
        ] {
            let r = refused([name], &[]).unwrap_or_else(|| panic!("{name} passed"));
            assert_eq!(r.name, name);
        }
        for name in [
            "TMPDIR",
            "MALLOC_ARENA_MAX",
            "OMP_NUM_THREADS",
            "HF_HOME",
            "VLLM_USE_V1",
            "ENVIRONMENT",
            "ld_preload",
            "NCCL_DEBUG",
        ] {
            assert_eq!(refused([name], &[]), None, "{name}");
        }
    }

    #[test]
    fn allowed_env_lets_names_or_prefixes_through() {
        assert_eq!(refused(["LD_PRELOAD"], &allowed(&["LD_PRELOAD"])), None);
        assert_eq!(refused(["LD_AUDIT"], &allowed(&["LD_*"])), None);
        let r = refused(["HOME", "LD_AUDIT"], &allowed(&["LD_PRELOAD"])).unwrap();
        assert_eq!(r.name, "LD_AUDIT");
        assert_eq!(refused(["PYTHONPATH"], &allowed(&["PYTHON*"])), None);
    }

    #[test]
    fn the_message_names_the_variable_and_the_setting() {
        let m = refused(["LD_PRELOAD"], &[])
            .unwrap()
            .message("the agent config");
        assert!(m.starts_with("env LD_PRELOAD is refused"), "{m}");
        assert!(
            m.contains("add \"LD_PRELOAD\" (or \"LD_*\") to allowed_env in the agent config"),
            "{m}"
        );
        let m = refused(["PYTHONPATH"], &[]).unwrap().message("x");
        assert!(m.contains("add \"PYTHONPATH\" to allowed_env in x"), "{m}");
    }

    #[test]
    fn allowed_env_entries_are_names_or_prefixes() {
        for ok in ["LD_PRELOAD", "LD_*", "_JAVA_OPTIONS", "PYTHON*"] {
            assert!(valid_allowed_env(ok), "{ok}");
        }
        for bad in ["", "*", "LD PRELOAD", "1X", "LD_*X", "A=B"] {
            assert!(!valid_allowed_env(bad), "{bad}");
        }
    }
}
