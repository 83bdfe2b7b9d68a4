//! `gpufleet events`: what the fleet did and decided, newest last.

use futures_util::StreamExt;

use crate::api::Event;
use crate::wire::pb;

use super::client::{connect, status_error, ClientArgs};
use super::output::{print_data, Output};

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub node: Option<String>,
    /// How many past events to show (1 or more; the coordinator keeps
    /// `event_log_capacity`).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Keep printing new events as they happen.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

fn line(e: &Event) -> String {
    let mut scope = Vec::new();
    if !e.model.is_empty() {
        scope.push(format!("model={}", e.model));
    }
    if !e.node.is_empty() {
        scope.push(format!("node={}", e.node));
    }
    if !e.replica.is_empty() {
        scope.push(format!("replica={}", e.replica));
    }
    format!(
        "{}  {:<18} {}  {}",
        e.time,
        e.kind,
        e.message,
        scope.join(" ")
    )
}

pub async fn run(args: EventsArgs, client: &ClientArgs, output: Output) -> anyhow::Result<()> {
    let mut c = connect(client).await?;
    let req = pb::ListEventsRequest {
        model: args.model.clone().unwrap_or_default(),
        node: args.node.clone().unwrap_or_default(),
        limit: args.limit,
    };
    // Subscribe before listing, so nothing falls between the two.
    let stream = if args.follow {
        Some(
            c.follow_events(req.clone())
                .await
                .map_err(status_error)?
                .into_inner(),
        )
    } else {
        None
    };
    let events: Vec<Event> = c
        .list_events(req.clone())
        .await
        .map_err(status_error)?
        .into_inner()
        .events
        .into_iter()
        .map(Into::into)
        .collect();
    let Some(mut stream) = stream else {
        if output.is_data() {
            return print_data(&events, output);
        }
        for e in &events {
            println!("{}", line(e));
        }
        return Ok(());
    };
    let mut last = 0;
    for e in &events {
        last = e.seq;
        print_event(e, output)?;
    }
    while let Some(item) = stream.next().await {
        let e: Event = item.map_err(status_error)?.into();
        if e.seq > last {
            print_event(&e, output)?;
        }
    }
    // The coordinator never ends a follow of its own accord: it went away.
    anyhow::bail!(
        "the coordinator at {} ended the event stream (it stopped, restarted or stopped leading); \
         run the command again to follow on",
        client.url()
    )
}

/// Following prints one JSON object per line, so a pipe can read it live.
fn print_event(e: &Event, output: Output) -> anyhow::Result<()> {
    if output.is_data() {
        println!("{}", serde_json::to_string(e)?);
    } else {
        println!("{}", line(e));
    }
    Ok(())
}
