//! The requests of one connection: attaching `Exec`s to jobs, running file transfers, and what the
//! connection does with them when it ends (see the parent module's "Requests" and "Shutdown").

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use burrow_core::protocol::{ExecSpec, Message, Purpose};

use super::{lock, Connection};
use crate::files::{self, Transfer};
use crate::job::{Job, Served, Sink};
use crate::services::{self, Flow};

/// Requests in flight, by id; an entry is removed just before the request's last frame is sent.
pub(crate) type Registry = Arc<Mutex<HashMap<u32, Request>>>;

/// Requests whose last frame carried a job's outcome, by id, until the gateway's `Done`.
pub(crate) type Delivered = Arc<Mutex<HashMap<u32, Arc<Job>>>>;

/// What a request id of this connection stands for.
#[derive(Clone)]
pub(super) enum Request {
    /// Attached to a job (generation `gen` of its attachments).
    Exec { job: Arc<Job>, gen: u64 },
    /// A file transfer.
    File(Arc<Transfer>),
    /// A stream to a declared service.
    Service(Arc<Flow>),
}

impl Connection {
    pub(super) fn request(&self, id: u32) -> Option<Request> {
        lock(&self.requests).get(&id).cloned()
    }

    /// Why request `id` cannot start, if it cannot.
    fn refusal(&self, id: u32) -> Option<String> {
        if id == 0 {
            Some("request id 0 is reserved".to_string())
        } else if lock(&self.requests).contains_key(&id) {
            Some(format!("request {id} is already running"))
        } else {
            None
        }
    }

    fn sink(&self) -> Sink {
        let outbox = self.outbox.clone();
        Arc::new(move |frame| outbox.send(frame))
    }

    pub(super) fn exec(&mut self, id: u32, job: String, spec: ExecSpec) -> anyhow::Result<()> {
        self.join_finished();
        if let Some(message) = self.refusal(id) {
            return self.reply(Message::Failed { id, message });
        }
        log::debug!("request {id}: job {job}");
        let (job, gen) = match self.ctx.jobs.exec(id, job, spec, self.sink()) {
            Ok(attached) => attached,
            Err(answer) => return self.reply(*answer),
        };
        let request = Request::Exec {
            job: job.clone(),
            gen,
        };
        let jobs = self.ctx.jobs.clone();
        let delivered = self.delivered.clone();
        let spawned = self.spawn_request(format!("exec-{id}"), id, request, move |last| {
            match job.serve_attached(gen, id) {
                Served::Outcome(frame) => {
                    // Before it is sent: the gateway's `Done` may come right after.
                    lock(&delivered).insert(id, job.clone());
                    last(frame);
                    // Lets go of this connection's outbox (the writer ends when all senders are gone).
                    job.detach(gen);
                }
                Served::Superseded(frame) => last(frame),
                Served::Gone => jobs.detach(&job, gen),
            }
        });
        if let Err((e, request)) = spawned {
            if let Request::Exec { job, gen } = request {
                self.ctx.jobs.detach(&job, gen);
            }
            return self.reply(Message::Failed {
                id,
                message: format!("starting a thread for the request: {e}"),
            });
        }
        Ok(())
    }

    pub(super) fn open(
        &mut self,
        id: u32,
        stream: u32,
        purpose: Purpose,
        params: String,
    ) -> anyhow::Result<()> {
        if purpose == Purpose::Service && stream == services::STREAM {
            return self.open_service(id, params);
        }
        if purpose != Purpose::File || stream != files::STREAM {
            // Streams of other purposes come with later features: refuse them cleanly.
            return self.reply(Message::Reset {
                id,
                stream,
                reason: "this agent does not serve streams of that purpose".into(),
            });
        }
        self.join_finished();
        if let Some(message) = self.refusal(id) {
            // Failed would end the request that has this id.
            return self.reply(Message::Reset {
                id,
                stream,
                reason: message,
            });
        }
        let slot = match self.ctx.jobs.transfer_slot() {
            Ok(slot) => slot,
            Err(message) => return self.reply(Message::Failed { id, message }),
        };
        let transfer = Arc::new(Transfer::new());
        let request = Request::File(transfer.clone());
        let sink = self.sink();
        let spawned = self.spawn_request(format!("file-{id}"), id, request, move |last| {
            let frame = files::serve(id, &params, &transfer, &sink);
            drop(slot);
            if let Some(frame) = frame {
                last(frame);
            }
        });
        if let Err((e, _)) = spawned {
            return self.reply(Message::Failed {
                id,
                message: format!("starting a thread for the request: {e}"),
            });
        }
        Ok(())
    }

    /// A stream to a declared service (protocol doc, "Services"), on thread `svc-<id>`.
    fn open_service(&mut self, id: u32, params: String) -> anyhow::Result<()> {
        self.join_finished();
        if let Some(message) = self.refusal(id) {
            return self.reply(Message::Reset {
                id,
                stream: services::STREAM,
                reason: message,
            });
        }
        let flow = Arc::new(Flow::default());
        let request = Request::Service(flow.clone());
        let (sink, services) = (self.sink(), self.ctx.services.clone());
        let spawned = self.spawn_request(format!("svc-{id}"), id, request, move |last| {
            if let Some(frame) = services::serve(id, &params, &services, &flow, &sink) {
                last(frame);
            }
        });
        if let Err((e, _)) = spawned {
            return self.reply(Message::Failed {
                id,
                message: format!("starting a thread for the request: {e}"),
            });
        }
        Ok(())
    }

    /// Registers request `id` and runs `work` on its own thread; the request is forgotten before
    /// `work` sends its last frame (the gateway may reuse the id as soon as it sees it).
    fn spawn_request(
        &mut self,
        name: String,
        id: u32,
        request: Request,
        work: impl FnOnce(&dyn Fn(Message)) + Send + 'static,
    ) -> Result<(), (io::Error, Request)> {
        lock(&self.requests).insert(id, request.clone());
        let outbox = self.outbox.clone();
        let requests = Arc::clone(&self.requests);
        let spawned = thread::Builder::new()
            .name(name)
            .stack_size(crate::exec::HELPER_STACK)
            .spawn(move || {
                // Removed from the registry when this thread ends, even if it panics, or earlier:
                // just before the last frame goes out.
                let registered = Mutex::new(Some(Registered { requests, id }));
                work(&|frame| {
                    drop(lock(&registered).take());
                    outbox.send(frame);
                });
            });
        match spawned {
            Ok(thread) => {
                self.threads.push(thread);
                Ok(())
            }
            Err(e) => {
                lock(&self.requests).remove(&id);
                Err((e, request))
            }
        }
    }

    pub(super) fn join_finished(&mut self) {
        let (finished, running) = std::mem::take(&mut self.threads)
            .into_iter()
            .partition(|thread| thread.is_finished());
        self.threads = running;
        finished.into_iter().for_each(join_request);
    }

    pub(super) fn shut_down(&mut self) {
        let requests: Vec<Request> = lock(&self.requests).values().cloned().collect();
        for request in requests {
            match request {
                Request::Exec { job, gen } => self.ctx.jobs.detach(&job, gen),
                Request::File(transfer) => transfer.abort(None),
                Request::Service(flow) => flow.abort(),
            }
        }
        self.threads.drain(..).for_each(join_request);
        // Sent, but the gateway never said it stored them: keep them for the next connection.
        let delivered: Vec<Arc<Job>> = lock(&self.delivered).drain().map(|(_, j)| j).collect();
        for job in delivered {
            self.ctx.jobs.undelivered(&job);
        }
    }
}

/// Removes a request from the registry when its thread is done, even if it panicked.
struct Registered {
    requests: Registry,
    id: u32,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.requests).remove(&self.id);
    }
}

fn join_request(thread: JoinHandle<()>) {
    let name = thread.thread().name().unwrap_or("exec").to_string();
    if thread.join().is_err() {
        log::error!("thread {name} panicked");
    }
}
