//! `gpufleet model …`: apply, list, show, remove and scale models.

use std::path::PathBuf;

use anyhow::Context;

use crate::api::ModelView;
use crate::config::ModelSpec;
use crate::wire::pb;

use super::client::{ask, connect, on_leader, status_error, ClientArgs};
use super::list::{print_list, ListArgs};
use super::output::{ago, opt, print_data, Output, Table};

#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Create or update a model from its spec file (TOML).
    Apply {
        /// The spec file; `-` reads it from stdin.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List models with desired and ready replicas.
    Ls {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show one model: spec, scaling state, replicas.
    Show { name: String },
    /// Delete a model; its replicas are stopped.
    Rm { name: String },
    /// Bring a model scaled to zero back to at least one replica now.
    Wake { name: String },
    /// Pin the replica count, or return the model to its scaling policy.
    Scale {
        name: String,
        #[arg(long, conflicts_with = "auto", required_unless_present = "auto")]
        replicas: Option<u32>,
        #[arg(long)]
        auto: bool,
    },
}

pub async fn run(cmd: ModelCommand, client: &ClientArgs, output: Output) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Apply { file } => {
            let (text, source) = read_spec(&file)?;
            // Validate here too: the operator gets the file name with the error
            // without a round trip, and nothing bad reaches the coordinator.
            let spec = ModelSpec::parse(&text).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
            for warning in spec.warnings() {
                eprintln!("warning: {source}: {warning}");
            }
            let view: ModelView = on_leader(client, |mut c| {
                let spec_toml = text.clone();
                async move { c.apply_model(pb::ApplyModelRequest { spec_toml }).await }
            })
            .await?
            .map_err(|s| anyhow::anyhow!("{source}: {}", s.message()))?
            .into_inner()
            .into();
            if output.is_data() {
                return print_data(&with_spec(&view)?, output);
            }
            let size = crate::config::units::format_bytes;
            let each = match spec.server.gpus {
                0 => format!(
                    "CPU: {} CPUs, {} RAM",
                    spec.server.cpu,
                    size(spec.server.memory_bytes)
                ),
                n => format!(
                    "{n} GPU{} × {}",
                    if n == 1 { "" } else { "s" },
                    size(spec.server.gpu_memory_bytes)
                ),
            };
            println!(
                "model {} applied ({each}, replicas {}..{})",
                spec.name, view.min_replicas, view.max_replicas
            );
        }
        ModelCommand::Ls { list } => {
            let c = connect(client).await?;
            let fetch = || {
                let mut c = c.clone();
                async move {
                    let models: Vec<ModelView> = c
                        .list_models(pb::ListModelsRequest {})
                        .await
                        .map_err(status_error)?
                        .into_inner()
                        .models
                        .into_iter()
                        .map(Into::into)
                        .collect();
                    anyhow::Ok(models)
                }
            };
            return print_list(&list, output, fetch, table).await;
        }
        ModelCommand::Show { name } => {
            let view: ModelView = ask(client, pb::ModelRef { name }, |mut c, r| async move {
                c.get_model(r).await
            })
            .await?
            .into();
            if output.is_data() {
                return print_data(&with_spec(&view)?, output);
            }
            print_model(&view);
        }
        ModelCommand::Rm { name } => {
            let r = ask(client, pb::ModelRef { name }, |mut c, r| async move {
                c.delete_model(r).await
            })
            .await?;
            if output.is_data() {
                return print_data(
                    &serde_json::json!({"name": r.name, "replicas_stopping": r.replicas_stopping}),
                    output,
                );
            }
            println!(
                "model {} deleted; {} replicas stopping",
                r.name, r.replicas_stopping
            );
        }
        ModelCommand::Wake { name } => {
            let view: ModelView = ask(client, pb::ModelRef { name }, |mut c, r| async move {
                c.wake_model(r).await
            })
            .await?
            .into();
            if output.is_data() {
                return print_data(&with_spec(&view)?, output);
            }
            println!(
                "model {} woken: desired {}, ready {}",
                view.name, view.desired_replicas, view.ready_replicas
            );
        }
        ModelCommand::Scale {
            name,
            replicas,
            auto,
        } => {
            let req = pb::ScaleModelRequest {
                name,
                replicas,
                auto,
            };
            let view: ModelView = ask(
                client,
                req,
                |mut c, r| async move { c.scale_model(r).await },
            )
            .await?
            .into();
            if output.is_data() {
                return print_data(&with_spec(&view)?, output);
            }
            match view.pinned_replicas {
                Some(n) => println!("model {} pinned to {n} replicas", view.name),
                None => println!("model {} follows its scaling policy again", view.name),
            }
        }
    }
    Ok(())
}

/// The model view plus its parsed spec, for `-o json`.
fn table(models: &[ModelView], wide: bool) -> Table {
    let mut headers = vec![
        "NAME", "MIN", "MAX", "DESIRED", "CURRENT", "READY", "PINNED", "PROBLEM",
    ];
    if wide {
        headers.extend(["UPDATED", "LAST DECISION"]);
    }
    let mut t = Table::new(&headers);
    for m in models {
        let mut row = vec![
            m.name.clone(),
            m.min_replicas.to_string(),
            m.max_replicas.to_string(),
            m.desired_replicas.to_string(),
            m.current_replicas.to_string(),
            m.ready_replicas.to_string(),
            opt(m.pinned_replicas),
            if m.placement_problem.is_empty() {
                "-".into()
            } else {
                m.placement_problem.clone()
            },
        ];
        if wide {
            row.push(ago(m.updated_unix_ms));
            row.push(if m.last_decision.is_empty() {
                "-".into()
            } else {
                m.last_decision.clone()
            });
        }
        t.row(row);
    }
    t
}

/// The spec's text and the name its errors go by: the file, or stdin for
/// `-f -` (`render-spec | gpufleet model apply -f -`, as with kubectl).
fn read_spec(file: &std::path::Path) -> anyhow::Result<(String, String)> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("cannot read the spec from stdin")?;
        return Ok((text, "stdin".into()));
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok((text, file.display().to_string()))
}

fn with_spec(view: &ModelView) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(view)?;
    if let Some(obj) = v.as_object_mut() {
        // `model ls` leaves the empty list out; `show` always has it (a
        // model at zero has `"replicas": []`, as docs/cli.md promises).
        obj.insert("replicas".into(), serde_json::to_value(&view.replicas)?);
        if let Ok(spec) = ModelSpec::parse(&view.spec_toml) {
            obj.insert("spec".into(), serde_json::to_value(spec)?);
        }
    }
    Ok(v)
}

fn print_model(m: &ModelView) {
    println!("Model:     {}", m.name);
    if !m.state.is_empty() && m.state != "active" {
        println!("State:     {}", m.state);
    }
    println!(
        "Replicas:  desired {} · current {} · ready {} (min {}, max {}{})",
        m.desired_replicas,
        m.current_replicas,
        m.ready_replicas,
        m.min_replicas,
        m.max_replicas,
        m.pinned_replicas
            .map(|n| format!(", pinned to {n}"))
            .unwrap_or_default()
    );
    println!("Created:   {} ({})", m.created, ago(m.created_unix_ms));
    println!("Updated:   {} ({})", m.updated, ago(m.updated_unix_ms));
    if !m.last_decision.is_empty() {
        println!("Decision:  {}", m.last_decision);
    }
    if !m.decision_now.is_empty() && m.decision_now != m.last_decision {
        println!("Now:       {}", m.decision_now);
    }
    if !m.placement_problem.is_empty() {
        println!("Problem:   {}", m.placement_problem);
    }
    println!("\nSpec:");
    for line in m.spec_toml.lines() {
        println!("  {line}");
    }
    if !m.replicas.is_empty() {
        println!();
        super::replica::table(&m.replicas, false).print();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_as_json_has_spec_and_replicas_also_for_a_model_at_zero() {
        let view = ModelView {
            name: "idle".into(),
            spec_toml: "name = \"idle\"\nweights = \"/srv/models/idle\"\nreplicas = 0\n\
                        [server]\ncommand = [\"/bin/sleep\"]\ngpus = 1\ngpu_memory = \"1GiB\"\n"
                .into(),
            ..Default::default()
        };
        let v = with_spec(&view).unwrap();
        assert_eq!(v["replicas"], serde_json::json!([]));
        assert_eq!(v["spec"]["name"], "idle");
    }
}
