//! The work a request leaves for after its response is sent: a callback's last
//! bookkeeping (the head of a delivery that was not news but changed it, a first binding
//! by a stale delivery; the count of a rejection, a key of its own), then announcing what
//! changed and moving
//! its pipeline on. Nothing here may lose the delivery, which is stored, with its head
//! and listing, before the acknowledgement; whatever fails is redone (a pipeline's next
//! step by the reconciler, a notification from the outbox).

use crate::app::Env;
use crate::config::{NotifyConfig, SubmitConfig};
use crate::error::ApiError;
use crate::ledger::assemble;
use crate::notify::{Notification, Notifier, queue_unsent};
use crate::pipeline::advance::advance;
use crate::pipeline::progress::Next;
use crate::store::layout::TaskKey;
use crate::store::tasks::Bookkeeping;
use crate::task::{TaskEvent, TaskRecord};

/// What a request leaves to do once its sender has the answer.
#[derive(Debug, Default)]
pub struct AfterAck {
    /// A callback's bookkeeping: what is left to write (for news of a task submitted
    /// here, nothing), and the head its record is announced with.
    pub bookkeeping: Option<Bookkeeping>,
    /// A callback's event, when it was news: its record is built from the bookkeeping's
    /// head here, not before the acknowledgement.
    pub news: Option<TaskEvent>,
    /// A task that changed and whose key and record are in hand (read repair).
    pub changed: Option<(TaskKey, TaskRecord)>,
}

/// Runs the work; failures are logged, never returned (the sender has its answer).
pub fn run(work: AfterAck, env: &Env<'_>) {
    if let Some(bookkeeping) = &work.bookkeeping
        && let Err(error) = bookkeeping.apply(env.kv)
    {
        eprintln!("callback bookkeeping after the acknowledgement failed: {error}");
    }
    let (key, task) = match (work.changed, work.news, &work.bookkeeping) {
        (Some(changed), _, _) => changed,
        (None, Some(news), Some(bookkeeping)) => (
            bookkeeping.key().clone(),
            assemble(Some(bookkeeping.head()), news),
        ),
        _ => return, // a duplicate: nothing changed, nothing to announce
    };
    let notify = match NotifyConfig::load(env.vars) {
        Ok(notify) => notify,
        // Whether notifications are on cannot be told (a provider that did not answer),
        // or they are on (`notify_url` is set) with settings that cannot be used yet (no
        // `notify_secret`, one mistyped): the change is queued unsent, for a reconcile
        // run that finds them on and whole (reconcile queues a tracked task's state
        // again when no receiver took it; a task first seen by callback has no run to,
        // and intermediate states none either).
        Err(error) => {
            let notification = Notification::task(&key, &task, env.now_ms);
            let id = notification.webhook_id.clone();
            match queue_unsent(env.kv, notification, env.now_ms) {
                Ok(()) => eprintln!("notification {id} queued unsent: {error}"),
                Err(store) => eprintln!("notification {id} was not queued ({error}): {store}"),
            }
            None
        }
    };
    let notifier = notify.as_ref().map(|config| env.notifier(config));
    if let Some(notifier) = &notifier {
        deliver(notifier, Notification::task(&key, &task, env.now_ms));
    }
    let Some(step) = task.pipeline.filter(|_| task.status.is_final()) else {
        return;
    };
    let id = step.pipeline_id;
    let advanced = SubmitConfig::load(env.vars)
        .map_err(ApiError::from)
        .and_then(|config| advance(&id, &env.submitter(&config)).map_err(ApiError::from));
    match advanced {
        Ok(Some(advanced)) => {
            let finished = matches!(advanced.view.next(), Next::Finished(_));
            if let Some(notifier) = &notifier
                && (advanced.changed || finished)
                && advanced.view.is_announced()
            {
                deliver(notifier, Notification::pipeline(&advanced.view, env.now_ms));
            }
        }
        Ok(None) => {}
        Err(error) => eprintln!("pipeline {id}: the next step waits for the reconciler: {error}"),
    }
}

fn deliver(notifier: &Notifier<'_>, notification: Notification) {
    let id = notification.webhook_id.clone();
    if let Err(error) = notifier.deliver(notification) {
        eprintln!("notification {id} was not sent (the outbox keeps it if it was stored): {error}");
    }
}
