//! The inference request path, from admission to the finished record, for both protocols: the
//! guards (in-flight limit, timeout, panic), which version answers, the request id, the canary and
//! shadow decision, the run, drift, the shadow submission and the per-version metrics. The
//! [`Gateway`] every handler shares lives here too.
//!
//! Invariant: REST (`http`) and gRPC (`grpc`) each implement [`Codec`] (read a request into tensors,
//! write the answer or the error back) and call [`serve`]; everything else happens once, here, the
//! same way for both. Decoding checks the tensors against the answering version's signature with
//! [`signature`], so both protocols refuse the same inputs with the same messages.

mod gateway;
pub mod signature;

pub use self::gateway::{Gateway, ServerOptions};

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use futures_util::FutureExt;

use crate::error::{Error, ErrorKind};
use crate::model::Tensor;
use crate::registry::{Deployment, ModelVersion, ServedModel};
use crate::repository::Manifest;
use crate::shadow::ShadowRequest;

/// The protocol a request came in by: a label of `gauntlet_inference_requests_by_protocol_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Rest,
    Grpc,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Self::Rest => "rest",
            Self::Grpc => "grpc",
        }
    }
}

/// A request id a client may give (in a header, or as a label's key): 1 to 256 bytes. A longer or
/// empty header is ignored (the gateway makes an id); a label with one is refused.
pub const MAX_REQUEST_ID: usize = 256;

/// Whether a client's request id is one the gateway takes (see [`MAX_REQUEST_ID`]).
pub fn acceptable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID
}

/// One protocol's side of an inference request: what it reads from the request and how it writes
/// the answer back. REST (`http::v2`) and gRPC (`grpc::service`) each implement it; [`serve`] does
/// the rest, the same for both.
pub trait Codec {
    /// Which outputs to answer, and how, as the request asked.
    type Selection;
    /// What the protocol's handler returns: the answer or the error, in the protocol's shape.
    type Answer;
    const PROTOCOL: Protocol;

    /// Reads what the request still has to receive (REST: its body), inside the guards so that a
    /// slow body counts against the timeout. Its errors are kept for `decode` to tell, so an
    /// unknown model is told first.
    fn receive(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
    /// The model, and the version for a direct call.
    fn target(&self) -> (&str, Option<&str>);
    /// The request-id header or metadata entry, as sent (the rule is applied by [`serve`]).
    fn id_header(&self) -> Option<&str>;
    /// A header or metadata entry by name (the deployment's canary key).
    fn header(&self, name: &str) -> Option<&str>;
    /// Reads the tensors against the answering version's signature (with [`signature`]), taking
    /// the request's body: it is not needed afterwards.
    fn decode(&mut self, manifest: &Manifest) -> Result<Decoded<Self::Selection>, Error>;
    /// The answer of `version`, under the request's `id`.
    fn encode(
        &self,
        version: &ModelVersion,
        id: String,
        outputs: &[Tensor],
        selection: &Self::Selection,
    ) -> Self::Answer;
    /// An error as the protocol answers it, with the request's id once it is known.
    fn refuse(error: Error, id: Option<String>) -> Self::Answer;
}

/// A decoded request: its tensors, the id it carries in its body (if any) and its output selection.
pub struct Decoded<S> {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    pub selection: S,
}

/// One inference request, whole: under the guards ([`guarded`]) receive → begin → decode → id →
/// run → encode → finish. Every protocol's inference handler is this call.
pub async fn serve<C: Codec>(gateway: &Gateway, codec: C) -> C::Answer {
    // Boxed once here: each guard below wraps it, and moving all of its state into each wrapper
    // cost more than the allocation (callgrind: 0.8k fewer instructions a gRPC call, 0.5k REST).
    let work = Box::pin(answer(gateway, codec));
    guarded(gateway, work).await.unwrap_or_else(|error| C::refuse(error, None))
}

async fn answer<C: Codec>(gateway: &Gateway, mut codec: C) -> C::Answer {
    codec.receive().await;
    let header_id = |codec: &C| codec.id_header().filter(|id| acceptable_id(id)).map(str::to_owned);
    let (name, version) = codec.target();
    let mut call = match Inference::begin(gateway, name, version, C::PROTOCOL) {
        Ok(call) => call,
        Err(error) => return C::refuse(error, header_id(&codec)),
    };
    let decoded = match codec.decode(call.manifest()) {
        Ok(decoded) => decoded,
        Err(error) => {
            call.finish(Err(error.kind()));
            return C::refuse(error, header_id(&codec));
        }
    };
    let id = request_id(decoded.id.or_else(|| header_id(&codec)));
    match call.run(&id, |name| codec.header(name), decoded.inputs).await {
        Ok(ran) => {
            let answer = codec.encode(call.answering(), id, &ran.outputs, &decoded.selection);
            call.finish(Ok(()));
            answer
        }
        Err(error) => {
            call.finish(Err(error.kind()));
            C::refuse(error, Some(id))
        }
    }
}

/// Runs one inference request's work under the shared guards: over `max_concurrent_requests` in
/// flight it is refused at once (never queued); past `request_timeout_ms` it ends and gives its slot
/// back; a panic anywhere in it ends it as `Internal`. Each refusal is counted.
pub async fn guarded<T>(gateway: &Gateway, work: impl Future<Output = T>) -> Result<T, Error> {
    let Ok(_permit) = gateway.in_flight().try_acquire() else {
        return Err(overloaded());
    };
    let guarded = AssertUnwindSafe(tokio::time::timeout(gateway.config().request_timeout(), work)).catch_unwind();
    match guarded.await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(_elapsed)) => Err(timed_out()),
        Err(_panic) => {
            tracing::error!("a request handler panicked");
            Err(Error::new(ErrorKind::Internal, "handler panicked"))
        }
    }
}

/// An inference request over the in-flight limit, counted.
pub fn overloaded() -> Error {
    crate::metrics::rejected(ErrorKind::Overloaded.label());
    Error::new(ErrorKind::Overloaded, "too many requests in flight; retry shortly")
}

/// An inference request past `request_timeout_ms`, counted.
pub fn timed_out() -> Error {
    crate::metrics::rejected(ErrorKind::Timeout.label());
    Error::new(ErrorKind::Timeout, "the request timed out")
}

/// One request to one model, from the moment its model is known to its metrics. Hold it while
/// decoding (its [`manifest`](Self::manifest) is what to decode against), then [`run`](Self::run)
/// the decoded tensors, encode the answer, and [`finish`](Self::finish).
pub struct Inference<'g> {
    gateway: &'g Gateway,
    /// One snapshot for the whole request: the champion, challengers and plan it sees stay together.
    deployment: Arc<Deployment>,
    answering: Arc<ModelVersion>,
    /// A call to one version: neither shadowed nor redirected to a canary.
    direct: bool,
    start: Instant,
}

/// What a run answered.
pub struct Ran {
    pub outputs: Arc<Vec<Tensor>>,
}

impl<'g> Inference<'g> {
    /// The request's model (and version, for a direct call). Not served: `NotFound`, counted.
    pub fn begin(gateway: &'g Gateway, name: &str, version: Option<&str>, protocol: Protocol) -> Result<Self, Error> {
        let start = Instant::now();
        by_protocol(protocol).increment(1);
        let target = served(gateway, name).and_then(|model| {
            let deployment = model.deployment();
            let direct = version.map(|v| version_of(&deployment, name, v).cloned()).transpose()?;
            Ok((deployment, direct))
        });
        let (deployment, direct) = target.inspect_err(|error| crate::metrics::rejected(error.kind().label()))?;
        let (answering, direct) = match direct {
            Some(version) => (version, true),
            None => (Arc::clone(deployment.champion()), false),
        };
        Ok(Self { gateway, deployment, answering, direct, start })
    }

    /// The signature to decode the request against: the answering version's. Challengers and a
    /// canary share the champion's (checked at load), so one decode serves all.
    pub fn manifest(&self) -> &Manifest {
        self.answering.manifest()
    }

    /// The version that answers (after [`run`](Self::run): the canary, when the plan chose it).
    pub fn answering(&self) -> &ModelVersion {
        &self.answering
    }

    /// Runs the answering version on the decoded inputs, then hands the same tensors to the drift
    /// monitor and the shadow (never waiting on either). `header` reads a header or metadata entry
    /// by name: the deployment's canary key, and the slice of a shadowed request.
    pub async fn run<'k>(
        &mut self,
        id: &str,
        header: impl Fn(&str) -> Option<&'k str>,
        inputs: Vec<Tensor>,
    ) -> Result<Ran, Error> {
        let deployment = &self.deployment;
        // With neither challengers nor a canary there is nothing to decide.
        let plays = !deployment.challengers().is_empty() || deployment.canary().is_some();
        let decision = (!self.direct && plays).then(|| {
            let key = deployment.canary_key_header().and_then(&header);
            deployment.plan().decide(id, key)
        });
        if decision.is_some_and(|d| d.canary)
            && let Some(canary) = deployment.canary()
        {
            self.answering = Arc::clone(canary);
        }
        let answering = &self.answering;
        let inputs = Arc::new(inputs);
        let model_start = Instant::now();
        let outputs = self.gateway.executor().infer(answering, &inputs).await?;
        let latency = model_start.elapsed();
        // Shared, not copied, by the encoder, the drift monitor and the shadow.
        let outputs = Arc::new(outputs);
        // Drift is measured against the champion's profile: what a canary or a direct call answered
        // is not the champion's traffic.
        if !self.direct && Arc::ptr_eq(answering, deployment.champion()) {
            self.gateway.drift().observe(id, answering, &inputs, &outputs);
        }
        // Nothing to pair with when no challenger is deployed; nothing to assemble when the shadow
        // queue is full (then it is counted as shed).
        if decision.is_some_and(|d| d.shadow)
            && !deployment.challengers().is_empty()
            && !self.gateway.shadow().shed_if_full(deployment, answering)
        {
            let slice = self
                .gateway
                .slicer(answering.name())
                .map(|slicer| slicer.key(slicer.header().and_then(&header), &inputs));
            self.gateway.shadow().submit(ShadowRequest {
                slice,
                deployment: Arc::clone(deployment),
                request_id: id.to_owned(),
                timestamp: SystemTime::now(),
                inputs,
                answered: Arc::clone(answering),
                outputs: Arc::clone(&outputs),
                latency,
            });
        }
        Ok(Ran { outputs })
    }

    /// Counts the request on the version that answered it: its outcome and its time in the gateway.
    pub fn finish(self, outcome: Result<(), ErrorKind>) {
        let elapsed = self.start.elapsed();
        match outcome {
            Ok(()) => self.answering.metrics().request_ok(elapsed),
            Err(kind) => self.answering.metrics().request_failed(kind.label(), elapsed),
        }
    }
}

/// The request's id: the one it carries, or else a new UUID.
fn request_id(given: Option<String>) -> String {
    given.unwrap_or_else(|| uuid::Uuid::new_v4().hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).to_owned())
}

/// A model served by name, or `NotFound` listing the served ones.
pub fn served<'g>(gateway: &'g Gateway, name: &str) -> Result<&'g ServedModel, Error> {
    gateway.registry().model(name).ok_or_else(|| {
        let names: Vec<&str> = gateway.registry().models().map(ServedModel::name).collect();
        Error::not_found(format!("model '{name}' is not served; served models: {names:?}"))
    })
}

/// One served version of a deployment, or `NotFound` saying why it is not served.
pub fn version_of<'d>(deployment: &'d Deployment, name: &str, version: &str) -> Result<&'d Arc<ModelVersion>, Error> {
    deployment.version(version).ok_or_else(|| match deployment.refused().iter().find(|(v, _)| v.as_str() == version) {
        Some((_, reason)) => Error::not_found(format!("version '{version}' of model '{name}' is not served: {reason}")),
        None => {
            let versions: Vec<&str> = deployment.versions().map(|v| v.version().as_str()).collect();
            Error::not_found(format!("model '{name}' has no version '{version}'; served versions: {versions:?}"))
        }
    })
}

fn by_protocol(protocol: Protocol) -> &'static metrics::Counter {
    static COUNTERS: OnceLock<[metrics::Counter; 2]> = OnceLock::new();
    let counters = COUNTERS
        .get_or_init(|| [Protocol::Rest, Protocol::Grpc].map(|p| crate::metrics::requests_by_protocol(p.label())));
    &counters[protocol as usize]
}
