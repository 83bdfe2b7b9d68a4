//! NVML's critical-Xid event set, waited on by its own thread (the wait
//! blocks) and forwarded to the NVML probe as `GpuEvent`s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{EventSet, Nvml};

use super::health::{GpuEvent, XidSource};

/// How long one wait blocks; also bounds how long stopping takes.
const WAIT_MS: u32 = 500;

/// The watcher thread; stops when dropped.
pub(super) struct NvmlEventWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NvmlEventWatcher {
    /// Registers the GPUs `indices` for critical Xid events and starts the
    /// thread. `None` when no GPU supports events (logged).
    pub(super) fn spawn(
        nvml: Arc<Nvml>,
        indices: Vec<u32>,
        events: mpsc::Sender<GpuEvent>,
    ) -> Option<NvmlEventWatcher> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("gpu-nvml-events".into())
            .spawn(move || {
                // The event set borrows the library handle, so both live on
                // this thread.
                let Some(set) = register(&nvml, &indices) else {
                    let _ = ready_tx.send(false);
                    return;
                };
                let _ = ready_tx.send(true);
                watch(&set, &thread_stop, &events);
            });
        let thread = match thread {
            Ok(thread) => thread,
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the NVML event thread");
                return None;
            }
        };
        if ready_rx.recv().unwrap_or(false) {
            Some(NvmlEventWatcher {
                stop,
                thread: Some(thread),
            })
        } else {
            let _ = thread.join();
            None
        }
    }
}

impl Drop for NvmlEventWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn register<'nvml>(nvml: &'nvml Nvml, indices: &[u32]) -> Option<EventSet<'nvml>> {
    let mut set: Option<EventSet<'nvml>> = None;
    let mut registered = 0;
    for &index in indices {
        let current = match set.take() {
            Some(set) => set,
            None => match nvml.create_event_set() {
                Ok(set) => set,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot create an NVML event set; Xid errors come from the kernel log only");
                    return None;
                }
            },
        };
        let result = nvml
            .device_by_index(index)
            .map_err(Into::into)
            .and_then(|device| device.register_events(EventTypes::CRITICAL_XID_ERROR, current));
        match result {
            Ok(current) => {
                set = Some(current);
                registered += 1;
            }
            // A failed registration frees the set; the next GPU gets a new one.
            Err(err) => tracing::info!(gpu = index, error = %err.error,
                "GPU does not deliver NVML Xid events; relying on the kernel log for it"),
        }
    }
    if registered == 0 {
        tracing::info!("no GPU delivers NVML Xid events");
    }
    set.filter(|_| registered > 0)
}

fn watch(set: &EventSet<'_>, stop: &AtomicBool, events: &mpsc::Sender<GpuEvent>) {
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        match set.wait(WAIT_MS) {
            Ok(event) => {
                failing = false;
                if !event.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                    continue;
                }
                let Ok(index) = event.device.index() else {
                    tracing::warn!("NVML reported an Xid on a GPU it cannot name; ignored");
                    continue;
                };
                let xid = match event.event_data {
                    Some(XidError::Value(xid)) => u32::try_from(xid).unwrap_or(u32::MAX),
                    Some(XidError::Unknown) | None => {
                        tracing::warn!(
                            gpu = index,
                            "NVML reported an Xid without its number; see the kernel log"
                        );
                        continue;
                    }
                };
                let sent = events.send(GpuEvent::Xid {
                    index,
                    xid,
                    detail: "NVML critical Xid event".into(),
                    source: XidSource::NvmlEvent,
                });
                if sent.is_err() {
                    return; // the probe is gone
                }
            }
            Err(NvmlError::Timeout) => failing = false,
            Err(err) => {
                if !failing {
                    tracing::warn!(error = %err, "waiting for NVML events failed; retrying every second");
                    failing = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}
