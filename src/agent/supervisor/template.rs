//! The model server's argv template: `{port}`, `{metrics_port}`, `{weights}`,
//! `{gpus}`, `{gpu_count}`, `{replica_id}` and `{model}` substituted in each
//! argument and env value.
//! Pure: no shell is ever involved, so an argument stays one argument.

use std::collections::BTreeMap;

pub use crate::config::PLACEHOLDERS;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("the command is empty; give at least the server executable")]
    EmptyCommand,
    #[error("unknown placeholder {{{name}}} in {value:?}; allowed: {allowed} (write {{{{ and }}}} for literal braces)")]
    UnknownPlaceholder {
        name: String,
        value: String,
        allowed: String,
    },
    #[error("unclosed '{{' in {value:?}; write {{{{ for a literal brace")]
    Unclosed { value: String },
    #[error("stray '}}' in {value:?}; write }}}} for a literal brace")]
    StrayClose { value: String },
}

/// The values one replica's template is rendered with.
#[derive(Debug, Clone)]
pub struct TemplateVars<'a> {
    pub port: u16,
    /// A second port, for engines that serve metrics apart; 0 when the
    /// replica has none.
    pub metrics_port: u16,
    pub weights: &'a str,
    pub gpus: &'a [u32],
    pub replica_id: &'a str,
    /// The model's name: what the gateway's clients send as `model`, so
    /// the engine that checks it must serve under it (`--served-model-name`).
    pub model: &'a str,
}

impl TemplateVars<'_> {
    fn lookup(&self, name: &str) -> Option<String> {
        match name {
            "port" => Some(self.port.to_string()),
            "metrics_port" => Some(self.metrics_port.to_string()),
            "weights" => Some(self.weights.to_string()),
            "gpus" => Some(gpu_list(self.gpus)),
            "gpu_count" => Some(self.gpus.len().to_string()),
            "replica_id" => Some(self.replica_id.to_string()),
            "model" => Some(self.model.to_string()),
            _ => None,
        }
    }
}

/// GPU indices as CUDA_VISIBLE_DEVICES and `{gpus}` spell them: "0,3".
pub fn gpu_list(gpus: &[u32]) -> String {
    gpus.iter()
        .map(|g| g.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// CUDA_VISIBLE_DEVICES for a replica's GPUs: their UUIDs when every one is
/// known (CUDA orders devices fastest-first, not as NVML numbers them, and a
/// MIG instance can only be named by its `MIG-…` UUID), else the indices.
pub fn visible_devices(gpus: &[u32], uuids: &std::collections::BTreeMap<u32, String>) -> String {
    let named: Option<Vec<&str>> = gpus
        .iter()
        .map(|g| uuids.get(g).map(String::as_str).filter(|u| !u.is_empty()))
        .collect();
    match named {
        Some(names) if !gpus.is_empty() => names.join(","),
        _ => gpu_list(gpus),
    }
}

/// A rendered command: argv (argv[0] is the executable as written) and env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedCommand {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Renders every argument and env value of a replica's command.
pub fn render_command(
    command: &[String],
    env: &BTreeMap<String, String>,
    vars: &TemplateVars<'_>,
) -> Result<RenderedCommand, TemplateError> {
    if command.first().is_none_or(|c| c.is_empty()) {
        return Err(TemplateError::EmptyCommand);
    }
    let argv = command
        .iter()
        .map(|a| render(a, vars))
        .collect::<Result<Vec<_>, _>>()?;
    let env = env
        .iter()
        .map(|(k, v)| Ok((k.clone(), render(v, vars)?)))
        .collect::<Result<Vec<_>, TemplateError>>()?;
    Ok(RenderedCommand { argv, env })
}

/// Renders one value: `{name}` → its value, `{{` → `{`, `}}` → `}`.
pub fn render(value: &str, vars: &TemplateVars<'_>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find(['{', '}']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push('}');
            rest = after;
        } else if tail.starts_with('}') {
            return Err(TemplateError::StrayClose {
                value: value.to_string(),
            });
        } else {
            let Some(end) = tail.find('}') else {
                return Err(TemplateError::Unclosed {
                    value: value.to_string(),
                });
            };
            let name = &tail[1..end];
            let Some(sub) = vars.lookup(name) else {
                return Err(TemplateError::UnknownPlaceholder {
                    name: name.to_string(),
                    value: value.to_string(),
                    allowed: PLACEHOLDERS
                        .iter()
                        .map(|p| format!("{{{p}}}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            out.push_str(&sub);
            rest = &tail[end + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_devices_are_uuids_when_all_are_known() {
        let uuids: std::collections::BTreeMap<u32, String> =
            [(0, "GPU-a".to_string()), (4, "MIG-b".to_string())]
                .into_iter()
                .collect();
        assert_eq!(visible_devices(&[0, 4], &uuids), "GPU-a,MIG-b");
        assert_eq!(visible_devices(&[0, 1], &uuids), "0,1");
        assert_eq!(visible_devices(&[2], &Default::default()), "2");
    }

    fn vars() -> TemplateVars<'static> {
        TemplateVars {
            port: 20017,
            metrics_port: 20018,
            weights: "/srv/models/llama 3",
            gpus: &[2, 5],
            replica_id: "llama-3-8b-7f3a",
            model: "llama-3-8b",
        }
    }

    fn cmd(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn metrics_port_is_the_second_port() {
        let out = render("--metrics-port={metrics_port}", &vars()).unwrap();
        assert_eq!(out, "--metrics-port=20018");
    }

    #[test]
    fn substitutes_every_placeholder_without_splitting_arguments() {
        let env = BTreeMap::from([
            ("NAME".to_string(), "r={replica_id}".to_string()),
            ("TP".to_string(), "{gpu_count}".to_string()),
        ]);
        let rendered = render_command(
            &cmd(&[
                "/opt/vllm/bin/vllm",
                "serve",
                "{weights}",
                "--port={port}",
                "--gpus",
                "{gpus}",
                "--served-model-name",
                "{model}",
            ]),
            &env,
            &vars(),
        )
        .unwrap();
        assert_eq!(
            rendered.argv,
            cmd(&[
                "/opt/vllm/bin/vllm",
                "serve",
                "/srv/models/llama 3",
                "--port=20017",
                "--gpus",
                "2,5",
                "--served-model-name",
                "llama-3-8b"
            ])
        );
        assert_eq!(
            rendered.env,
            vec![
                ("NAME".to_string(), "r=llama-3-8b-7f3a".to_string()),
                ("TP".to_string(), "2".to_string())
            ]
        );
    }

    #[test]
    fn doubled_braces_are_literal() {
        assert_eq!(
            render(r#"{{"port": {port}}}"#, &vars()).unwrap(),
            r#"{"port": 20017}"#
        );
        assert_eq!(render("a}}b{{c", &vars()).unwrap(), "a}b{c");
    }

    #[test]
    fn unknown_placeholder_names_itself_and_the_allowed_ones() {
        let err =
            render_command(&cmd(&["srv", "--x={name}"]), &BTreeMap::new(), &vars()).unwrap_err();
        assert!(matches!(&err, TemplateError::UnknownPlaceholder { name, .. } if name == "name"));
        let msg = err.to_string();
        assert!(msg.contains("{name}"), "{msg}");
        assert!(
            msg.contains(
                "{port}, {metrics_port}, {weights}, {gpus}, {gpu_count}, {replica_id}, {model}"
            ),
            "{msg}"
        );
    }

    #[test]
    fn unknown_placeholder_in_env_is_an_error_too() {
        let env = BTreeMap::from([("X".to_string(), "${HOME}".to_string())]);
        assert!(matches!(
            render_command(&cmd(&["srv"]), &env, &vars()),
            Err(TemplateError::UnknownPlaceholder { name, .. }) if name == "HOME"
        ));
    }

    #[test]
    fn malformed_braces_and_empty_commands_are_refused() {
        assert!(matches!(
            render("--port={port", &vars()),
            Err(TemplateError::Unclosed { .. })
        ));
        assert!(matches!(
            render("a}b", &vars()),
            Err(TemplateError::StrayClose { .. })
        ));
        assert_eq!(
            render_command(&[], &BTreeMap::new(), &vars()),
            Err(TemplateError::EmptyCommand)
        );
        assert_eq!(
            render_command(&cmd(&[""]), &BTreeMap::new(), &vars()),
            Err(TemplateError::EmptyCommand)
        );
    }

    #[test]
    fn text_without_braces_passes_through() {
        assert_eq!(render("--dtype auto", &vars()).unwrap(), "--dtype auto");
        assert_eq!(render("", &vars()).unwrap(), "");
    }
}
