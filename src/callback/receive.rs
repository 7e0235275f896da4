//! Receiving one Kling callback: authenticate, parse, check, judge, store.
//!
//! The order matters. Everything that can reject a delivery runs before anything is
//! stored, so a rejected request stores nothing. Signatures are checked over the raw
//! bytes before anything is stored or Kling is asked. Then the store sees two round trips
//! before the sender is acknowledged: one read of the task's head, and, for news, one
//! batch of the status slot with the head (and the first binding, and a task not
//! submitted here's listing entry). A task's first delivery also reads whose task Kling's
//! `task_id` is, so that it never takes another task's. One rare delivery makes more: the
//! one that binds a task submitted here before Kling's create answer also tracks it again
//! ([`TaskStore::track_binding`]: its spare pending entry, listing, pipeline, and give-up
//! mark), before its batch and after it, after asking Kling which task it is; and a
//! success without results asks Kling for them. What is left (the head of a delivery that was not news but changed it) is returned to
//! be written after the acknowledgement.
//!
//! One exception to "the secret first": a repeat, on the `sig` route, of a delivery
//! already stored. News keeps a digest of its proven `sig` in the head, so a delivery
//! whose `sig` the head knows, and which the head shows changes nothing, is answered from
//! that one read without reading the secret (on Spin a variable read costs about as much
//! as a store operation). To find that out, a plain delivery with a `sig` of our shape
//! has its envelope parsed and its head read before the `sig` is checked. Anything else
//! takes the full path, reusing that read and parse.
//!
//! The trade-off, decided: a head keeps its digest after the secret that proved it is
//! dropped (until the task's next news on a URL of a current secret, or retention), so a
//! repeat on such a URL is still answered `duplicate` or `stale` instead of 401. It stores
//! nothing, and it tells only whether that status would change the task, to a sender who
//! holds the URL and knows the task's Kling `task_id`; news on that URL is refused.

use crate::callback::parse::{Envelope, Parsed, PayloadError, parse_envelope};
use crate::config::{CallbackConfig, ConfigError};
use crate::kling::catalog::{Query, TaskKind};
use crate::kling::client::{Found, KlingError, TaskRef};
use crate::ledger::{LedgerError, TaskHead, Verdict, judge_status};
use crate::signatures::callback_url::{self, CallbackSigError};
use crate::signatures::standard_webhooks::{self, WebhookError, WebhookHeaders};
use crate::store::layout::TaskKey;
use crate::store::tasks::{Bookkeeping, RecordError, TaskStore};
use crate::store::{KeyValue, StoreError};
use crate::task::{EventSource, TaskEvent};
use crate::validate::is_valid_external_task_id;

/// Largest callback body accepted (Kling's are a few KiB).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// A request body as the edge read it, never more than its route's limit + 1 bytes
/// ([`crate::app::body_limit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Bytes(Vec<u8>),
    TooLarge,
    /// The connection failed while the body was read.
    Unreadable,
    /// Not read: whether the request may be read could not be decided (the bearer's
    /// variable could not be read from its provider).
    Withheld(ConfigError),
}

/// One callback delivery, as the HTTP layer hands it over. Its `Debug` shows no `sig`.
pub struct Callback<'a> {
    /// From `/callbacks/kling/{external_task_id}`; `None` on `/callbacks/kling`.
    pub external_task_id: Option<&'a str>,
    pub sig: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub webhook: WebhookHeaders<'a>,
    pub body: &'a Body,
}

impl std::fmt::Debug for Callback<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callback")
            .field("external_task_id", &self.external_task_id)
            .field("sig", &self.sig.map(|_| "<redacted>"))
            .field("content_type", &self.content_type)
            .field("webhook", &self.webhook)
            // Kling's, not ours to print.
            .field(
                "body",
                &match self.body {
                    Body::Bytes(bytes) => format!("{} bytes", bytes.len()),
                    other => format!("{other:?}"),
                },
            )
            .finish()
    }
}

impl Callback<'_> {
    /// Whether the Standard Webhooks key can check this delivery: it is the only proof on
    /// `/callbacks/kling`, and on the `sig` route it checks the headers a sender included.
    /// Otherwise the key is not even read (a variable read is a provider lookup on Spin).
    pub fn can_use_webhook_key(&self) -> bool {
        self.external_task_id.is_none() || self.webhook.any_present()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("external_task_id in the URL must be 1 to 64 characters of A-Z a-z 0-9 _ -")]
    InvalidExternalTaskId,
    #[error(transparent)]
    Signature(#[from] CallbackSigError),
    #[error("Standard Webhooks signature rejected: {0}")]
    Webhook(#[from] WebhookError),
    #[error(
        "this route accepts only Standard Webhooks-signed callbacks, and webhook_signing_secret is not set"
    )]
    WebhookSigningNotConfigured,
    #[error("content type must be application/json")]
    UnsupportedContentType,
    #[error("body is larger than 256 KiB")]
    TooLarge,
    #[error("the request body could not be read")]
    UnreadableBody,
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("task_info.external_task_id in the body differs from the callback URL's")]
    ExternalTaskIdMismatch,
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not verify the callback with Kling: {0}")]
    Verification(KlingError),
    #[error(
        "Kling does not list a task under this external_task_id yet, so this callback cannot be bound to it"
    )]
    BindingUnconfirmed,
    #[error("this Kling task_id is already bound to another task")]
    TaskIdTaken,
    #[error("Kling's record of this task does not show this success and its results yet")]
    ResultsNotReady,
    #[error("Kling's record of this task does not show it finished yet")]
    FinalNotConfirmed,
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl From<RecordError> for CallbackError {
    fn from(error: RecordError) -> Self {
        match error {
            RecordError::Ledger(e) => CallbackError::Ledger(e),
            RecordError::Store(e) => CallbackError::Store(e),
        }
    }
}

/// A delivery that was stored (or recognised as already stored).
#[derive(Debug)]
pub struct Received {
    pub verdict: Verdict,
    /// To apply after acknowledging the sender (none for an ignored delivery).
    pub bookkeeping: Option<Bookkeeping>,
    /// The delivery's event, when it was news (what changed, to act on after the
    /// acknowledgement).
    pub news: Option<TaskEvent>,
}

/// Handles one delivery. `config` reads the secrets (only when they are needed); `now_ms`
/// is our clock (Standard Webhooks tolerance, counters).
pub fn receive(
    callback: &Callback<'_>,
    config: &dyn Fn() -> Result<CallbackConfig, ConfigError>,
    kv: &dyn KeyValue,
    kling: &KlingCheck<'_>,
    now_ms: u64,
) -> Result<Received, CallbackError> {
    // A malformed id in the URL is refused before anything is read, the secrets included:
    // it is a 400 whatever the deployment's settings.
    if callback
        .external_task_id
        .is_some_and(|id| !is_valid_external_task_id(id))
    {
        return Err(CallbackError::InvalidExternalTaskId);
    }
    let store = TaskStore::new(kv);
    let early = known_repeat(callback, &store);
    if let Some(verdict) = early.repeat {
        return Ok(Received {
            verdict,
            bookkeeping: None,
            news: None,
        });
    }
    let config = &config()?;
    // Every proof before any judgment of what was sent: an unsigned request hears 401,
    // whatever its content type (the body's signature needs the body, so a body too large
    // or cut off to check comes first).
    authenticate_url(callback, config)?;
    let body = match callback.body {
        Body::Bytes(bytes) => bytes.as_slice(),
        Body::TooLarge => return Err(CallbackError::TooLarge),
        Body::Unreadable => return Err(CallbackError::UnreadableBody),
        Body::Withheld(error) => return Err(CallbackError::Config(error.clone())),
    };
    // Kling signed this very body (Standard Webhooks): its ids are Kling's word.
    let signed_by_kling = authenticate_body(callback, config, body, now_ms)?;
    if !is_json(callback.content_type) {
        return Err(CallbackError::UnsupportedContentType);
    }

    let parsed = match early.parsed.unwrap_or_else(|| parse_envelope(body)) {
        Err(PayloadError::UnknownStatus) => {
            // Never the body itself in the log: it is Kling's, not ours to print.
            eprintln!("callback ignored: a task status this build does not know");
            return Ok(Received {
                verdict: Verdict::Ignored,
                bookkeeping: None,
                news: None,
            });
        }
        parsed => parsed?,
    };
    let envelope = parsed.envelope();
    let mut key = match (
        callback.external_task_id,
        envelope.external_task_id.as_deref(),
    ) {
        (Some(url), Some(body)) if url != body => {
            return Err(CallbackError::ExternalTaskIdMismatch);
        }
        (Some(id), _) => TaskKey::external(id),
        (None, Some(id)) if is_valid_external_task_id(id) => TaskKey::external(id),
        // None, or one outside our key format (a task submitted elsewhere may use any id
        // Kling takes): filed under Kling's task_id, the external id kept in the record.
        (None, _) => TaskKey::kling(&envelope.task_id),
    };

    // The early read was of the URL's key, which is this one on the `sig` route.
    let mut head = match early.head {
        Some(read) => read?,
        None => store.head(&key)?,
    };
    // A body that names no external id we can key by, of a task stored under its
    // external id (an older delivery without `task_info`, after one with it): that
    // task's, not a second task filed under the same Kling id. Read only when nothing is
    // filed under the Kling id (so every such delivery of that task pays it).
    if callback.external_task_id.is_none()
        && head.is_none()
        && key == TaskKey::kling(&envelope.task_id)
        && let Some(owner) = match store.key_of_task_id(&envelope.task_id) {
            // An entry that cannot be read names no task: filed under the Kling id.
            Err(StoreError::Corrupt(_)) => None,
            read => read?,
        }
        && owner != key
    {
        head = store.head(&owner)?;
        key = owner;
    }
    if let Some(head) = &head
        && let Some(verdict) = repeat_of_bound_task(head, envelope)?
    {
        return Ok(Received {
            verdict,
            bookkeeping: None,
            news: None,
        });
    }
    // A first binding of a task Kling is not asked about (not submitted here) writes
    // `taskid:{task_id}`: on a body only the URL vouches for, one that would take
    // another task's must not, or a URL whose task has no record yet (or no longer)
    // could redirect that task's reads and notifications to a body of its poster's
    // choosing. Read only then: one more read for a task's first delivery, none for
    // any other.
    // Kling's signature covers the body, not the URL: it vouches for the key only when
    // the body names it (`/callbacks/kling`, or the URL's own id in the body).
    let key_signed = signed_by_kling
        && (callback.external_task_id.is_none()
            || envelope.external_task_id.as_deref() == callback.external_task_id);
    if !key_signed
        && head
            .as_ref()
            .is_none_or(|h| h.task_id.is_none() && h.submission.is_none())
        && store
            .key_of_task_id(&envelope.task_id)?
            .is_some_and(|owner| owner != key)
    {
        return Err(CallbackError::TaskIdTaken);
    }
    let event = parsed.into_event();
    let (event, head) = match checked_with_kling(kling, head.as_ref(), event)? {
        Checked::AsItCame(event) => (*event, head),
        // Kling took its time (up to `kling_timeout_ms`): judge and write against the
        // head as it is now, so that what another delivery stored meanwhile (a final
        // above all) is neither repeated nor written over with the older read.
        Checked::Confirmed(event) => (*event, store.head(&key)?),
        Checked::Rejected | Checked::Unverifiable => {
            return Ok(Received {
                verdict: Verdict::Rejected,
                // A task never stored gets no count of its own.
                bookkeeping: match head {
                    Some(head) => Some(store.bookkeeping_rejected(&key, head)?),
                    None => None,
                },
                news: None,
            });
        }
    };
    // Proven with the secret by now (on `/callbacks/kling` there is no `sig`).
    let proven_sig = callback
        .external_task_id
        .and(callback.sig)
        .map(callback_url::sig_digest);
    let (verdict, bookkeeping) =
        store.record_event_with_head(&key, head, &event, now_ms, proven_sig)?;
    let news = matches!(verdict, Verdict::Apply(_));
    Ok(Received {
        verdict,
        // News keeps its bookkeeping even with nothing left to write: the record that is
        // announced after the acknowledgement is built from its head.
        bookkeeping: (news || !bookkeeping.changes_nothing()).then_some(bookkeeping),
        news: news.then_some(event),
    })
}

/// What the repeat shortcut found: its answer, or what it read, so that the full path
/// does neither twice.
#[derive(Default)]
struct BeforeTheSecret {
    /// A repeat of a delivery already stored, on a URL whose `sig` the head knows.
    repeat: Option<Verdict>,
    /// The head, if it was read (`Some(Ok(None))`: no task). A failed read is reported
    /// once the request is authenticated, as the full path's own read would be.
    head: Option<Result<Option<TaskHead>, StoreError>>,
    /// The envelope, or why it could not be read, if the body was parsed.
    parsed: Option<Result<Parsed, PayloadError>>,
}

/// The repeat shortcut (see the module's doc). Only a plain delivery on the `sig` route
/// (a well-formed `sig`, no Standard Webhooks headers to check, a JSON envelope naming no
/// other external id) is worth the early read of its head. The id's format was checked
/// first thing in [`receive`].
fn known_repeat(callback: &Callback<'_>, store: &TaskStore<'_>) -> BeforeTheSecret {
    let (Some(id), Some(sig), Body::Bytes(body)) =
        (callback.external_task_id, callback.sig, callback.body)
    else {
        return BeforeTheSecret::default();
    };
    if callback.webhook.any_present()
        || !callback_url::is_well_formed(sig)
        || !is_json(callback.content_type)
    {
        return BeforeTheSecret::default();
    }
    let parsed = match parse_envelope(body) {
        Ok(parsed) => parsed,
        failed @ Err(_) => {
            return BeforeTheSecret {
                parsed: Some(failed),
                ..BeforeTheSecret::default()
            };
        }
    };
    let envelope = parsed.envelope();
    if envelope
        .external_task_id
        .as_deref()
        .is_some_and(|body| body != id)
    {
        return BeforeTheSecret {
            parsed: Some(Ok(parsed)),
            ..BeforeTheSecret::default()
        };
    }
    let head = store.head(&TaskKey::external(id));
    let repeat = head
        .as_ref()
        .ok()
        .and_then(Option::as_ref)
        .and_then(|head| {
            let digest = head.callback_sig_sha256.as_deref()?;
            if !callback_url::matches_digest(sig, digest) {
                return None;
            }
            repeat_of_bound_task(head, envelope).ok().flatten()
        });
    BeforeTheSecret {
        repeat,
        head: Some(head),
        parsed: Some(Ok(parsed)),
    }
}

/// A duplicate or stale delivery of a bound task, recognised from its envelope and the
/// head: answered without reading its results, and nothing is written. Under
/// `verify_callbacks` too: verifying guards what is stored, and a repeat stores nothing
/// (a forged final that claims to be newer is news, and is verified). A delivery naming
/// another Kling task than the bound one is refused first.
fn repeat_of_bound_task(
    head: &TaskHead,
    envelope: &Envelope,
) -> Result<Option<Verdict>, LedgerError> {
    head.check_binding_to(&envelope.task_id)?;
    // Unbound: Kling is asked which task this is (`checked_with_kling`).
    if head.task_id.is_none() {
        return Ok(None);
    }
    Ok(
        match judge_status(&head.seen, envelope.status, envelope.updated_at) {
            verdict @ (Verdict::Duplicate | Verdict::Stale) => Some(verdict),
            _ => None,
        },
    )
}

/// Kling asked with the component's own credentials: binding a task submitted here,
/// fetching the results a `succeed` came without, and `verify_callbacks`. Legacy
/// callbacks are unsigned, so a leaked callback URL could otherwise post anything.
pub struct KlingCheck<'a> {
    pub lookup: &'a dyn KlingLookup,
    /// `verify_callbacks`: a final callback is stored only as Kling confirms it. Read only
    /// for a final that would be stored: on Spin every variable read is a provider lookup
    /// that costs about as much as a store operation (README, "Performance on Spin").
    pub verify_finals: &'a dyn Fn() -> Result<bool, ConfigError>,
}

/// Kling's record of a task submitted here: by Kling's `task_id` once it is bound (some
/// kinds can be looked up by nothing else), by our `external_task_id` before.
pub trait KlingLookup {
    fn find(&self, kind: TaskKind, id: TaskRef<'_>) -> Result<Option<Found>, CallbackError>;
}

enum Checked {
    /// Nothing to ask Kling: the callback is stored as it came.
    AsItCame(Box<TaskEvent>),
    /// Kling was asked (to bind the task, or to verify a final) and agrees: what to store.
    Confirmed(Box<TaskEvent>),
    /// A final callback Kling contradicted: counted, nothing stored.
    Rejected,
    /// A final callback to verify that Kling cannot be asked about: a task not
    /// submitted here, or one whose head lacks its kind (or a kind this build does not
    /// know) or its external id. Rejected like a contradicted one.
    Unverifiable,
}

/// What may be stored of `callback`, after asking Kling where that is needed:
/// - A task submitted here whose `task_id` is not bound yet (a callback that outran
///   Kling's create answer) is bound only to the task Kling lists under our external
///   id: another `task_id` is refused (409), and a task Kling does not list yet is not
///   acknowledged (503), so a forged callback can never bind it.
/// - A `succeed` without results ([`TaskEvent::lacks_results`]) of a task submitted here
///   is stored as Kling reports it, results included, if Kling agrees on the task and
///   its status (as it came otherwise: Kling's record may lag its callback); a Kling
///   that cannot be asked is a 503, so the results are never stored missing for good
///   (Kling retries, and the reconciler polls the task, still unfinished here).
/// - With `verify_callbacks`, a final callback is stored as Kling reports it if Kling
///   agrees on the task and its status, whatever result URLs the callback carried (they
///   are not what is stored, and Kling's hot-link protected CDN URLs need not be the
///   same in two answers). A final Kling's record does not show yet (the task still
///   running there, or a success without its results) is not acknowledged (503): Kling
///   may be behind its own callback, and a retry or the reconciler settles it. Any other
///   answer (another final, another task, none) contradicts it: rejected. A task not
///   submitted here (its Kling endpoint unknown) cannot be verified and is rejected.
///
/// Every other delivery is stored as it came, without asking Kling: a task not
/// submitted here, whose Kling endpoint is unknown, keeps a results-less success as it
/// came.
fn checked_with_kling(
    check: &KlingCheck<'_>,
    head: Option<&TaskHead>,
    callback: TaskEvent,
) -> Result<Checked, CallbackError> {
    let bare = callback.lacks_results();
    let final_stored = head.is_some_and(|h| h.seen.final_state.is_some());
    // A success without results over a stored final is never stored (the ledger's rule):
    // nothing to verify, and no forgery to count.
    let verify = callback.status.is_final() && !(bare && final_stored) && (check.verify_finals)()?;
    // Not over a stored final: the ledger never lets it refresh one (and Kling would be
    // asked again on every re-send).
    let fetch_results = bare && !final_stored;
    // The common case, first and without a look at the catalog: nothing to ask Kling.
    if !verify && !fetch_results && head.is_none_or(|h| h.task_id.is_some()) {
        return Ok(Checked::AsItCame(Box::new(callback)));
    }
    let submitted = head.and_then(|h| {
        let kind = TaskKind::from_name(&h.submission.as_ref()?.kind)?;
        Some((kind, h.external_task_id.as_deref()?, h.task_id.as_deref()))
    });
    let Some((kind, external_task_id, bound_task_id)) = submitted else {
        return Ok(if verify {
            Checked::Unverifiable
        } else {
            Checked::AsItCame(Box::new(callback))
        });
    };
    // Here the task is unbound, or a final is to be verified.
    let unbound = bound_task_id.is_none();
    // A kind Kling looks up by its own task_id only is asked by the callback's, not
    // looked for in the newest pages of its list, which a busy account may have moved
    // past it.
    let by_callback_id = unbound && kind.spec().query == Query::ByTaskIdOnly;
    let id = match bound_task_id {
        Some(task_id) => TaskRef::Kling(task_id),
        None if by_callback_id => TaskRef::Kling(&callback.task_id),
        None => TaskRef::External(external_task_id),
    };
    // Kling's answer must be about our external id, and its task the callback's. Asked
    // by the callback's own id, only Kling naming our external id confirms it.
    let kling = check
        .lookup
        .find(kind, id)?
        .filter(|k| match &k.external_task_id {
            Some(ext) => ext == external_task_id,
            None => !by_callback_id,
        });
    if unbound {
        match &kling {
            None => return Err(CallbackError::BindingUnconfirmed),
            // Another task, or Kling's task under our id from before our first
            // submission of it (an earlier life's of the id: retention deleted ours).
            Some(k)
                if k.task_id != callback.task_id
                    || (head.and_then(|h| h.submission.as_ref())).is_some_and(|s| {
                        !s.may_have_made(k.event.as_ref().and_then(|e| e.created_at))
                    }) =>
            {
                return Err(LedgerError::BoundToAnotherTask.into());
            }
            Some(_) => {}
        }
    }
    if !verify && !fetch_results {
        return Ok(Checked::Confirmed(Box::new(callback)));
    }
    // Binding needed only Kling's ids; judging a final needs Kling's status too.
    let kling = match kling {
        // A status this build does not know: Kling cannot confirm this callback yet.
        // Not acknowledged, so Kling (or the reconciler) brings it again.
        Some(Found { event: None, .. }) if verify => {
            return Err(CallbackError::Verification(KlingError::UnknownStatus));
        }
        Some(Found { event, .. }) => event,
        None => None,
    };
    // Kling's record is what is stored, filed under our external id.
    let as_kling_reports = |mut kling: TaskEvent| {
        kling.external_task_id = Some(external_task_id.to_string());
        kling.source = EventSource::Callback;
        Checked::Confirmed(Box::new(kling))
    };
    Ok(match kling {
        // Kling agrees. (A callback with results that Kling's success still lacks is
        // not confirmed yet: below.)
        Some(kling)
            if kling.task_id == callback.task_id
                && kling.status == callback.status
                && (bare || !kling.lacks_results()) =>
        {
            as_kling_reports(kling)
        }
        // Kling's success still without the results the callback brings: Kling is behind
        // its callback (bound or not, a success stored without its results would stay so).
        Some(kling)
            if verify
                && !bare
                && kling.task_id == callback.task_id
                && kling.status == callback.status =>
        {
            return Err(CallbackError::FinalNotConfirmed);
        }
        // Only fetching, and Kling's record of the task does not show the success yet:
        // that record is stored instead (binding the task, and tracking it again if it
        // was given up), never a success without its results; the success comes with
        // Kling's next delivery or the reconciler's poll.
        // (Not over `lost`: a live state is stale there, and the success would be
        // acknowledged and never stored.) Under `verify_callbacks` too for a task not
        // bound yet: the callback is not stored, but Kling's own record binds the task
        // (and tracks it again if it was given up), where a rejection would leave a task
        // Kling has just shown it has given up for good.
        Some(kling)
            if (!verify || unbound)
                && kling.task_id == callback.task_id
                && head.is_none_or(|h| h.seen.lost.is_none()) =>
        {
            as_kling_reports(kling)
        }
        // Kling is behind its callback: the same task, not finished there yet. Not
        // acknowledged, and not counted as a forgery.
        Some(kling) if verify && kling.task_id == callback.task_id && !kling.status.is_final() => {
            return Err(CallbackError::FinalNotConfirmed);
        }
        _ if verify => Checked::Rejected,
        // Kling has no record of it (or one this build cannot read): Kling retries.
        _ => return Err(CallbackError::ResultsNotReady),
    })
}

/// The URL's proof: `sig` on `/callbacks/kling/{id}`; on `/callbacks/kling` the
/// Standard Webhooks signature is the only proof, so it must be configured.
fn authenticate_url(callback: &Callback<'_>, config: &CallbackConfig) -> Result<(), CallbackError> {
    match callback.external_task_id {
        // Its format was checked first thing.
        Some(id) => callback_url::verify(&config.callback_secret, id, callback.sig)?,
        None if config.webhook_secret.is_none() => {
            return Err(CallbackError::WebhookSigningNotConfigured);
        }
        None => {}
    }
    Ok(())
}

/// Standard Webhooks headers: required on `/callbacks/kling`; on the `sig` route they
/// are verified whenever a secret is configured and the sender included them. True when
/// they were: Kling signed this body.
fn authenticate_body(
    callback: &Callback<'_>,
    config: &CallbackConfig,
    body: &[u8],
    now_ms: u64,
) -> Result<bool, CallbackError> {
    let Some(secret) = &config.webhook_secret else {
        return Ok(false);
    };
    if !callback.can_use_webhook_key() {
        return Ok(false);
    }
    let now_secs = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
    standard_webhooks::verify(secret, &callback.webhook, body, now_secs)?;
    Ok(true)
}

/// `application/json`, any `+json` type, with any parameters; no content type at all is
/// accepted too (Kling's senders are not consistent about it).
fn is_json(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return true;
    };
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media_type == "application/json"
        || (media_type.starts_with("application/") && media_type.ends_with("+json"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::ledger::Slot;
    use crate::signatures::standard_webhooks::WebhookSecret;
    use crate::store::memory::MemoryKv;

    /// For deliveries that must not ask Kling (none of these tasks was submitted here).
    struct NotAsked;

    impl KlingLookup for NotAsked {
        fn find(&self, _: TaskKind, _: TaskRef<'_>) -> Result<Option<Found>, CallbackError> {
            panic!("Kling was asked")
        }
    }

    fn off() -> Result<bool, ConfigError> {
        Ok(false)
    }

    fn on() -> Result<bool, ConfigError> {
        Ok(true)
    }

    pub(crate) fn no_kling() -> KlingCheck<'static> {
        KlingCheck {
            lookup: &NotAsked,
            verify_finals: &off,
        }
    }

    /// Kling listing `task_id` under `job-1` (or nothing), counting the questions.
    struct Lists {
        task_id: Option<&'static str>,
        external_task_id: &'static str,
        asked: std::cell::Cell<usize>,
        /// Kling reports a status this build does not know.
        new_status: bool,
        /// Kling reports the task still `processing`, with no results.
        still_processing: bool,
        /// A success without its results (Kling's record behind its callback).
        results_pending: bool,
        /// Kling's `created_at` of the task.
        created_at: Option<u64>,
    }

    impl KlingLookup for Lists {
        fn find(&self, _: TaskKind, id: TaskRef<'_>) -> Result<Option<Found>, CallbackError> {
            match id {
                TaskRef::External(ext) => assert_eq!(ext, "job-1", "unbound: by our own id"),
                TaskRef::Kling(task_id) => {
                    assert_eq!(Some(task_id), self.task_id, "bound: by Kling's id")
                }
            }
            self.asked.set(self.asked.get() + 1);
            let event = self.task_id.map(|task_id| TaskEvent {
                task_id: task_id.into(),
                status: if self.still_processing {
                    crate::task::TaskStatus::Processing
                } else {
                    crate::task::TaskStatus::Succeed
                },
                status_msg: String::new(),
                external_task_id: Some(self.external_task_id.into()),
                created_at: self.created_at,
                updated_at: Some(9),
                videos: (!self.still_processing && !self.results_pending)
                    .then(|| crate::task::Video {
                        id: Some("867".into()),
                        url: Some(VIDEO_URL.into()),
                        ..Default::default()
                    })
                    .into_iter()
                    .collect(),
                images: Vec::new(),
                more: Default::default(),
                final_unit_deduction: None,
                source: EventSource::Poll,
            });
            Ok(event.map(|event| Found {
                task_id: event.task_id.clone(),
                external_task_id: event.external_task_id.clone(),
                event: (!self.new_status).then_some(event),
            }))
        }
    }

    fn lists(task_id: Option<&'static str>) -> Lists {
        Lists {
            task_id,
            external_task_id: "job-1",
            asked: Default::default(),
            new_status: false,
            still_processing: false,
            results_pending: false,
            created_at: None,
        }
    }

    /// `job-1` submitted here, its create answer not in yet (unbound), or bound to `bound`.
    fn submitted(kv: &MemoryKv, bound: Option<&str>) {
        let head = TaskHead {
            task_id: bound.map(str::to_string),
            external_task_id: Some("job-1".into()),
            submission: Some(crate::ledger::Submission {
                kind: "text2video".into(),
                nonce: "n".into(),
                status: crate::task::TaskStatus::Submitting,
                submitted_at: 1,
                pipeline: None,
                body_digest: None,
                first_submitted_at: None,
            }),
            ..TaskHead::default()
        };
        kv.set("task:job-1", &crate::store::to_json(&head)).unwrap();
    }

    fn deliver_checked(
        kv: &MemoryKv,
        body: &Body,
        lookup: &Lists,
        verify_finals: bool,
    ) -> Result<Received, CallbackError> {
        let check = KlingCheck {
            lookup,
            verify_finals: if verify_finals { &on } else { &off },
        };
        deliver_with(kv, body, &check)
    }

    /// A validly signed delivery for `job-1`.
    fn deliver_with(
        kv: &MemoryKv,
        body: &Body,
        check: &KlingCheck<'_>,
    ) -> Result<Received, CallbackError> {
        let sig = callback_url::sign(&Secret::new(SECRET), "job-1");
        let callback = Callback {
            external_task_id: Some("job-1"),
            sig: Some(&sig),
            content_type: None,
            webhook: WebhookHeaders::default(),
            body,
        };
        receive(&callback, &|| Ok(config(false)), kv, check, NOW_MS)
    }

    #[test]
    fn an_unbound_task_submitted_here_is_bound_only_to_the_task_kling_lists() {
        // Kling lists task 86 under our id: the callback for 86 is stored.
        let kv = MemoryKv::default();
        submitted(&kv, None);
        let received = deliver_checked(&kv, &body("processing", 5), &lists(Some("86")), false);
        assert_eq!(received.unwrap().verdict, Verdict::Apply(Slot::Processing));

        // A forged callback naming another task: 409, nothing stored.
        let kv = MemoryKv::default();
        submitted(&kv, None);
        let before = kv.map.borrow().clone();
        let forged = deliver_checked(&kv, &body("processing", 5), &lists(Some("999")), false);
        assert_eq!(
            forged.unwrap_err(),
            CallbackError::Ledger(LedgerError::BoundToAnotherTask)
        );
        // Kling does not list it yet: not acknowledged, nothing stored.
        let unlisted = deliver_checked(&kv, &body("processing", 5), &lists(None), false);
        assert_eq!(unlisted.unwrap_err(), CallbackError::BindingUnconfirmed);
        // Kling answers about another external id: not a confirmation either.
        let mut other = lists(Some("86"));
        other.external_task_id = "job-2";
        let unconfirmed = deliver_checked(&kv, &body("processing", 5), &other, false);
        assert_eq!(unconfirmed.unwrap_err(), CallbackError::BindingUnconfirmed);
        assert_eq!(*kv.map.borrow(), before);

        // Kling's task under our id is from before our first submission of it (an
        // earlier life of the id, retention deleted ours): 409, nothing stored.
        const DAY: u64 = 86_400_000;
        let kv = MemoryKv::default();
        submitted(&kv, None);
        let mut head: TaskHead = crate::store::get_json(&kv, "task:job-1").unwrap().unwrap();
        if let Some(submission) = head.submission.as_mut() {
            submission.first_submitted_at = Some(40 * DAY);
        }
        kv.set("task:job-1", &crate::store::to_json(&head)).unwrap();
        let before = kv.map.borrow().clone();
        let mut earlier_life = lists(Some("86"));
        earlier_life.created_at = Some(10 * DAY);
        let taken = deliver_checked(&kv, &body("processing", 5), &earlier_life, false);
        assert_eq!(
            taken.unwrap_err(),
            CallbackError::Ledger(LedgerError::BoundToAnotherTask)
        );
        assert_eq!(*kv.map.borrow(), before);
    }

    /// Kling for a kind it looks up by its own task_id only (advanced-lip-sync): asked by
    /// our id it scans a list that no longer holds the task; asked by its id it answers,
    /// naming the external id it was created with (`names`).
    struct ByKlingIdOnly {
        names: Option<&'static str>,
        asked: std::cell::RefCell<Vec<String>>,
    }

    impl KlingLookup for ByKlingIdOnly {
        fn find(&self, _: TaskKind, id: TaskRef<'_>) -> Result<Option<Found>, CallbackError> {
            let TaskRef::Kling(task_id) = id else {
                self.asked.borrow_mut().push("by our id".into());
                return Ok(None);
            };
            self.asked.borrow_mut().push(format!("by {task_id}"));
            let event = TaskEvent {
                task_id: task_id.into(),
                status: crate::task::TaskStatus::Processing,
                status_msg: String::new(),
                external_task_id: self.names.map(Into::into),
                created_at: None,
                updated_at: Some(5),
                videos: Vec::new(),
                images: Vec::new(),
                more: Default::default(),
                final_unit_deduction: None,
                source: EventSource::Poll,
            };
            Ok(Some(Found {
                task_id: task_id.into(),
                external_task_id: self.names.map(Into::into),
                event: Some(event),
            }))
        }
    }

    #[test]
    fn a_task_kling_finds_by_its_own_id_only_is_bound_by_the_callback_s_id() {
        for (names, binds) in [(Some("job-1"), true), (Some("job-2"), false), (None, false)] {
            let kv = MemoryKv::default();
            submitted(&kv, None);
            let mut head: TaskHead =
                serde_json::from_slice(&kv.get("task:job-1").unwrap().unwrap()).unwrap();
            if let Some(submission) = head.submission.as_mut() {
                submission.kind = "advanced-lip-sync".into();
            }
            kv.set("task:job-1", &crate::store::to_json(&head)).unwrap();
            let kling = ByKlingIdOnly {
                names,
                asked: Default::default(),
            };
            let check = KlingCheck {
                lookup: &kling,
                verify_finals: &off,
            };
            let received = deliver_with(&kv, &body("processing", 5), &check);
            assert_eq!(*kling.asked.borrow(), ["by 86"], "{names:?}");
            if binds {
                assert_eq!(received.unwrap().verdict, Verdict::Apply(Slot::Processing));
                let head = TaskStore::new(&kv)
                    .head(&TaskKey::external("job-1"))
                    .unwrap();
                assert_eq!(head.and_then(|h| h.task_id).as_deref(), Some("86"));
            } else {
                assert_eq!(
                    received.unwrap_err(),
                    CallbackError::BindingUnconfirmed,
                    "{names:?}"
                );
            }
        }
    }

    #[test]
    fn a_binding_whose_tracking_write_fails_is_done_whole_by_the_retry() {
        // job-1 was given up (its mark; the run released its entries), and then Kling's
        // callback comes: Kling lists task 86 under it.
        let kv = MemoryKv::default();
        submitted(&kv, None);
        kv.set("task:job-1:forgotten:n", b"1").unwrap();
        let kling = lists(Some("86"));
        kv.fail_set_starting.replace(Some("pending/".into()));
        let failed = deliver_checked(&kv, &body("processing", 5), &kling, false);
        assert!(matches!(failed, Err(CallbackError::Store(_))), "a 503");
        let retried = deliver_checked(&kv, &body("processing", 5), &kling, false).unwrap();
        assert_eq!(
            retried.verdict,
            Verdict::Apply(Slot::Processing),
            "not a repeat"
        );
        let pending = crate::store::index::Index::pending(&kv).entries().unwrap();
        assert!(!pending.is_empty(), "tracked again");
        assert_eq!(kv.map.borrow().get("task:job-1:forgotten:n"), None);
        let head = TaskStore::new(&kv)
            .head(&TaskKey::external("job-1"))
            .unwrap()
            .unwrap();
        assert_eq!(head.task_id.as_deref(), Some("86"));
    }

    #[test]
    fn a_status_kling_added_later_still_binds_but_cannot_verify_a_final() {
        let kv = MemoryKv::default();
        submitted(&kv, None);
        let mut kling = lists(Some("86"));
        kling.new_status = true;
        let bound = deliver_checked(&kv, &body("processing", 5), &kling, false).unwrap();
        assert_eq!(
            bound.verdict,
            Verdict::Apply(Slot::Processing),
            "the ids bind"
        );
        let final_ = deliver_checked(&kv, &body("succeed", 6), &kling, true);
        assert_eq!(
            final_.unwrap_err(),
            CallbackError::Verification(KlingError::UnknownStatus),
            "not acknowledged: Kling brings it again"
        );
    }

    #[test]
    fn a_bound_task_s_callbacks_ask_kling_only_to_verify_a_final_that_would_be_stored() {
        let kv = MemoryKv::default();
        submitted(&kv, Some("86"));
        let kling = lists(Some("86"));
        deliver_checked(&kv, &body("processing", 5), &kling, true).unwrap();
        deliver_checked(&kv, &body("succeed", 6), &kling, false).unwrap();
        assert_eq!(kling.asked.get(), 0);
        let verified = deliver_checked(&kv, &body("succeed", 7), &kling, true).unwrap();
        assert_eq!(kling.asked.get(), 1);
        assert_eq!(verified.verdict, Verdict::Apply(Slot::Final));

        // Kling's version (updated_at 9) is stored: a final no newer is a repeat, answered
        // from the head without asking Kling, and so is a final of another status.
        for (repeat, verdict) in [
            (body("succeed", 8), Verdict::Duplicate),
            (body("failed", 20), Verdict::Stale),
        ] {
            let answered = deliver_checked(&kv, &repeat, &kling, true).unwrap();
            assert_eq!(answered.verdict, verdict);
        }
        assert_eq!(kling.asked.get(), 1);

        // A newer one would be stored: Kling's answer about another external id
        // contradicts it.
        let mut other = lists(Some("86"));
        other.external_task_id = "job-2";
        let rejected = deliver_checked(&kv, &body("succeed", 10), &other, true).unwrap();
        assert_eq!(rejected.verdict, Verdict::Rejected);
        assert_eq!(other.asked.get(), 1);
    }

    #[test]
    fn a_rejection_is_counted_on_a_key_of_its_own_and_writes_no_head() {
        let kv = MemoryKv::default();
        submitted(&kv, Some("86"));
        let mut contradicts = lists(Some("86"));
        contradicts.external_task_id = "job-2";
        let rejected = deliver_checked(&kv, &body("succeed", 10), &contradicts, true).unwrap();
        assert_eq!(rejected.verdict, Verdict::Rejected);
        // Kling's next delivery is stored before the rejection's count is written.
        let news = deliver_checked(&kv, &body("processing", 11), &lists(Some("86")), true);
        if let Some(books) = news.unwrap().bookkeeping {
            books.apply(&kv).unwrap();
        }
        let head = kv.map.borrow().get("task:job-1").cloned();
        rejected.bookkeeping.expect("counted").apply(&kv).unwrap();
        assert_eq!(
            kv.map.borrow().get("task:job-1").cloned(),
            head,
            "the head as the news left it"
        );
        let count = || kv.map.borrow().get("task:job-1:rejected").cloned();
        assert_eq!(count().as_deref(), Some(&b"1"[..]));
        let again = deliver_checked(&kv, &body("succeed", 12), &contradicts, true).unwrap();
        again.bookkeeping.expect("counted").apply(&kv).unwrap();
        assert_eq!(count().as_deref(), Some(&b"2"[..]));
    }

    /// The video stored for `job-1`, if any.
    fn stored_video(kv: &MemoryKv) -> Option<String> {
        let record = TaskStore::new(kv)
            .find_by_key(&TaskKey::external("job-1"))
            .unwrap()?;
        record.videos.first().and_then(|v| v.url.clone())
    }

    #[test]
    fn a_success_without_results_stores_kling_s_record_of_a_task_submitted_here() {
        for bound in [Some("86"), None] {
            let kv = MemoryKv::default();
            submitted(&kv, bound);
            let kling = lists(Some("86"));
            let received = deliver_checked(&kv, &bare_success(6), &kling, false).unwrap();
            assert_eq!(received.verdict, Verdict::Apply(Slot::Final), "{bound:?}");
            assert_eq!(kling.asked.get(), 1, "{bound:?}");
            assert_eq!(stored_video(&kv).as_deref(), Some(VIDEO_URL), "{bound:?}");
            assert!(
                !received.news.expect("news").videos.is_empty(),
                "announced whole"
            );
            // Its repeat asks nothing more.
            let repeat = deliver_checked(&kv, &bare_success(6), &kling, false).unwrap();
            assert_eq!(repeat.verdict, Verdict::Duplicate);
            assert_eq!(kling.asked.get(), 1);
        }
        // Under `verify_callbacks` too: claiming no results contradicts none of Kling's.
        let kv = MemoryKv::default();
        submitted(&kv, Some("86"));
        let kling = lists(Some("86"));
        let verified = deliver_checked(&kv, &bare_success(6), &kling, true).unwrap();
        assert_eq!(verified.verdict, Verdict::Apply(Slot::Final));
        assert_eq!(stored_video(&kv).as_deref(), Some(VIDEO_URL));
    }

    #[test]
    fn a_success_without_results_waits_for_a_kling_that_cannot_be_asked() {
        struct Unreachable;
        impl KlingLookup for Unreachable {
            fn find(&self, _: TaskKind, _: TaskRef<'_>) -> Result<Option<Found>, CallbackError> {
                Err(CallbackError::Verification(KlingError::Transport(
                    crate::outbound::TransportError::Timeout,
                )))
            }
        }
        let kv = MemoryKv::default();
        submitted(&kv, Some("86"));
        let before = kv.map.borrow().clone();
        let check = KlingCheck {
            lookup: &Unreachable,
            verify_finals: &off,
        };
        let unanswered = deliver_with(&kv, &bare_success(6), &check);
        assert!(matches!(
            unanswered,
            Err(CallbackError::Verification(KlingError::Transport(_)))
        ));
        assert_eq!(*kv.map.borrow(), before, "nothing stored: Kling retries");
    }

    #[test]
    fn a_success_without_results_is_stored_as_it_came_when_kling_has_none_to_give() {
        // Not submitted here: no Kling endpoint to ask.
        let kv = MemoryKv::default();
        let received = deliver_with(&kv, &bare_success(6), &no_kling()).unwrap();
        assert_eq!(received.verdict, Verdict::Apply(Slot::Final));
        assert_eq!(stored_video(&kv), None);
    }

    #[test]
    fn a_success_without_results_that_kling_does_not_show_yet_waits_for_a_retry() {
        let kv = MemoryKv::default();
        submitted(&kv, Some("86"));
        let before = kv.map.borrow().clone();
        let mut kling = lists(Some("86"));
        kling.new_status = true;
        let unready = deliver_checked(&kv, &bare_success(6), &kling, false);
        assert_eq!(unready.unwrap_err(), CallbackError::ResultsNotReady);
        assert_eq!(kling.asked.get(), 1);
        assert_eq!(*kv.map.borrow(), before, "nothing stored");
    }

    #[test]
    fn a_success_without_results_that_kling_shows_processing_stores_kling_s_record() {
        // Bound, and unbound (given up meanwhile: the binding tracks it again).
        for bound in [Some("86"), None] {
            let kv = MemoryKv::default();
            submitted(&kv, bound);
            let mut kling = lists(Some("86"));
            kling.still_processing = true;
            let received = deliver_checked(&kv, &bare_success(6), &kling, false).unwrap();
            assert_eq!(
                received.verdict,
                Verdict::Apply(Slot::Processing),
                "{bound:?}"
            );
            let record = TaskStore::new(&kv)
                .find_by_key(&TaskKey::external("job-1"))
                .unwrap()
                .unwrap();
            assert_eq!(record.status, crate::task::TaskStatus::Processing);
            assert_eq!(record.task_id.as_deref(), Some("86"));
            let pending = crate::store::index::Index::pending(&kv).entries().unwrap();
            assert_eq!(!pending.is_empty(), bound.is_none(), "{pending:?}");
        }
    }

    #[test]
    fn a_success_without_results_over_lost_that_kling_shows_processing_waits_for_a_retry() {
        let kv = MemoryKv::default();
        submitted(&kv, Some("86"));
        let lost = TaskEvent {
            status: crate::task::TaskStatus::Lost,
            ..crate::callback::parse::parse_callback(
                br#"{"task_id":"86","task_status":"processing"}"#,
            )
            .unwrap()
        };
        let store = TaskStore::new(&kv);
        let (_, books) = store
            .record_event(&TaskKey::external("job-1"), &lost, 5)
            .unwrap();
        books.apply(&kv).unwrap();
        let before = kv.map.borrow().clone();
        let mut kling = lists(Some("86"));
        kling.still_processing = true;
        let unready = deliver_checked(&kv, &bare_success(6), &kling, false);
        assert_eq!(unready.unwrap_err(), CallbackError::ResultsNotReady);
        assert_eq!(*kv.map.borrow(), before, "nothing stored: Kling retries");
    }

    #[test]
    fn a_final_kling_contradicts_for_a_task_not_bound_yet_binds_it_with_kling_s_record() {
        let kv = MemoryKv::default();
        submitted(&kv, None);
        let mut kling = lists(Some("86"));
        kling.still_processing = true;
        let received = deliver_checked(&kv, &body("succeed", 6), &kling, true).unwrap();
        assert_eq!(received.verdict, Verdict::Apply(Slot::Processing));
        let record = TaskStore::new(&kv)
            .find_by_key(&TaskKey::external("job-1"))
            .unwrap()
            .unwrap();
        assert_eq!(
            record.status,
            crate::task::TaskStatus::Processing,
            "Kling's word"
        );
        assert_eq!(record.task_id.as_deref(), Some("86"), "bound");
        // Bound now: a final Kling does not show yet waits for a retry, uncounted.
        let before = kv.map.borrow().clone();
        let unconfirmed = deliver_checked(&kv, &body("succeed", 7), &kling, true);
        assert_eq!(unconfirmed.unwrap_err(), CallbackError::FinalNotConfirmed);
        assert_eq!(*kv.map.borrow(), before, "nothing stored, nothing counted");
    }

    /// Kling's CDN URLs are hot-link protected and need not repeat from one answer to
    /// the next: a final Kling agrees with is stored as Kling reports it, whatever URLs
    /// the callback carried. A success Kling shows without its results is not confirmed
    /// yet; another final, or another task's, contradicts it.
    #[test]
    fn a_verified_final_is_judged_by_kling_s_task_and_status_and_stored_as_kling_has_it() {
        let with_url = |url: &str| {
            Body::Bytes(format!(
                r#"{{"task_id":"86","task_status":"succeed","updated_at":7,"task_info":{{"external_task_id":"job-1"}},"task_result":{{"videos":[{{"id":"867","url":"{url}"}}]}}}}"#
            ).into_bytes())
        };
        // Another signed URL of the same video, or a forger's: Kling's is what is stored.
        for url in [
            "https://cdn.example/86.mp4?token=another",
            "https://evil.example/fake.mp4",
        ] {
            let kv = MemoryKv::default();
            submitted(&kv, Some("86"));
            let verified = deliver_checked(&kv, &with_url(url), &lists(Some("86")), true).unwrap();
            assert_eq!(verified.verdict, Verdict::Apply(Slot::Final), "{url}");
            assert_eq!(stored_video(&kv).as_deref(), Some(VIDEO_URL), "{url}");
        }

        // Kling's success without its results yet, whether the task is bound or not (a
        // success stored without its results would stay so).
        for bound in [None, Some("86")] {
            let kv = MemoryKv::default();
            submitted(&kv, bound);
            let before = kv.map.borrow().clone();
            let mut no_results = lists(Some("86"));
            no_results.results_pending = true;
            let unconfirmed = deliver_checked(&kv, &body("succeed", 7), &no_results, true);
            assert_eq!(
                unconfirmed.unwrap_err(),
                CallbackError::FinalNotConfirmed,
                "{bound:?}"
            );
            assert_eq!(*kv.map.borrow(), before, "{bound:?}");
        }
        let kv = MemoryKv::default();
        submitted(&kv, Some("86"));

        // Kling's success contradicts a `failed`.
        let rejected = deliver_checked(&kv, &body("failed", 7), &lists(Some("86")), true).unwrap();
        assert_eq!(rejected.verdict, Verdict::Rejected);
    }

    #[test]
    fn a_success_without_results_over_a_stored_final_asks_kling_nothing() {
        // With `verify_callbacks` too: it is never stored, so there is nothing to verify
        // (and it is no forgery to count).
        for verify in [false, true] {
            let kv = MemoryKv::default();
            submitted(&kv, Some("86"));
            let kling = lists(Some("86"));
            deliver_checked(&kv, &body("succeed", 6), &kling, verify).unwrap();
            let asked = kling.asked.get();
            // Newer than the stored final: not a repeat by its envelope, and still no news.
            let later = deliver_checked(&kv, &bare_success(60), &kling, verify).unwrap();
            assert_eq!(later.verdict, Verdict::Duplicate, "verify {verify}");
            assert_eq!(kling.asked.get(), asked, "verify {verify}");
            assert_eq!(
                later.bookkeeping.map(|b| b.key().as_str().to_string()),
                None
            );
            assert_eq!(kv.get("task:job-1:rejected").unwrap(), None);
            assert_eq!(stored_video(&kv).as_deref(), Some(VIDEO_URL));
        }
    }

    #[test]
    fn a_url_whose_task_has_no_record_cannot_take_another_task_s_task_id() {
        let kv = MemoryKv::default();
        deliver_and_apply(&kv, &body("processing", 5));
        let before = kv.map.borrow().clone();
        // A valid URL of job-2, which has no record yet, posting job-1's Kling task.
        let sig = callback_url::sign(&Secret::new(SECRET), "job-2");
        let forged =
            Body::Bytes(br#"{"task_id":"86","task_status":"succeed","updated_at":9}"#.to_vec());
        let callback = Callback {
            external_task_id: Some("job-2"),
            sig: Some(&sig),
            content_type: None,
            webhook: WebhookHeaders::default(),
            body: &forged,
        };
        let refused = receive(&callback, &|| Ok(config(false)), &kv, &no_kling(), NOW_MS);
        assert_eq!(refused.unwrap_err(), CallbackError::TaskIdTaken);
        assert_eq!(*kv.map.borrow(), before, "nothing stored");
        // Nor one filed under its Kling id (nothing shows it is the same task).
        kv.set("taskid:88", b"#88").unwrap();
        let other =
            Body::Bytes(br#"{"task_id":"88","task_status":"processing","updated_at":9}"#.to_vec());
        let refused = receive(
            &Callback {
                body: &other,
                ..callback
            },
            &|| Ok(config(false)),
            &kv,
            &no_kling(),
            NOW_MS,
        );
        assert_eq!(refused.unwrap_err(), CallbackError::TaskIdTaken);
        // Its own task is welcome.
        let own =
            Body::Bytes(br#"{"task_id":"87","task_status":"processing","updated_at":9}"#.to_vec());
        let callback = Callback {
            body: &own,
            ..callback
        };
        let stored = receive(&callback, &|| Ok(config(false)), &kv, &no_kling(), NOW_MS);
        assert_eq!(stored.unwrap().verdict, Verdict::Apply(Slot::Processing));
    }

    #[test]
    fn a_callback_s_debug_form_shows_no_sig_or_signature() {
        let body = body("processing", 5);
        let callback = Callback {
            external_task_id: Some("job-1"),
            sig: Some("the-sig-itself"),
            content_type: None,
            webhook: WebhookHeaders {
                id: Some("msg-1"),
                timestamp: Some("1"),
                signature: Some("v1,the-signature-itself"),
            },
            body: &body,
        };
        let shown = format!("{callback:?}");
        assert!(
            shown.contains("job-1") && shown.contains("msg-1"),
            "{shown}"
        );
        assert!(!shown.contains("the-sig-itself"), "{shown}");
        assert!(!shown.contains("task_status"), "no body: {shown}");
        assert!(!shown.contains("the-signature-itself"), "{shown}");
    }

    #[test]
    fn a_later_success_without_results_never_writes_over_the_results() {
        let kv = MemoryKv::default();
        deliver_and_apply(&kv, &body("succeed", 6));
        let later = deliver_with(&kv, &bare_success(60), &no_kling()).unwrap();
        assert_eq!(later.verdict, Verdict::Duplicate);
        assert_eq!(stored_video(&kv).as_deref(), Some(VIDEO_URL));
    }

    #[test]
    fn verify_callbacks_is_read_only_for_a_final_that_would_be_stored() {
        let kv = MemoryKv::default();
        submitted(&kv, Some("86"));
        let kling = lists(Some("86"));
        let reads = std::cell::Cell::new(0);
        let read_off = || {
            reads.set(reads.get() + 1);
            Ok(false)
        };
        let check = KlingCheck {
            lookup: &kling,
            verify_finals: &read_off,
        };
        let deliver = |body: &Body| deliver_with(&kv, body, &check).unwrap();
        deliver(&body("processing", 5));
        assert_eq!(reads.get(), 0, "not for a status that is not final");
        assert_eq!(
            deliver(&body("succeed", 6)).verdict,
            Verdict::Apply(Slot::Final)
        );
        assert_eq!(reads.get(), 1);
        assert_eq!(deliver(&body("succeed", 6)).verdict, Verdict::Duplicate);
        assert_eq!(reads.get(), 1, "not for a repeat");
    }

    const SECRET: &str = "test-callback-secret";
    const WHSEC: &str = "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXR0ZXN0c2VjcmV0MTI=";
    const NOW_MS: u64 = 1_781_080_794_000;

    fn config(webhook: bool) -> CallbackConfig {
        CallbackConfig {
            callback_secret: crate::config::KeyRing::single(Secret::new(SECRET)),
            webhook_secret: webhook.then(|| WebhookSecret::parse(WHSEC).unwrap()),
        }
    }

    /// A delivery of task 86 for `job-1`; a `succeed` carries its video ([`VIDEO_URL`]).
    fn body(status: &str, updated_at: u64) -> Body {
        let result = if status == "succeed" {
            format!(r#","task_result":{{"videos":[{{"id":"867","url":"{VIDEO_URL}"}}]}}"#)
        } else {
            String::new()
        };
        Body::Bytes(
            format!(r#"{{"task_id":"86","task_status":"{status}","updated_at":{updated_at},"task_info":{{"external_task_id":"job-1"}}{result}}}"#)
                .into_bytes(),
        )
    }

    /// A `succeed` of task 86 for `job-1` without results, as kling-api.md allows.
    fn bare_success(updated_at: u64) -> Body {
        Body::Bytes(
            format!(r#"{{"task_id":"86","task_status":"succeed","updated_at":{updated_at},"task_result":{{}}}}"#)
                .into_bytes(),
        )
    }

    const VIDEO_URL: &str = "https://cdn.example/86.mp4";

    /// [`deliver`] news, and what it left for after the acknowledgement.
    fn deliver_and_apply(kv: &MemoryKv, body: &Body) {
        let received = deliver(kv, body).unwrap();
        received.bookkeeping.expect("news").apply(kv).unwrap();
    }

    fn deliver(kv: &MemoryKv, body: &Body) -> Result<Received, CallbackError> {
        let sig = callback_url::sign(&Secret::new(SECRET), "job-1");
        let callback = Callback {
            external_task_id: Some("job-1"),
            sig: Some(&sig),
            content_type: Some("application/json"),
            webhook: WebhookHeaders::default(),
            body,
        };
        receive(&callback, &|| Ok(config(false)), kv, &no_kling(), NOW_MS)
    }

    #[test]
    fn news_costs_two_round_trips_before_the_ack_and_a_duplicate_one() {
        let kv = MemoryKv::default();
        let received = deliver(&kv, &body("processing", 5)).unwrap();
        assert_eq!(received.verdict, Verdict::Apply(Slot::Processing));
        // A task's first delivery: the head read, the `taskid:` read (is Kling's id
        // another task's?) and one batch (slot, binding, listing entry, head).
        assert_eq!((kv.round_trips.get(), kv.sets.get()), (3, 1));
        // Nothing is left for after the acknowledgement, even for a task first seen.
        received.bookkeeping.as_ref().unwrap().apply(&kv).unwrap();
        assert_eq!(kv.round_trips.get(), 3);
        let listed = crate::store::index::Index::listed(&kv).entries().unwrap();
        assert_eq!(listed.len(), 1);

        // Later news: the same one batch, which writes the listing entry again under the
        // same name (so one that went missing comes back).
        let listing = crate::store::index::Index::listed(&kv);
        listing.remove(&listed[0]).unwrap();
        kv.round_trips.set(0);
        kv.sets.set(0);
        let received = deliver(&kv, &body("processing", 6)).unwrap();
        assert_eq!(received.verdict, Verdict::Apply(Slot::Processing));
        assert_eq!((kv.round_trips.get(), kv.sets.get()), (2, 1));
        received.bookkeeping.as_ref().unwrap().apply(&kv).unwrap();
        assert_eq!(kv.round_trips.get(), 2);
        assert_eq!(listing.entries().unwrap(), listed);

        kv.round_trips.set(0);
        let again = deliver(&kv, &body("processing", 6)).unwrap();
        assert_eq!(again.verdict, Verdict::Duplicate);
        assert_eq!(kv.round_trips.get(), 1);
    }

    #[test]
    fn news_of_a_task_submitted_here_is_one_batch_and_still_announced() {
        let kv = MemoryKv::default();
        submitted(&kv, Some("86"));
        kv.round_trips.set(0);
        let received = deliver(&kv, &body("succeed", 5)).unwrap();
        assert_eq!(received.verdict, Verdict::Apply(Slot::Final));
        // The head read and one batch; nothing is left to write after the answer...
        assert_eq!((kv.round_trips.get(), kv.sets.get()), (2, 2));
        let bookkeeping = received.bookkeeping.expect("news keeps its bookkeeping");
        bookkeeping.apply(&kv).unwrap();
        assert_eq!(kv.round_trips.get(), 2);
        // ...but the news is there to announce, with the head it left.
        assert!(received.news.is_some());
        assert_eq!(bookkeeping.head().deliveries, 1);
    }

    #[test]
    fn a_status_kling_added_later_is_acknowledged_as_ignored_and_touches_nothing() {
        let kv = MemoryKv::default();
        let received = deliver(&kv, &body("queued_for_review", 5)).unwrap();
        assert_eq!(received.verdict, Verdict::Ignored);
        assert_eq!(received.verdict.as_str(), "ignored");
        assert!(received.bookkeeping.is_none() && received.news.is_none());
        assert_eq!(kv.round_trips.get(), 0, "the store is not touched");
        // Still authenticated first: a bad sig is refused whatever the status says.
        let unsigned = Callback {
            external_task_id: Some("job-1"),
            sig: Some("forged"),
            content_type: None,
            webhook: WebhookHeaders::default(),
            body: &body("queued_for_review", 5),
        };
        assert!(receive(&unsigned, &|| Ok(config(false)), &kv, &no_kling(), NOW_MS).is_err());
    }

    #[test]
    fn rejected_deliveries_touch_nothing() {
        let kv = MemoryKv::default();
        let good = body("succeed", 5);
        let sig = callback_url::sign(&Secret::new(SECRET), "job-1");
        let other_ext = Body::Bytes(
            br#"{"task_id":"86","task_status":"succeed","task_info":{"external_task_id":"job-2"}}"#
                .to_vec(),
        );
        // An id outside our format in the body of a signed URL's delivery: not the URL's.
        let foreign_ext = Body::Bytes(
            br#"{"task_id":"86","task_status":"succeed","task_info":{"external_task_id":"job 1"}}"#
                .to_vec(),
        );
        let object_ext = Body::Bytes(
            br#"{"task_id":"86","task_status":"succeed","task_info":{"external_task_id":{"a":1}}}"#
                .to_vec(),
        );
        // A plain delivery on job-1's validly signed URL.
        let signed = |body| Callback {
            external_task_id: Some("job-1"),
            sig: Some(&sig),
            content_type: None,
            webhook: WebhookHeaders::default(),
            body,
        };
        let cases: Vec<(Callback<'_>, CallbackError)> = vec![
            (
                Callback {
                    external_task_id: Some("job-1"),
                    sig: None,
                    content_type: None,
                    webhook: WebhookHeaders::default(),
                    body: &good,
                },
                CallbackError::Signature(CallbackSigError::Missing),
            ),
            (
                Callback {
                    external_task_id: Some("job 1"),
                    sig: Some(&sig),
                    content_type: None,
                    webhook: WebhookHeaders::default(),
                    body: &good,
                },
                CallbackError::InvalidExternalTaskId,
            ),
            (
                Callback {
                    content_type: Some("text/plain"),
                    ..signed(&good)
                },
                CallbackError::UnsupportedContentType,
            ),
            (signed(&Body::TooLarge), CallbackError::TooLarge),
            (signed(&other_ext), CallbackError::ExternalTaskIdMismatch),
            (signed(&foreign_ext), CallbackError::ExternalTaskIdMismatch),
            (
                signed(&object_ext),
                CallbackError::Payload(PayloadError::InvalidExternalTaskId),
            ),
            (
                Callback {
                    external_task_id: None,
                    sig: None,
                    content_type: None,
                    webhook: WebhookHeaders::default(),
                    body: &good,
                },
                CallbackError::WebhookSigningNotConfigured,
            ),
        ];
        for (callback, expected) in cases {
            assert_eq!(
                receive(&callback, &|| Ok(config(false)), &kv, &no_kling(), NOW_MS).unwrap_err(),
                expected
            );
        }
        assert_eq!(kv.round_trips.get(), 0);
    }

    #[test]
    fn a_task_bound_to_one_kling_id_refuses_another() {
        let kv = MemoryKv::default();
        deliver_and_apply(&kv, &body("submitted", 1));
        let keys_before = kv.keys();
        let other = Body::Bytes(br#"{"task_id":"99","task_status":"succeed"}"#.to_vec());
        assert_eq!(
            deliver(&kv, &other).unwrap_err(),
            CallbackError::Ledger(LedgerError::BoundToAnotherTask)
        );
        assert_eq!(kv.keys(), keys_before);
    }

    /// A malformed id in the URL is a 400 before the secrets are read or the store is
    /// asked: a deployment without `callback_secret` still says what is wrong.
    #[test]
    fn a_malformed_url_id_is_refused_before_the_secrets_or_the_store() {
        let kv = MemoryKv::default();
        let body = body("succeed", 5);
        let callback = Callback {
            external_task_id: Some("job:1"),
            sig: Some("c2lnbmF0dXJlLW9mLWEtc2hhcGUtd2UtdGFrZS1mb3ItYS1zaWc"),
            content_type: None,
            webhook: WebhookHeaders::default(),
            body: &body,
        };
        let unset = || Err(ConfigError::Missing(crate::config::CALLBACK_SECRET));
        assert_eq!(
            receive(&callback, &unset, &kv, &no_kling(), NOW_MS).unwrap_err(),
            CallbackError::InvalidExternalTaskId
        );
        assert_eq!(kv.round_trips.get(), 0, "nothing read");
    }

    #[test]
    fn the_unnamed_route_needs_a_valid_standard_webhooks_signature() {
        let kv = MemoryKv::default();
        let payload = br#"{"id":"1234567890","status":"succeeded","message":"","create_time":1781080778802,"update_time":1781080794151}"#;
        let body = Body::Bytes(payload.to_vec());
        let mut callback = Callback {
            external_task_id: None,
            sig: None,
            content_type: Some("application/json; charset=utf-8"),
            webhook: WebhookHeaders {
                id: Some("9876543210"),
                timestamp: Some("1781080794"),
                signature: Some("v1,UsKlJP00XoQyOn410NM9xv34sP+Gl0jnOO9Lcpr7NJ4="),
            },
            body: &body,
        };
        let received = receive(&callback, &|| Ok(config(true)), &kv, &no_kling(), NOW_MS).unwrap();
        assert_eq!(received.verdict, Verdict::Apply(Slot::Final));
        assert!(kv.keys().contains(&"task:#1234567890:final".to_string()));

        callback.webhook.signature = Some("v1,UsKlJP00XoQyOn410NM9xv34sP+Gl0jnOO9Lcpr7NJ5=");
        assert_eq!(
            receive(&callback, &|| Ok(config(true)), &kv, &no_kling(), NOW_MS).unwrap_err(),
            CallbackError::Webhook(WebhookError::NoMatchingSignature)
        );
        callback.webhook = WebhookHeaders::default();
        assert_eq!(
            receive(&callback, &|| Ok(config(true)), &kv, &no_kling(), NOW_MS).unwrap_err(),
            CallbackError::Webhook(WebhookError::MissingHeader("webhook-id"))
        );
    }

    /// `payload` on `/callbacks/kling`, validly signed with Standard Webhooks, with `sig`
    /// in its query (which that route does not check).
    fn deliver_webhook_signed(
        kv: &MemoryKv,
        payload: &[u8],
        sig: Option<&str>,
    ) -> Result<Received, CallbackError> {
        let body = Body::Bytes(payload.to_vec());
        let secret = WebhookSecret::parse(WHSEC).unwrap();
        let timestamp = (NOW_MS / 1000).to_string();
        let signature = secret.sign("msg-1", (NOW_MS / 1000) as i64, payload);
        let callback = Callback {
            external_task_id: None,
            sig,
            content_type: Some("application/json"),
            webhook: WebhookHeaders {
                id: Some("msg-1"),
                timestamp: Some(&timestamp),
                signature: Some(&signature),
            },
            body: &body,
        };
        receive(&callback, &|| Ok(config(true)), kv, &no_kling(), NOW_MS)
    }

    #[test]
    fn a_body_kling_signed_is_believed_about_its_task_id() {
        let kv = MemoryKv::default();
        deliver_and_apply(&kv, &body("processing", 5));
        // Kling itself says task 86 is job-2's: the index follows it.
        let payload = br#"{"task_id":"86","task_status":"succeed","updated_at":9,"task_info":{"external_task_id":"job-2"}}"#;
        let received = deliver_webhook_signed(&kv, payload, None).unwrap();
        assert_eq!(received.verdict, Verdict::Apply(Slot::Final));
        assert_eq!(
            kv.map.borrow().get("taskid:86").map(Vec::as_slice),
            Some(&b"job-2"[..])
        );
    }

    /// Kling's older deliveries lack `task_info`: one without it, after one with it, is
    /// the same task's (found by its `task_id`), not a second task under Kling's id.
    #[test]
    fn a_signed_body_without_an_external_id_goes_to_the_task_its_task_id_is_bound_to() {
        let kv = MemoryKv::default();
        let named = br#"{"task_id":"86","task_status":"succeed","updated_at":9,"task_info":{"external_task_id":"job-9"}}"#;
        let stored = deliver_webhook_signed(&kv, named, None).unwrap();
        assert_eq!(stored.verdict, Verdict::Apply(Slot::Final));
        let unnamed = br#"{"task_id":"86","task_status":"processing","updated_at":5}"#;
        let late = deliver_webhook_signed(&kv, unnamed, None).unwrap();
        assert_eq!(late.verdict, Verdict::Stale, "job-9 has finished");
        assert!(
            kv.keys().iter().all(|k| !k.starts_with("task:#")),
            "{:?}",
            kv.keys()
        );
        assert_eq!(
            kv.map.borrow().get("taskid:86").map(Vec::as_slice),
            Some(&b"job-9"[..])
        );
        let again = deliver_webhook_signed(&kv, named, None).unwrap();
        assert_eq!(again.verdict, Verdict::Duplicate);
    }

    #[test]
    fn a_task_submitted_elsewhere_with_an_id_outside_our_format_is_filed_under_kling_s_id() {
        let kv = MemoryKv::default();
        let payload = br#"{"task_id":"1234567890","task_status":"processing","updated_at":5,"task_info":{"external_task_id":"order#7/a:b c"}}"#;
        let received = deliver_webhook_signed(&kv, payload, None).unwrap();
        assert_eq!(received.verdict, Verdict::Apply(Slot::Processing));
        let record = TaskStore::new(&kv).find("1234567890").unwrap().unwrap();
        assert_eq!(record.external_task_id.as_deref(), Some("order#7/a:b c"));
        assert!(
            kv.keys()
                .iter()
                .filter(|k| k.starts_with("task:"))
                .all(|k| k.starts_with("task:#1234567890")),
            "{:?}",
            kv.keys()
        );
    }

    /// A plain delivery for `job-1` on a URL signed with `signed_with`, the secrets being
    /// `ring` (space-separated, as the variable takes them); counts the secrets' reads.
    fn deliver_on(
        kv: &MemoryKv,
        body: &Body,
        signed_with: &str,
        ring: &'static str,
        webhook: WebhookHeaders<'_>,
        reads: &std::cell::Cell<usize>,
    ) -> Result<Received, CallbackError> {
        use crate::config::{CALLBACK_SECRET, WEBHOOK_SIGNING_SECRET, tests::MapVariables};
        let sig = callback_url::sign(&Secret::new(signed_with), "job-1");
        let callback = Callback {
            external_task_id: Some("job-1"),
            sig: Some(&sig),
            content_type: None,
            webhook,
            body,
        };
        let vars = MapVariables(std::collections::HashMap::from([
            (CALLBACK_SECRET, ring),
            (WEBHOOK_SIGNING_SECRET, WHSEC),
        ]));
        let config = || {
            reads.set(reads.get() + 1);
            CallbackConfig::load(&vars, callback.can_use_webhook_key())
        };
        receive(&callback, &config, kv, &no_kling(), NOW_MS)
    }

    #[test]
    fn a_repeat_on_a_url_the_head_knows_is_answered_without_the_secret() {
        let kv = MemoryKv::default();
        let reads = std::cell::Cell::new(0);
        let deliver = |body: &Body| {
            let received = deliver_on(&kv, body, SECRET, SECRET, Default::default(), &reads);
            let received = received.unwrap();
            if let Some(books) = &received.bookkeeping {
                books.apply(&kv).unwrap();
            }
            received.verdict
        };
        assert_eq!(
            deliver(&body("processing", 5)),
            Verdict::Apply(Slot::Processing)
        );
        assert_eq!(reads.get(), 1, "news is proven with the secret");
        let stored = kv.map.borrow().clone();
        kv.round_trips.set(0);
        assert_eq!(deliver(&body("processing", 5)), Verdict::Duplicate);
        assert_eq!(deliver(&body("submitted", 9)), Verdict::Stale);
        assert_eq!(reads.get(), 1, "a repeat the head knows reads no secret");
        assert_eq!(kv.round_trips.get(), 2, "one read each");
        assert_eq!(*kv.map.borrow(), stored);
        // News on the same URL is proven with the secret again, and costs no more round
        // trips than before: the early read of the head is the one the full path uses.
        assert_eq!(deliver(&body("succeed", 10)), Verdict::Apply(Slot::Final));
        assert_eq!(reads.get(), 2);
        assert_eq!(kv.round_trips.get(), 4, "the head read and one batch");
    }

    #[test]
    fn a_sig_the_head_does_not_know_needs_the_secret() {
        let kv = MemoryKv::default();
        let reads = std::cell::Cell::new(0);
        let no_headers = WebhookHeaders::default;
        deliver_on(
            &kv,
            &body("processing", 5),
            SECRET,
            SECRET,
            no_headers(),
            &reads,
        )
        .unwrap()
        .bookkeeping
        .unwrap()
        .apply(&kv)
        .unwrap();
        let stored = kv.map.borrow().clone();
        // Another secret's sig, as well formed as ours: a repeat to the head, but its sig
        // is not the one the head knows.
        let forged = deliver_on(
            &kv,
            &body("processing", 5),
            "another-secret",
            SECRET,
            no_headers(),
            &reads,
        );
        assert_eq!(
            forged.unwrap_err(),
            CallbackError::Signature(CallbackSigError::Mismatch)
        );
        assert_eq!(reads.get(), 2);
        // A head that knows no sig (a submit's, or one an older build wrote): the same
        // repeat needs the secret.
        let mut head = TaskStore::new(&kv)
            .head(&TaskKey::external("job-1"))
            .unwrap()
            .unwrap();
        assert!(head.callback_sig_sha256.take().is_some());
        kv.set("task:job-1", &crate::store::to_json(&head)).unwrap();
        let repeat = deliver_on(
            &kv,
            &body("processing", 5),
            SECRET,
            SECRET,
            no_headers(),
            &reads,
        );
        assert_eq!(repeat.unwrap().verdict, Verdict::Duplicate);
        assert_eq!(reads.get(), 3);
        // Standard Webhooks headers are checked whenever a sender includes them, so such
        // a repeat reads the secrets, and a bad signature is refused.
        kv.map.replace(stored.clone());
        let headers = WebhookHeaders {
            id: Some("msg-1"),
            timestamp: Some("1781080794"),
            signature: Some("v1,AAAA"),
        };
        let signed = deliver_on(&kv, &body("processing", 5), SECRET, SECRET, headers, &reads);
        assert_eq!(
            signed.unwrap_err(),
            CallbackError::Webhook(WebhookError::NoMatchingSignature)
        );
        assert_eq!(reads.get(), 4);
        assert_eq!(*kv.map.borrow(), stored);
    }

    #[test]
    fn a_known_sig_answers_nothing_but_a_true_repeat() {
        let kv = MemoryKv::default();
        deliver_and_apply(&kv, &body("processing", 5));
        let stored = kv.map.borrow().clone();
        let sig = callback_url::sign(&Secret::new(SECRET), "job-1");
        let other_ext = Body::Bytes(
            br#"{"task_id":"86","task_status":"processing","updated_at":5,"task_info":{"external_task_id":"job-2"}}"#
                .to_vec(),
        );
        let other_task =
            Body::Bytes(br#"{"task_id":"99","task_status":"processing","updated_at":5}"#.to_vec());
        let repeat = body("processing", 5);
        let cases = [
            (&other_ext, None, CallbackError::ExternalTaskIdMismatch),
            (
                &other_task,
                None,
                CallbackError::Ledger(LedgerError::BoundToAnotherTask),
            ),
            (
                &repeat,
                Some("text/plain"),
                CallbackError::UnsupportedContentType,
            ),
        ];
        for (body, content_type, expected) in cases {
            let callback = Callback {
                external_task_id: Some("job-1"),
                sig: Some(&sig),
                content_type,
                webhook: WebhookHeaders::default(),
                body,
            };
            assert_eq!(
                receive(&callback, &|| Ok(config(false)), &kv, &no_kling(), NOW_MS).unwrap_err(),
                expected
            );
        }
        assert_eq!(*kv.map.borrow(), stored);
    }

    #[test]
    fn only_a_sig_proven_on_its_own_route_is_kept() {
        // News on `/callbacks/kling`, proven by Standard Webhooks, carrying a `sig` of
        // our shape that nobody checked: the head must not learn it.
        let kv = MemoryKv::default();
        let planted = callback_url::sign(&Secret::new("not-the-secret"), "job-1");
        let payload = br#"{"task_id":"86","task_status":"processing","updated_at":5,"task_info":{"external_task_id":"job-1"}}"#;
        let received = deliver_webhook_signed(&kv, payload, Some(&planted)).unwrap();
        assert_eq!(received.verdict, Verdict::Apply(Slot::Processing));
        let head = TaskStore::new(&kv)
            .head(&TaskKey::external("job-1"))
            .unwrap()
            .unwrap();
        assert_eq!(head.callback_sig_sha256, None);
        // So the planted sig's repeat on the `sig` route is checked with the secret.
        let reads = std::cell::Cell::new(0);
        let repeat = deliver_on(
            &kv,
            &body_of(payload),
            "not-the-secret",
            SECRET,
            Default::default(),
            &reads,
        );
        assert_eq!(
            repeat.unwrap_err(),
            CallbackError::Signature(CallbackSigError::Mismatch)
        );
    }

    fn body_of(payload: &[u8]) -> Body {
        Body::Bytes(payload.to_vec())
    }

    #[test]
    fn a_head_read_that_fails_before_the_secret_is_reported_after_it() {
        let kv = MemoryKv::default();
        let reads = std::cell::Cell::new(0);
        let deliver = |signed_with: &str| {
            kv.fail_next.set(true);
            deliver_on(
                &kv,
                &body("processing", 5),
                signed_with,
                SECRET,
                Default::default(),
                &reads,
            )
        };
        // Authenticated: the store's failure, not acknowledged, and not read twice.
        kv.round_trips.set(0);
        assert!(matches!(deliver(SECRET), Err(CallbackError::Store(_))));
        assert_eq!(kv.round_trips.get(), 1);
        // Not authenticated: 401 whatever the store does.
        assert_eq!(
            deliver("another-secret").unwrap_err(),
            CallbackError::Signature(CallbackSigError::Mismatch)
        );
        assert!(kv.keys().is_empty());
    }

    #[test]
    fn once_a_secret_is_dropped_its_urls_store_nothing_more() {
        let kv = MemoryKv::default();
        let reads = std::cell::Cell::new(0);
        let rotated = "a-brand-new-callback-secret test-callback-secret";
        let on_old_url = |body: &Body, ring: &'static str| {
            deliver_on(&kv, body, SECRET, ring, Default::default(), &reads)
        };
        let news = on_old_url(&body("processing", 5), rotated).unwrap();
        news.bookkeeping.unwrap().apply(&kv).unwrap();
        let stored = kv.map.borrow().clone();
        // The old secret dropped: a repeat on its URL changes nothing and is answered
        // from the head, as before the drop; news on it is refused.
        let new_only = "a-brand-new-callback-secret";
        let repeat = on_old_url(&body("processing", 5), new_only).unwrap();
        assert_eq!(repeat.verdict, Verdict::Duplicate);
        assert_eq!(
            on_old_url(&body("succeed", 9), new_only).unwrap_err(),
            CallbackError::Signature(CallbackSigError::Mismatch)
        );
        assert_eq!(*kv.map.borrow(), stored);
    }

    #[test]
    fn json_content_types() {
        for ok in [
            None,
            Some("application/json"),
            Some("Application/JSON; charset=UTF-8"),
            Some("application/vnd.kling+json"),
        ] {
            assert!(is_json(ok), "{ok:?}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "application/jsonp",
            "",
        ] {
            assert!(!is_json(Some(bad)), "{bad}");
        }
    }
}
