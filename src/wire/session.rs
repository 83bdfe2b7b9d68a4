//! Conversions of the agent session's messages (Hello, Report, Assignment,
//! logs) between wire and domain types.

use super::{from_pb, pb, to_pb};

impl From<&crate::domain::Hello> for pb::Hello {
    fn from(h: &crate::domain::Hello) -> Self {
        pb::Hello {
            node_name: h.node_name.clone(),
            boot_id: h.boot_id.clone(),
            agent_version: h.agent_version.clone(),
            labels: h.labels.clone().into_iter().collect(),
            host: Some((&h.host).into()),
            gpus: to_pb(&h.gpus),
            replicas: to_pb(&h.replicas),
            warm: to_pb(&h.warm),
            agent_instance: h.agent_instance.clone(),
        }
    }
}

impl From<pb::Hello> for crate::domain::Hello {
    fn from(h: pb::Hello) -> Self {
        crate::domain::Hello {
            node_name: h.node_name,
            boot_id: h.boot_id,
            agent_version: h.agent_version,
            labels: h.labels.into_iter().collect(),
            host: h.host.map(Into::into).unwrap_or_default(),
            gpus: from_pb(h.gpus),
            replicas: from_pb(h.replicas),
            warm: from_pb(h.warm),
            agent_instance: h.agent_instance,
        }
    }
}

impl From<&crate::domain::Report> for pb::Report {
    fn from(r: &crate::domain::Report) -> Self {
        pb::Report {
            seq: r.seq,
            time_unix_ms: r.time_unix_ms,
            gpus: to_pb(&r.gpus),
            host: Some((&r.host).into()),
            replicas: to_pb(&r.replicas),
            warm: to_pb(&r.warm),
            applied_generation: r.applied_generation,
            inventory: to_pb(&r.inventory),
            ack: r.ack,
        }
    }
}

impl From<pb::Report> for crate::domain::Report {
    fn from(r: pb::Report) -> Self {
        crate::domain::Report {
            seq: r.seq,
            time_unix_ms: r.time_unix_ms,
            gpus: from_pb(r.gpus),
            host: r.host.map(Into::into).unwrap_or_default(),
            replicas: from_pb(r.replicas),
            warm: from_pb(r.warm),
            applied_generation: r.applied_generation,
            inventory: from_pb(r.inventory),
            ack: r.ack,
        }
    }
}

impl From<&crate::domain::Assignment> for pb::Assignment {
    fn from(a: &crate::domain::Assignment) -> Self {
        pb::Assignment {
            generation: a.generation,
            epoch: a.epoch,
            replicas: to_pb(&a.replicas),
            warm: to_pb(&a.warm),
            evict: to_pb(&a.evict),
            keep: a.keep.clone(),
        }
    }
}

impl From<pb::Assignment> for crate::domain::Assignment {
    fn from(a: pb::Assignment) -> Self {
        crate::domain::Assignment {
            generation: a.generation,
            epoch: a.epoch,
            replicas: from_pb(a.replicas),
            warm: from_pb(a.warm),
            evict: from_pb(a.evict),
            keep: a.keep,
        }
    }
}

impl From<&crate::domain::ToAgent> for pb::CoordinatorMessage {
    fn from(m: &crate::domain::ToAgent) -> Self {
        let msg = match m {
            crate::domain::ToAgent::Assignment(a) => {
                pb::coordinator_message::Msg::Assignment(a.into())
            }
            crate::domain::ToAgent::MarkGpuHealthy(index) => {
                pb::coordinator_message::Msg::MarkGpuHealthy(pb::MarkGpuHealthy { index: *index })
            }
            crate::domain::ToAgent::ReportAck(seq) => {
                pb::coordinator_message::Msg::ReportAck(pb::ReportAck { seq: *seq })
            }
            crate::domain::ToAgent::Logs(l) => {
                let (lines, follow, offset) = match l.query {
                    crate::domain::LogQuery::Tail(n) => (n, false, 0),
                    crate::domain::LogQuery::Since(offset) => (0, true, offset),
                };
                pb::coordinator_message::Msg::Logs(pb::LogsRequest {
                    request_id: l.request_id,
                    replica_id: l.replica_id.clone(),
                    lines,
                    follow,
                    offset,
                })
            }
        };
        pb::CoordinatorMessage { msg: Some(msg) }
    }
}

impl From<pb::LogsRequest> for crate::domain::LogsRequest {
    fn from(l: pb::LogsRequest) -> Self {
        crate::domain::LogsRequest {
            request_id: l.request_id,
            replica_id: l.replica_id,
            query: if l.follow {
                crate::domain::LogQuery::Since(l.offset)
            } else {
                crate::domain::LogQuery::Tail(l.lines)
            },
        }
    }
}

impl From<&crate::domain::LogsReply> for pb::LogsReply {
    fn from(l: &crate::domain::LogsReply) -> Self {
        pb::LogsReply {
            request_id: l.request_id,
            lines: l.slice.lines.clone(),
            error: l.error.clone(),
            offset: l.slice.offset,
        }
    }
}

impl From<pb::LogsReply> for crate::domain::LogsReply {
    fn from(l: pb::LogsReply) -> Self {
        crate::domain::LogsReply {
            request_id: l.request_id,
            slice: crate::domain::LogSlice {
                lines: l.lines,
                offset: l.offset,
            },
            error: l.error,
        }
    }
}
