//! Model paths the agent accepts: only under its configured model roots,
//! judged after symlinks are resolved, so a link cannot escape a root.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PathError {
    #[error("{path}: cannot resolve: {reason}")]
    Unresolvable { path: PathBuf, reason: String },
    #[error("{path} resolves to {resolved}, which is outside the model roots ({roots}); allowed: paths under model_roots")]
    OutsideRoots {
        path: PathBuf,
        resolved: PathBuf,
        roots: String,
    },
    #[error("{path}: no model_roots are configured on this agent, so no model path is allowed")]
    NoRoots { path: PathBuf },
}

/// Resolves `path` (symlinks included) and checks that it lies under one of
/// `roots` (also resolved). Returns the resolved path.
pub fn resolve_model_path(path: &Path, roots: &[PathBuf]) -> Result<PathBuf, PathError> {
    if roots.is_empty() {
        return Err(PathError::NoRoots {
            path: path.to_path_buf(),
        });
    }
    let resolved = path.canonicalize().map_err(|e| PathError::Unresolvable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let inside = roots.iter().any(|root| {
        root.canonicalize()
            .map(|r| resolved.starts_with(&r))
            .unwrap_or(false)
    });
    if inside {
        Ok(resolved)
    } else {
        Err(PathError::OutsideRoots {
            path: path.to_path_buf(),
            resolved,
            roots: roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// Like [`resolve_model_path`], for a path that need not exist yet (an
/// output directory named in an argument): its nearest existing ancestor is
/// resolved and the rest appended, which may not hold `..`.
pub fn resolve_within(path: &Path, roots: &[PathBuf]) -> Result<PathBuf, PathError> {
    if path.exists() {
        return resolve_model_path(path, roots);
    }
    let mut existing = path;
    let mut rest = Vec::new();
    while !existing.exists() {
        let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
            break;
        };
        rest.push(name);
        existing = parent;
    }
    if path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(PathError::Unresolvable {
            path: path.to_path_buf(),
            reason: "it does not exist and holds `..`".into(),
        });
    }
    let base = resolve_model_path(existing, roots).map_err(|e| match e {
        PathError::OutsideRoots { roots, .. } => PathError::OutsideRoots {
            path: path.to_path_buf(),
            resolved: existing
                .canonicalize()
                .unwrap_or_default()
                .join(rest.iter().rev().collect::<PathBuf>()),
            roots,
        },
        other => other,
    })?;
    Ok(rest.iter().rev().fold(base, |p, name| p.join(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_paths_under_a_root_and_refuses_escapes() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let model = root.path().join("m.bin");
        std::fs::write(&model, b"w").unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let roots = vec![root.path().to_path_buf()];

        assert!(resolve_model_path(&model, &roots).is_ok());

        let link = root.path().join("escape");
        std::os::unix::fs::symlink(outside.path().join("secret"), &link).unwrap();
        assert!(matches!(
            resolve_model_path(&link, &roots),
            Err(PathError::OutsideRoots { .. })
        ));
        let dotdot = root
            .path()
            .join("../")
            .join(outside.path().file_name().unwrap());
        assert!(resolve_model_path(&dotdot, &roots).is_err());
        assert!(matches!(
            resolve_model_path(&model, &[]),
            Err(PathError::NoRoots { .. })
        ));
    }

    #[test]
    fn proc_links_to_the_root_do_not_escape() {
        let root = tempfile::tempdir().unwrap();
        let roots = vec![root.path().to_path_buf()];
        // /proc/self/root is a link to "/": the resolved path is judged.
        let inside_via_proc =
            Path::new("/proc/self/root").join(root.path().strip_prefix("/").unwrap());
        assert!(resolve_model_path(&inside_via_proc, &roots).is_ok());
        for sneaky in ["/proc/self/root/etc/passwd", "/proc/1/cwd/etc/passwd"] {
            assert!(
                resolve_within(Path::new(sneaky), &roots).is_err(),
                "{sneaky}"
            );
        }
    }

    #[test]
    fn paths_that_do_not_exist_yet_are_judged_by_their_existing_ancestor() {
        let root = tempfile::tempdir().unwrap();
        let roots = vec![root.path().to_path_buf()];
        let out = root.path().join("cache/new/dir");
        let resolved = resolve_within(&out, &roots).unwrap();
        assert!(resolved.starts_with(root.path().canonicalize().unwrap()));
        assert!(resolved.ends_with("cache/new/dir"));
        assert!(matches!(
            resolve_within(Path::new("/etc/gpufleet-no-such/x"), &roots),
            Err(PathError::OutsideRoots { .. })
        ));
        let sneaky = root.path().join("missing/../../etc/shadow");
        assert!(resolve_within(&sneaky, &roots).is_err());
        let link = root.path().join("out");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        assert!(matches!(
            resolve_within(&link.join("new-file"), &roots),
            Err(PathError::OutsideRoots { .. })
        ));
    }
}
