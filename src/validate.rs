//! Decoding and validating a dial request body.
//!
//! This module owns the request contract: which JSON fields a producer sends, which are
//! required, and the rule each must meet. [`decode`] is the only way to obtain a
//! [`DialRequest`], so every stage after this one can rely on the request being valid and
//! only has to deal with the outside world (the Call Center, the broker).
//!
//! Anything that fails becomes a [`Rejection`] naming the first broken rule in contract field
//! order. `request_id` is checked first so that a rejection for any later field can still
//! carry the idempotency key, and a `rejected` outcome event can be correlated with its
//! request. Rejection details are written for producers' logs: they name the field and the
//! rule, never contain a phone number, and quote at most a short prefix of other input.
//!
//! The body is parsed once into borrowed [`RawValue`]s and each field is then interpreted on
//! its own, so a wrong type yields that field's reason instead of a generic serde message.

use std::borrow::Cow;
use std::fmt;

use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use crate::phone::PhoneNumber;

/// Largest accepted body, checked before parsing so a huge message costs no parse time.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Largest accepted `attributes` object, measured as the JSON text sent, which is also
/// exactly what is echoed back in outcome events.
pub const MAX_ATTRIBUTES_BYTES: usize = 8 * 1024;

/// Deepest nesting accepted inside `attributes`. serde_json skips over values without a
/// depth limit, but the outcome events echo `attributes` back and their consumers' parsers
/// do have one (serde_json's default is 128 levels for the whole event).
pub const MAX_ATTRIBUTES_DEPTH: usize = 64;

/// How far ahead of now `not_before` and `expires_at` may lie. A date near year 9999 is a
/// producer's bug, not a plan, and date arithmetic on it later in the pipeline (an opening
/// searched for days after it) would overflow; 400 days covers a year of scheduling plus any
/// holiday block, and matches how far the business-hours search looks. The pipeline may rely on
/// every accepted date being within this horizon of the moment it was decoded.
pub const SCHEDULE_HORIZON: SignedDuration = SignedDuration::from_hours(400 * 24);

const MAX_REQUEST_ID_CHARS: usize = 128;
const MAX_INSTANCE_ID_CHARS: usize = 128;
const MAX_ROUT_POINT_CHARS: usize = 256;
const MAX_PROVIDER_CHARS: usize = 64;

/// How much of an offending value a rejection detail may quote.
const MAX_QUOTED_CHARS: usize = 40;

/// The idempotency key of a dial request: 1–128 printable ASCII characters (`0x21`–`0x7E`),
/// so it is safe in AMQP headers and log lines as is.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// Validates `raw` as a request id.
    ///
    /// # Errors
    ///
    /// [`RejectReason::InvalidRequestId`] if `raw` is empty, longer than 128 bytes or holds
    /// anything but printable ASCII without spaces.
    pub fn parse(raw: &str) -> Result<RequestId, RejectReason> {
        match check_token(raw, MAX_REQUEST_ID_CHARS) {
            Ok(()) => Ok(RequestId(raw.to_owned())),
            Err(_) => Err(RejectReason::InvalidRequestId),
        }
    }

    /// The id as received.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl serde::Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Where `DialEx` sends the callee once they answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerMode {
    /// To a contact flow (IVR); `rout_point` is the contact flow id.
    Ivr,
    /// To one agent; `rout_point` is `ram_id@domain`.
    Agent,
    /// To a skill group queue; `rout_point` is the skill group.
    SkillGroup,
}

impl AnswerMode {
    /// The `AnswerMode` parameter value of the `DialEx` API.
    pub fn dialex_value(self) -> &'static str {
        match self {
            AnswerMode::Ivr => "0",
            AnswerMode::Agent => "1",
            AnswerMode::SkillGroup => "2",
        }
    }

    /// The contract's name for the mode, as producers spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerMode::Ivr => "ivr",
            AnswerMode::Agent => "agent",
            AnswerMode::SkillGroup => "skill_group",
        }
    }
}

/// A dial request that passed every rule of the contract.
///
/// Only [`decode`] constructs one. `Debug` masks the phone numbers and shows only the size of
/// `attributes`, whose content is opaque and may be personal.
#[derive(Clone)]
pub struct DialRequest {
    request_id: RequestId,
    instance_id: String,
    caller: PhoneNumber,
    callee: PhoneNumber,
    answer_mode: AnswerMode,
    rout_point: String,
    provider: Option<String>,
    not_before: Option<Timestamp>,
    expires_at: Option<Timestamp>,
    attributes: Option<Box<RawValue>>,
}

impl DialRequest {
    /// The idempotency key (the body's `request_id`, or the AMQP `message_id` if absent).
    pub fn request_id(&self) -> &RequestId {
        &self.request_id
    }

    /// The Call Center instance to dial from (`InstanceId`).
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The number shown to the callee (`Caller`).
    pub fn caller(&self) -> &PhoneNumber {
        &self.caller
    }

    /// The number to call (`Callee`).
    pub fn callee(&self) -> &PhoneNumber {
        &self.callee
    }

    /// Where the answered call goes (`AnswerMode`).
    pub fn answer_mode(&self) -> AnswerMode {
        self.answer_mode
    }

    /// Contact flow id, `ram_id@domain` or skill group, depending on [`Self::answer_mode`].
    pub fn rout_point(&self) -> &str {
        &self.rout_point
    }

    /// The carrier to use (`Provider`), if the producer chose one.
    pub fn provider(&self) -> Option<&str> {
        self.provider.as_deref()
    }

    /// Do not dial before this instant.
    pub fn not_before(&self) -> Option<Timestamp> {
        self.not_before
    }

    /// Do not dial at or after this instant; always after [`Self::not_before`] when both
    /// are set.
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.expires_at
    }

    /// The producer's opaque JSON object, exactly as sent, to echo in outcome events.
    pub fn attributes(&self) -> Option<&RawValue> {
        self.attributes.as_deref()
    }
}

impl fmt::Debug for DialRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DialRequest")
            .field("request_id", &self.request_id)
            .field("instance_id", &self.instance_id)
            .field("caller", &self.caller)
            .field("callee", &self.callee)
            .field("answer_mode", &self.answer_mode)
            .field("rout_point", &self.rout_point)
            .field("provider", &self.provider)
            .field("not_before", &self.not_before)
            .field("expires_at", &self.expires_at)
            .field("attributes", &ByteCount::of(&self.attributes))
            .finish()
    }
}

/// Debug-prints as `<N bytes>`, standing in for content that should not be logged.
struct ByteCount(usize);

impl ByteCount {
    /// The size of `attributes`, if any, for a `Debug` that must not show them.
    fn of(attributes: &Option<Box<RawValue>>) -> Option<ByteCount> {
        attributes.as_ref().map(|a| ByteCount(a.get().len()))
    }
}

impl fmt::Debug for ByteCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

/// Every reason a request is rejected; `code()` is the contract's string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The body is larger than [`MAX_BODY_BYTES`].
    BodyTooLarge,
    /// The body is not UTF-8 JSON (syntax error, trailing data, duplicate field, too deep).
    InvalidJson,
    /// The body is valid JSON but not an object.
    NotAnObject,
    /// No `request_id` in the body and no AMQP `message_id` to fall back on.
    MissingRequestId,
    /// `request_id` (or the `message_id` fallback) breaks the id rules.
    InvalidRequestId,
    /// `instance_id` is absent or null.
    MissingInstanceId,
    /// `instance_id` is not a non-empty printable ASCII string of at most 128 characters.
    InvalidInstanceId,
    /// `caller` is absent or null.
    MissingCaller,
    /// `caller` is not a string holding an acceptable phone number.
    InvalidCaller,
    /// `callee` is absent or null.
    MissingCallee,
    /// `callee` is not a string holding an acceptable phone number.
    InvalidCallee,
    /// `answer_mode` is absent or null.
    MissingAnswerMode,
    /// `answer_mode` is not one of the three names or 0–2.
    InvalidAnswerMode,
    /// `rout_point` is absent or null.
    MissingRoutPoint,
    /// `rout_point` breaks the text rules or, for agents, is not `ram_id@domain`.
    InvalidRoutPoint,
    /// `provider` is not a string of at most 64 characters without control characters.
    InvalidProvider,
    /// `not_before` is not an RFC 3339 timestamp with an offset, or lies more than
    /// [`SCHEDULE_HORIZON`] ahead.
    InvalidNotBefore,
    /// `expires_at` is not an RFC 3339 timestamp with an offset, or lies more than
    /// [`SCHEDULE_HORIZON`] ahead.
    InvalidExpiresAt,
    /// `expires_at` is not after `not_before`.
    InvalidTimeWindow,
    /// `attributes` is not a JSON object, or is nested deeper than [`MAX_ATTRIBUTES_DEPTH`].
    InvalidAttributes,
    /// `attributes` is larger than [`MAX_ATTRIBUTES_BYTES`].
    AttributesTooLarge,
    /// A valid request whose `request_id` the dial store already holds for a different request
    /// (another instance, caller, callee, answer mode, rout point or provider). Decided at the
    /// store's claim, not by [`decode`].
    RequestIdReused,
}

impl RejectReason {
    /// Every variant, in contract field order.
    pub const ALL: &'static [RejectReason] = &[
        RejectReason::BodyTooLarge,
        RejectReason::InvalidJson,
        RejectReason::NotAnObject,
        RejectReason::MissingRequestId,
        RejectReason::InvalidRequestId,
        RejectReason::MissingInstanceId,
        RejectReason::InvalidInstanceId,
        RejectReason::MissingCaller,
        RejectReason::InvalidCaller,
        RejectReason::MissingCallee,
        RejectReason::InvalidCallee,
        RejectReason::MissingAnswerMode,
        RejectReason::InvalidAnswerMode,
        RejectReason::MissingRoutPoint,
        RejectReason::InvalidRoutPoint,
        RejectReason::InvalidProvider,
        RejectReason::InvalidNotBefore,
        RejectReason::InvalidExpiresAt,
        RejectReason::InvalidTimeWindow,
        RejectReason::InvalidAttributes,
        RejectReason::AttributesTooLarge,
        RejectReason::RequestIdReused,
    ];

    /// The contract's snake_case code, as published in `rejected` events.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::BodyTooLarge => "body_too_large",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::MissingRequestId => "missing_request_id",
            RejectReason::InvalidRequestId => "invalid_request_id",
            RejectReason::MissingInstanceId => "missing_instance_id",
            RejectReason::InvalidInstanceId => "invalid_instance_id",
            RejectReason::MissingCaller => "missing_caller",
            RejectReason::InvalidCaller => "invalid_caller",
            RejectReason::MissingCallee => "missing_callee",
            RejectReason::InvalidCallee => "invalid_callee",
            RejectReason::MissingAnswerMode => "missing_answer_mode",
            RejectReason::InvalidAnswerMode => "invalid_answer_mode",
            RejectReason::MissingRoutPoint => "missing_rout_point",
            RejectReason::InvalidRoutPoint => "invalid_rout_point",
            RejectReason::InvalidProvider => "invalid_provider",
            RejectReason::InvalidNotBefore => "invalid_not_before",
            RejectReason::InvalidExpiresAt => "invalid_expires_at",
            RejectReason::InvalidTimeWindow => "invalid_time_window",
            RejectReason::InvalidAttributes => "invalid_attributes",
            RejectReason::AttributesTooLarge => "attributes_too_large",
            RejectReason::RequestIdReused => "request_id_reused",
        }
    }
}

/// Why a body could not become a [`DialRequest`].
///
/// `request_id` is filled when it could be recovered (from the body's `request_id` field if
/// that alone is valid, or else the AMQP `message_id`), so a `rejected` event can still be
/// published; `attributes` likewise, so that event can echo them as every other outcome does.
/// `Debug` shows only the size of `attributes`, as for [`DialRequest`].
#[derive(Clone, thiserror::Error)]
#[error("{}: {detail}", reason.code())]
pub struct Rejection {
    /// The idempotency key, if one could be recovered despite the failure.
    pub request_id: Option<RequestId>,
    /// Which rule failed.
    pub reason: RejectReason,
    /// A short sentence for humans naming the field and the rule; never a phone number.
    pub detail: String,
    /// The request's `attributes`, exactly as sent, when the body is JSON and `attributes`
    /// itself passed its rules (another field broke one); `None` when they are absent or are
    /// themselves the problem.
    pub attributes: Option<Box<RawValue>>,
}

impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejection")
            .field("request_id", &self.request_id)
            .field("reason", &self.reason)
            .field("detail", &self.detail)
            .field("attributes", &ByteCount::of(&self.attributes))
            .finish()
    }
}

impl Rejection {
    /// `request`'s `request_id` is already taken by a different request (the store said so
    /// at the claim). Like every rejection, the request is never dialed; the first request
    /// keeps its record. The event echoes this request's attributes.
    pub fn request_id_reused(request: &DialRequest) -> Rejection {
        Rejection {
            request_id: Some(request.request_id().clone()),
            attributes: request.attributes.clone(),
            reason: RejectReason::RequestIdReused,
            detail: "request_id: already used for a different request (instance_id, caller, \
                     callee, answer_mode, rout_point or provider differ); a new request needs \
                     a new request_id"
                .to_owned(),
        }
    }
}

/// A failed rule before the request id to attach is known.
struct Failure {
    reason: RejectReason,
    detail: String,
}

impl Failure {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Failure {
        Failure {
            reason,
            detail: detail.into(),
        }
    }
}

/// The body as parsed: each contract field still raw JSON text borrowed from the body.
/// `null` deserializes to `None`, which is how the contract's "null means absent" falls out.
/// Unknown fields are skipped (serde's default); duplicate known fields are a parse error.
#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow, default)]
    request_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    instance_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    caller: Option<&'a RawValue>,
    #[serde(borrow, default)]
    callee: Option<&'a RawValue>,
    #[serde(borrow, default)]
    answer_mode: Option<&'a RawValue>,
    #[serde(borrow, default)]
    rout_point: Option<&'a RawValue>,
    #[serde(borrow, default)]
    provider: Option<&'a RawValue>,
    #[serde(borrow, default)]
    not_before: Option<&'a RawValue>,
    #[serde(borrow, default)]
    expires_at: Option<&'a RawValue>,
    #[serde(borrow, default)]
    attributes: Option<&'a RawValue>,
}

/// Decodes and validates a dial request body.
///
/// `message_id` is the AMQP `message_id` property: it becomes the request id when the body
/// has none, and is what a rejection carries when the body's own id cannot be used.
///
/// # Errors
///
/// A [`Rejection`] for the first rule the body breaks, in contract field order.
pub fn decode(body: &[u8], message_id: Option<&str>) -> Result<DialRequest, Rejection> {
    decode_at(body, message_id, Timestamp::now())
}

/// [`decode`] as of `now`, the instant [`SCHEDULE_HORIZON`] counts from.
///
/// # Errors
///
/// A [`Rejection`] for the first rule the body breaks, in contract field order.
pub fn decode_at(
    body: &[u8],
    message_id: Option<&str>,
    now: Timestamp,
) -> Result<DialRequest, Rejection> {
    let fallback_id = || message_id.and_then(|id| RequestId::parse(id).ok());

    let raw = match parse_body(body) {
        Ok(raw) => raw,
        Err(failure) => return Err(reject(fallback_id(), failure, None)),
    };
    // Checked ahead of the other fields so that a rejection for any of them can still echo
    // the attributes; reported in contract order, i.e. only once every other field passed.
    let attributes = attributes_field(raw.attributes);
    let request_id = match request_id_field(raw.request_id, message_id) {
        Ok(id) => id,
        Err(failure) => return Err(reject(fallback_id(), failure, attributes.ok().flatten())),
    };
    let fields = match interpret(&raw, now) {
        Ok(fields) => fields,
        Err(failure) => {
            return Err(reject(Some(request_id), failure, attributes.ok().flatten()));
        }
    };
    let attributes = match attributes {
        Ok(attributes) => attributes,
        Err(failure) => return Err(reject(Some(request_id), failure, None)),
    };
    Ok(DialRequest {
        request_id,
        instance_id: fields.instance_id,
        caller: fields.caller,
        callee: fields.callee,
        answer_mode: fields.answer_mode,
        rout_point: fields.rout_point,
        provider: fields.provider,
        not_before: fields.not_before,
        expires_at: fields.expires_at,
        attributes,
    })
}

/// The request id of a body, or of its AMQP `message_id`, reading nothing else: for naming a
/// request whose full decoding cannot be trusted.
pub fn recover_request_id(body: &[u8], message_id: Option<&str>) -> Option<RequestId> {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow, default)]
        request_id: Option<&'a RawValue>,
    }
    let raw = serde_json::from_slice::<IdOnly<'_>>(body)
        .ok()
        .and_then(|body| body.request_id);
    request_id_field(raw, message_id)
        .ok()
        .or_else(|| message_id.and_then(|id| RequestId::parse(id).ok()))
}

fn reject(
    request_id: Option<RequestId>,
    failure: Failure,
    attributes: Option<Box<RawValue>>,
) -> Rejection {
    Rejection {
        request_id,
        reason: failure.reason,
        detail: failure.detail,
        attributes,
    }
}

/// Everything in a [`DialRequest`] except the request id and the attributes, which are
/// resolved apart because a rejection carries them.
struct Fields {
    instance_id: String,
    caller: PhoneNumber,
    callee: PhoneNumber,
    answer_mode: AnswerMode,
    rout_point: String,
    provider: Option<String>,
    not_before: Option<Timestamp>,
    expires_at: Option<Timestamp>,
}

fn parse_body(body: &[u8]) -> Result<RawRequest<'_>, Failure> {
    use RejectReason::{BodyTooLarge, InvalidJson, NotAnObject};

    if body.len() > MAX_BODY_BYTES {
        return Err(Failure::new(
            BodyTooLarge,
            format!(
                "body: {} bytes exceeds the {MAX_BODY_BYTES}-byte limit",
                body.len()
            ),
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        Failure::new(
            InvalidJson,
            format!("body: not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
    })?;
    let first = text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .bytes()
        .next();
    if first != Some(b'{') {
        // A derived struct would also accept a JSON array positionally, so anything that is
        // not an object is turned away here; parsing it is only to tell the two reasons apart.
        return Err(match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => Failure::new(
                NotAnObject,
                format!(
                    "body: expected a JSON object, got {}",
                    kind_of_first_byte(first)
                ),
            ),
            Err(e) => Failure::new(InvalidJson, format!("body: not valid JSON ({e})")),
        });
    }
    // serde_json's errors describe position and syntax, never the input text. Every field is
    // a RawValue or ignored, both of which serde_json skips without recursing, so deeply
    // nested input cannot overflow the stack here.
    serde_json::from_str(text)
        .map_err(|e| Failure::new(InvalidJson, format!("body: not valid JSON ({e})")))
}

fn request_id_field(
    raw: Option<&RawValue>,
    message_id: Option<&str>,
) -> Result<RequestId, Failure> {
    use RejectReason::{InvalidRequestId, MissingRequestId};

    match raw {
        Some(value) => {
            let id = string_value(value).map_err(|problem| {
                Failure::new(InvalidRequestId, format!("request_id: {problem}"))
            })?;
            check_token(&id, MAX_REQUEST_ID_CHARS).map_err(|problem| {
                Failure::new(InvalidRequestId, format!("request_id: {problem}"))
            })?;
            Ok(RequestId(id.into_owned()))
        }
        // An empty AMQP short string is how some clients spell "no message_id".
        None => match message_id.filter(|id| !id.is_empty()) {
            None => Err(Failure::new(
                MissingRequestId,
                "request_id: missing, and the message has no AMQP message_id to fall back on",
            )),
            Some(id) => match check_token(id, MAX_REQUEST_ID_CHARS) {
                Ok(()) => Ok(RequestId(id.to_owned())),
                Err(problem) => Err(Failure::new(
                    InvalidRequestId,
                    format!("request_id: missing, and the AMQP message_id fallback {problem}"),
                )),
            },
        },
    }
}

/// Interprets the fields between `request_id` and `attributes`, in contract order, stopping at
/// the first failure. `now` is where [`SCHEDULE_HORIZON`] counts from.
fn interpret(raw: &RawRequest<'_>, now: Timestamp) -> Result<Fields, Failure> {
    use RejectReason as R;

    let instance_id = {
        let value = required(raw.instance_id, R::MissingInstanceId, "instance_id")?;
        let text =
            string_value(value).map_err(|p| invalid(R::InvalidInstanceId, "instance_id", p))?;
        check_token(&text, MAX_INSTANCE_ID_CHARS)
            .map_err(|p| invalid(R::InvalidInstanceId, "instance_id", p))?;
        text.into_owned()
    };
    let caller = phone_field(raw.caller, R::MissingCaller, R::InvalidCaller, "caller")?;
    let callee = phone_field(raw.callee, R::MissingCallee, R::InvalidCallee, "callee")?;
    let answer_mode = answer_mode_field(raw.answer_mode)?;
    let rout_point = rout_point_field(raw.rout_point, answer_mode)?;
    let provider = match raw.provider {
        None => None,
        Some(value) => {
            let text =
                string_value(value).map_err(|p| invalid(R::InvalidProvider, "provider", p))?;
            check_text(&text, MAX_PROVIDER_CHARS)
                .map_err(|p| invalid(R::InvalidProvider, "provider", p))?;
            // An empty provider means "let the Call Center choose", the same as leaving it out.
            (!text.is_empty()).then(|| text.into_owned())
        }
    };
    let not_before = timestamp_field(raw.not_before, now, R::InvalidNotBefore, "not_before")?;
    let expires_at = timestamp_field(raw.expires_at, now, R::InvalidExpiresAt, "expires_at")?;
    if let (Some(start), Some(end)) = (not_before, expires_at)
        && end <= start
    {
        return Err(Failure::new(
            R::InvalidTimeWindow,
            "expires_at: must be after not_before",
        ));
    }

    Ok(Fields {
        instance_id,
        caller,
        callee,
        answer_mode,
        rout_point,
        provider,
        not_before,
        expires_at,
    })
}

fn required<'a>(
    value: Option<&'a RawValue>,
    missing: RejectReason,
    field: &str,
) -> Result<&'a RawValue, Failure> {
    value.ok_or_else(|| Failure::new(missing, format!("{field}: missing")))
}

fn invalid(reason: RejectReason, field: &str, problem: impl fmt::Display) -> Failure {
    Failure::new(reason, format!("{field}: {problem}"))
}

fn phone_field(
    value: Option<&RawValue>,
    missing: RejectReason,
    reason: RejectReason,
    field: &str,
) -> Result<PhoneNumber, Failure> {
    let value = required(value, missing, field)?;
    let text = string_value(value).map_err(|p| invalid(reason, field, p))?;
    // PhoneError's messages never repeat the number, so they are safe to pass on.
    PhoneNumber::parse(&text).map_err(|e| {
        invalid(
            reason,
            field,
            format_args!("not a plausible Chinese phone number: {e}"),
        )
    })
}

fn answer_mode_field(value: Option<&RawValue>) -> Result<AnswerMode, Failure> {
    const EXPECTED: &str = r#"expected "ivr", "agent", "skill_group" or 0-2"#;
    let value = required(value, RejectReason::MissingAnswerMode, "answer_mode")?;
    let got = match value.get() {
        "0" => return Ok(AnswerMode::Ivr),
        "1" => return Ok(AnswerMode::Agent),
        "2" => return Ok(AnswerMode::SkillGroup),
        text if text.starts_with('"') => match string_value(value).as_deref() {
            Ok("ivr") => return Ok(AnswerMode::Ivr),
            Ok("agent") => return Ok(AnswerMode::Agent),
            Ok("skill_group") => return Ok(AnswerMode::SkillGroup),
            Ok(other) => quote(other),
            Err(_) => "a string with an invalid escape sequence".to_owned(),
        },
        text if is_number(text) => format!("the number {}", quote_number(text)),
        _ => kind_of(value).to_owned(),
    };
    Err(invalid(
        RejectReason::InvalidAnswerMode,
        "answer_mode",
        format_args!("{EXPECTED}, got {got}"),
    ))
}

fn rout_point_field(value: Option<&RawValue>, mode: AnswerMode) -> Result<String, Failure> {
    use RejectReason::{InvalidRoutPoint, MissingRoutPoint};

    let value = required(value, MissingRoutPoint, "rout_point")?;
    let text = string_value(value).map_err(|p| invalid(InvalidRoutPoint, "rout_point", p))?;
    check_text(&text, MAX_ROUT_POINT_CHARS)
        .map_err(|p| invalid(InvalidRoutPoint, "rout_point", p))?;
    if text.trim().is_empty() {
        return Err(invalid(InvalidRoutPoint, "rout_point", "must not be empty"));
    }
    if mode == AnswerMode::Agent {
        // `ram_id@domain` is matched case-sensitively by the Call Center, so it is kept as
        // given; only its shape is checked.
        let mut parts = text.split('@');
        let well_formed = matches!(
            (parts.next(), parts.next(), parts.next()),
            (Some(user), Some(domain), None) if !user.is_empty() && !domain.is_empty()
        );
        if !well_formed {
            return Err(invalid(
                InvalidRoutPoint,
                "rout_point",
                "answer_mode agent needs an agent id of the form ram_id@domain",
            ));
        }
    }
    Ok(text.into_owned())
}

fn timestamp_field(
    value: Option<&RawValue>,
    now: Timestamp,
    reason: RejectReason,
    field: &str,
) -> Result<Option<Timestamp>, Failure> {
    let Some(value) = value else {
        return Ok(None);
    };
    let text = string_value(value).map_err(|p| invalid(reason, field, p))?;
    let too_far = || {
        invalid(
            reason,
            field,
            format_args!("more than {} days ahead", SCHEDULE_HORIZON.as_hours() / 24),
        )
    };
    let at = match parse_rfc3339(&text) {
        Ok(at) => at,
        Err(BadTimestamp::BeyondRange) => return Err(too_far()),
        Err(BadTimestamp::Malformed) => {
            return Err(invalid(
                reason,
                field,
                "expected an RFC 3339 timestamp with an offset, e.g. 2024-05-01T09:00:00+08:00",
            ));
        }
    };
    // A difference of two timestamps always fits a SignedDuration, so unlike `now + horizon`
    // this cannot overflow whatever the date.
    if now.duration_until(at) > SCHEDULE_HORIZON {
        return Err(too_far());
    }
    Ok(Some(at))
}

fn attributes_field(value: Option<&RawValue>) -> Result<Option<Box<RawValue>>, Failure> {
    let Some(value) = value else {
        return Ok(None);
    };
    // Raw values start at their first significant character, so this is the value's type.
    if !value.get().starts_with('{') {
        return Err(invalid(
            RejectReason::InvalidAttributes,
            "attributes",
            format_args!("expected a JSON object, got {}", kind_of(value)),
        ));
    }
    let size = value.get().len();
    if size > MAX_ATTRIBUTES_BYTES {
        return Err(invalid(
            RejectReason::AttributesTooLarge,
            "attributes",
            format_args!("{size} bytes exceeds the {MAX_ATTRIBUTES_BYTES}-byte limit"),
        ));
    }
    if nesting_depth(value.get()) > MAX_ATTRIBUTES_DEPTH {
        return Err(invalid(
            RejectReason::InvalidAttributes,
            "attributes",
            format_args!("nested deeper than {MAX_ATTRIBUTES_DEPTH} levels"),
        ));
    }
    // The raw text is echoed into every outcome event, so it must be JSON that strict parsers
    // accept: no lone UTF-16 surrogate in a string, no number outside f64's range. Skipped as a
    // raw value, neither is checked; parsed as values, both are refused.
    if serde_json::from_str::<serde_json::Value>(value.get()).is_err() {
        return Err(invalid(
            RejectReason::InvalidAttributes,
            "attributes",
            "not valid JSON throughout (a lone surrogate escape, or a number out of range)",
        ));
    }
    Ok(Some(value.to_owned()))
}

/// How deeply objects and arrays nest in a JSON text the parser already accepted.
fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in json.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The string a raw JSON value holds, borrowed from the body unless it contains escapes.
/// The error is a problem description for a rejection detail.
fn string_value(value: &RawValue) -> Result<Cow<'_, str>, String> {
    let text = value.get();
    let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
        return Err(format!("expected a string, got {}", kind_of(value)));
    };
    if !inner.contains('\\') {
        return Ok(Cow::Borrowed(inner));
    }
    // The first pass only skipped over the string, so escapes (e.g. a lone surrogate) are
    // first fully checked here.
    serde_json::from_str::<String>(text)
        .map(Cow::Owned)
        .map_err(|_| "contains an invalid escape sequence".to_owned())
}

/// Ids that travel in AMQP headers and logs: non-empty, printable ASCII without spaces.
fn check_token(text: &str, max_chars: usize) -> Result<(), String> {
    if text.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if !text.bytes().all(|b| matches!(b, 0x21..=0x7E)) {
        return Err("must be printable ASCII without spaces".to_owned());
    }
    // All ASCII now, so bytes are characters.
    if text.len() > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    Ok(())
}

/// Free text forwarded to the Call Center: no control characters, bounded length.
fn check_text(text: &str, max_chars: usize) -> Result<(), String> {
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    if text.chars().count() > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    Ok(())
}

/// Why a text is not an instant [`parse_rfc3339`] accepts.
enum BadTimestamp {
    /// Not RFC 3339, or not a real date and time of day.
    Malformed,
    /// A real RFC 3339 date-time in year 9999 past the last instant jiff represents (late on
    /// 30 December 9999). Producers use such dates to mean "never", so they hear that it is
    /// too far ahead rather than that it is not a timestamp.
    BeyondRange,
}

/// Parses a strict RFC 3339 date-time (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`).
///
/// jiff's own parser accepts the wider Temporal/RFC 9557 grammar (minute precision, basic
/// format, bracketed time zone annotations), which the contract does not promise, so the
/// shape is checked here and jiff only does the calendar arithmetic.
fn parse_rfc3339(text: &str) -> Result<Timestamp, BadTimestamp> {
    use BadTimestamp::{BeyondRange, Malformed};

    let b = text.as_bytes();
    let digits = |from: usize, to: usize| {
        b.get(from..to)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let at = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));
    let shape = digits(0, 4)
        && at(4, b"-")
        && digits(5, 7)
        && at(7, b"-")
        && digits(8, 10)
        && at(10, b"Tt ")
        && digits(11, 13)
        && at(13, b":")
        && digits(14, 16)
        && at(16, b":")
        && digits(17, 19);
    if !shape {
        return Err(Malformed);
    }
    let mut rest = b.get(19..).ok_or(Malformed)?;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return Err(Malformed);
        }
        rest = fraction.get(n..).ok_or(Malformed)?;
    }
    // RFC 3339 offsets: hours 00-23, minutes 00-59 (jiff alone would take up to ±25:59).
    let offset_ok = match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            let hours = (h1.wrapping_sub(b'0'), h2.wrapping_sub(b'0'));
            let minutes = (m1.wrapping_sub(b'0'), m2.wrapping_sub(b'0'));
            hours.0 <= 2
                && hours.1 <= 9
                && hours.0 * 10 + hours.1 <= 23
                && minutes.0 <= 5
                && minutes.1 <= 9
        }
        _ => false,
    };
    if !offset_ok {
        return Err(Malformed);
    }
    text.parse().map_err(|_| {
        // The shape is right, so jiff refused either the calendar (30 February, hour 24) or
        // its range, which ends late on 30 December 9999: a real date-time in year 9999 can
        // only be the latter.
        let two_digits = |from: usize| {
            text.get(from..from + 2)
                .and_then(|d| d.parse::<i8>().ok())
                .unwrap_or(-1)
        };
        let (month, day) = (two_digits(5), two_digits(8));
        let (hour, minute, second) = (two_digits(11), two_digits(14), two_digits(17));
        let real_in_9999 = text.starts_with("9999")
            && jiff::civil::DateTime::new(9999, month, day, hour, minute, second, 0).is_ok();
        if real_in_9999 { BeyondRange } else { Malformed }
    })
}

/// A JSON number as the first pass accepted it: digits, sign, point or exponent only.
fn is_number(text: &str) -> bool {
    text.bytes()
        .next()
        .is_some_and(|b| b == b'-' || b.is_ascii_digit())
}

/// Names the JSON type of a raw value for "expected X, got Y" details.
fn kind_of(value: &RawValue) -> &'static str {
    kind_of_first_byte(value.get().bytes().next())
}

fn kind_of_first_byte(first: Option<u8>) -> &'static str {
    match first {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// True when a value holds enough digits to possibly be a phone number, which details must
/// never contain, even if it came in through a field that is not meant to hold one. Any
/// script's digits count (full-width `１５７…` is a number to whoever reads it).
fn may_be_phone_number(text: &str) -> bool {
    text.chars().filter(|c| c.is_numeric()).count() >= 5
}

/// Quotes at most [`MAX_QUOTED_CHARS`] of a producer's string, escaped for a log line.
fn quote(text: &str) -> String {
    if may_be_phone_number(text) {
        return "a string withheld because it contains digits".to_owned();
    }
    let mut chars = text.char_indices();
    match chars.nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

fn quote_number(text: &str) -> String {
    if may_be_phone_number(text) {
        return "withheld".to_owned();
    }
    // Numbers are ASCII and have no more than 4 digits here, so this is short already.
    text.chars().take(MAX_QUOTED_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value, json};

    const CALLER: &str = "4001234567";
    const CALLEE: &str = "15732036617";

    /// A complete, valid request; tests change one thing at a time.
    fn valid() -> Map<String, Value> {
        let value = json!({
            "request_id": "req-0001",
            "instance_id": "ccc-test-01",
            "caller": "400-123-4567",
            "callee": "+86 157-3203-6617",
            "answer_mode": "agent",
            "rout_point": "Agent.One@Example-Domain",
            "provider": "cmcc",
            "not_before": "2026-05-01T09:00:00+08:00",
            "expires_at": "2026-05-01T02:00:00Z",
            "attributes": {"campaign": "spring", "ids": [1, 2, 3]},
        });
        match value {
            Value::Object(map) => map,
            _ => unreachable!("literal is an object"),
        }
    }

    fn with(change: impl FnOnce(&mut Map<String, Value>)) -> Vec<u8> {
        let mut map = valid();
        change(&mut map);
        serde_json::to_vec(&map).expect("serializable")
    }

    fn set(field: &str, value: Value) -> Vec<u8> {
        with(|m| {
            m.insert(field.to_owned(), value);
        })
    }

    fn without(field: &str) -> Vec<u8> {
        with(|m| {
            m.remove(field);
        })
    }

    fn rejection(body: &[u8], message_id: Option<&str>) -> Rejection {
        match decode(body, message_id) {
            Ok(request) => panic!("expected a rejection, got {request:?}"),
            Err(rejection) => rejection,
        }
    }

    fn accepted(body: &[u8], message_id: Option<&str>) -> DialRequest {
        decode(body, message_id).unwrap_or_else(|r| panic!("expected acceptance, got {r}"))
    }

    /// The rules every detail must follow, whatever the reason.
    fn assert_detail_is_safe(rejection: &Rejection) {
        let detail = &rejection.detail;
        for number in [CALLER, CALLEE, "02285196281", "4155550100", "12345"] {
            assert!(!detail.contains(number), "detail leaks a number: {detail}");
        }
        let longest_digit_run = detail
            .split(|c: char| !c.is_ascii_digit())
            .map(str::len)
            .max()
            .unwrap_or(0);
        assert!(longest_digit_run <= 5, "{detail}");
        assert!(detail.chars().count() <= 200, "detail too long: {detail}");
        assert_eq!(
            rejection.to_string(),
            format!("{}: {detail}", rejection.reason.code())
        );
    }

    fn oversized_attributes() -> Value {
        json!({ "blob": "x".repeat(MAX_ATTRIBUTES_BYTES) })
    }

    #[test]
    fn attributes_that_strict_parsers_refuse_are_rejected() {
        for attributes in [
            r#"{"a":"\ud800"}"#,
            r#"{"n":1e400}"#,
            r#"{"x":[1,{"s":"\udc00"}]}"#,
        ] {
            let body = format!(
                r#"{{"request_id":"r-1","instance_id":"i","caller":"02285196281","callee":"13800138000","answer_mode":"ivr","rout_point":"f","attributes":{attributes}}}"#
            );
            let rejection = decode(body.as_bytes(), None).unwrap_err();
            assert_eq!(
                rejection.reason,
                RejectReason::InvalidAttributes,
                "{attributes}"
            );
            assert!(rejection.attributes.is_none());
        }
        // A surrogate pair is a real character, and a large but finite number is fine.
        let body = r#"{"request_id":"r-1","instance_id":"i","caller":"02285196281","callee":"13800138000","answer_mode":"ivr","rout_point":"f","attributes":{"e":"\ud83d\ude00","n":1e300}}"#;
        assert!(decode(body.as_bytes(), None).is_ok());
    }

    #[test]
    fn every_reject_reason_is_triggered() {
        use RejectReason as R;
        let too_big = vec![b' '; MAX_BODY_BYTES + 1];
        let cases: Vec<(&str, Vec<u8>, RejectReason)> = vec![
            ("too large", too_big, R::BodyTooLarge),
            (
                "truncated",
                br#"{"request_id": "a","#.to_vec(),
                R::InvalidJson,
            ),
            ("array", br#"["req-1", "ccc"]"#.to_vec(), R::NotAnObject),
            ("no id", without("request_id"), R::MissingRequestId),
            (
                "bad id",
                set("request_id", json!("has space")),
                R::InvalidRequestId,
            ),
            ("no instance", without("instance_id"), R::MissingInstanceId),
            (
                "bad instance",
                set("instance_id", json!("")),
                R::InvalidInstanceId,
            ),
            ("no caller", without("caller"), R::MissingCaller),
            (
                "bad caller",
                set("caller", json!("+1 415 555 0100")),
                R::InvalidCaller,
            ),
            ("no callee", without("callee"), R::MissingCallee),
            (
                "bad callee",
                set("callee", json!("12345")),
                R::InvalidCallee,
            ),
            ("no mode", without("answer_mode"), R::MissingAnswerMode),
            (
                "bad mode",
                set("answer_mode", json!("fax")),
                R::InvalidAnswerMode,
            ),
            ("no rout point", without("rout_point"), R::MissingRoutPoint),
            (
                "bad rout point",
                set("rout_point", json!("no-at-sign")),
                R::InvalidRoutPoint,
            ),
            (
                "bad provider",
                set("provider", json!("p".repeat(65))),
                R::InvalidProvider,
            ),
            (
                "bad start",
                set("not_before", json!("2026-05-01 09:00")),
                R::InvalidNotBefore,
            ),
            (
                "bad end",
                set("expires_at", json!("tomorrow")),
                R::InvalidExpiresAt,
            ),
            (
                "start far ahead",
                set("not_before", json!("9999-12-31T00:00:00Z")),
                R::InvalidNotBefore,
            ),
            (
                "end far ahead",
                set("expires_at", json!("9999-12-31T00:00:00Z")),
                R::InvalidExpiresAt,
            ),
            (
                "empty window",
                set("expires_at", json!("2026-05-01T01:00:00Z")),
                R::InvalidTimeWindow,
            ),
            (
                "bad attributes",
                set("attributes", json!([1])),
                R::InvalidAttributes,
            ),
            (
                "big attributes",
                set("attributes", oversized_attributes()),
                R::AttributesTooLarge,
            ),
        ];

        for (name, body, want) in &cases {
            let rejection = rejection(body, None);
            assert_eq!(rejection.reason, *want, "{name}: {rejection}");
            assert_detail_is_safe(&rejection);
        }
        // Reuse is found by the store's claim, not by decoding one body.
        let decided_by_decode = RejectReason::ALL
            .iter()
            .filter(|r| **r != RejectReason::RequestIdReused);
        for reason in decided_by_decode {
            assert!(
                cases.iter().any(|(_, _, r)| r == reason),
                "{reason:?} has no case in the table"
            );
        }
    }

    #[test]
    fn reason_codes_are_unique_snake_case_names_of_the_variants() {
        assert_eq!(RejectReason::ALL.len(), 22);
        let mut seen = std::collections::HashSet::new();
        for reason in RejectReason::ALL {
            let mut snake = String::new();
            for c in format!("{reason:?}").chars() {
                if c.is_ascii_uppercase() && !snake.is_empty() {
                    snake.push('_');
                }
                snake.push(c.to_ascii_lowercase());
            }
            assert_eq!(reason.code(), snake);
            assert!(seen.insert(reason.code()), "duplicate {}", reason.code());
        }
    }

    #[test]
    fn full_request_round_trip() {
        let request = accepted(&with(|_| {}), Some("ignored-message-id"));
        assert_eq!(request.request_id().as_str(), "req-0001");
        assert_eq!(request.instance_id(), "ccc-test-01");
        assert_eq!(request.caller().as_str(), CALLER);
        assert_eq!(request.callee().as_str(), CALLEE);
        assert_eq!(request.answer_mode(), AnswerMode::Agent);
        assert_eq!(request.answer_mode().dialex_value(), "1");
        assert_eq!(request.rout_point(), "Agent.One@Example-Domain");
        assert_eq!(request.provider(), Some("cmcc"));
        let start: Timestamp = "2026-05-01T01:00:00Z".parse().expect("timestamp");
        let end: Timestamp = "2026-05-01T02:00:00Z".parse().expect("timestamp");
        assert_eq!(request.not_before(), Some(start));
        assert_eq!(request.expires_at(), Some(end));
        let attributes = request.attributes().expect("attributes");
        let attributes: Value = serde_json::from_str(attributes.get()).expect("json");
        assert_eq!(attributes, json!({"campaign": "spring", "ids": [1, 2, 3]}));
    }

    #[test]
    fn minimal_request_has_no_optional_fields() {
        let request = accepted(
            br#"{"request_id":"r","instance_id":"i","caller":"95588","callee":"02285196281","answer_mode":0,"rout_point":"flow-1"}"#,
            None,
        );
        assert_eq!(request.answer_mode(), AnswerMode::Ivr);
        assert_eq!(request.provider(), None);
        assert_eq!(request.not_before(), None);
        assert_eq!(request.expires_at(), None);
        assert!(request.attributes().is_none());
    }

    #[test]
    fn debug_masks_phone_numbers_and_hides_attributes() {
        let request = accepted(&with(|_| {}), None);
        let debug = format!("{request:?}");
        assert!(!debug.contains(CALLEE), "{debug}");
        assert!(!debug.contains(CALLER), "{debug}");
        assert!(debug.contains("157****6617"), "{debug}");
        assert!(debug.contains("400***4567"), "{debug}");
        assert!(!debug.contains("spring"), "{debug}");
        assert!(debug.contains("bytes>"), "{debug}");
        assert!(debug.contains("req-0001"), "{debug}");
        let pretty = format!("{request:#?}");
        assert!(!pretty.contains(CALLEE), "{pretty}");
    }

    #[test]
    fn a_rejection_echoes_the_attributes_when_another_field_is_wrong() {
        let sent = r#"{ "ticket" : "T-1", "n": [1.50] }"#;
        // Written by hand so the attributes reach the decoder byte for byte as above.
        let body = |field: &str, value: &str| {
            let mut fields = vec![
                ("request_id", r#""r""#),
                ("instance_id", r#""i""#),
                ("caller", r#""95588""#),
                ("callee", r#""95588""#),
                ("answer_mode", "0"),
                ("rout_point", r#""f""#),
                ("attributes", sent),
            ];
            fields.retain(|(name, _)| *name != field);
            fields.push((field, value));
            let members: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!(r#""{k}":{v}"#))
                .collect();
            format!("{{{}}}", members.join(","))
        };
        for (field, value, reason) in [
            ("callee", r#""12345""#, RejectReason::InvalidCallee),
            ("answer_mode", r#""fax""#, RejectReason::InvalidAnswerMode),
            ("provider", "7", RejectReason::InvalidProvider),
            (
                "not_before",
                r#""9999-12-31T00:00:00Z""#,
                RejectReason::InvalidNotBefore,
            ),
            ("request_id", r#""a b""#, RejectReason::InvalidRequestId),
        ] {
            let r = rejection(body(field, value).as_bytes(), Some("m-1"));
            assert_eq!(r.reason, reason, "{field}: {r}");
            // Exactly as sent, spacing and number forms included, as accepted requests echo it.
            assert_eq!(r.attributes.as_deref().map(RawValue::get), Some(sent));
        }
        // No request id at all: nothing to correlate, but the attributes were still readable.
        let r = rejection(&without("request_id"), None);
        assert_eq!(r.reason, RejectReason::MissingRequestId);
        assert!(r.attributes.is_some());

        let debug = format!("{r:?}");
        assert!(!debug.contains("spring"), "{debug}");
        assert!(debug.contains("bytes>"), "{debug}");
    }

    #[test]
    fn a_rejection_has_no_attributes_when_they_cannot_be_read() {
        let broken_body_and_attributes = with(|m| {
            m.insert("callee".into(), json!("12345"));
            m.insert("attributes".into(), json!([1]));
        });
        let mut too_big = with(|_| {});
        too_big.resize(MAX_BODY_BYTES + 1, b' ');
        let nested = format!(
            r#"{{"request_id":"r","instance_id":"i","caller":"95588","callee":"95588","answer_mode":0,"rout_point":"f","attributes":{{"k":{}{}}}}}"#,
            "[".repeat(MAX_ATTRIBUTES_DEPTH),
            "]".repeat(MAX_ATTRIBUTES_DEPTH)
        );
        let cases: [(&str, Vec<u8>, RejectReason); 7] = [
            (
                "not an object",
                set("attributes", json!("ticket")),
                RejectReason::InvalidAttributes,
            ),
            (
                "too deep",
                nested.into_bytes(),
                RejectReason::InvalidAttributes,
            ),
            (
                "too large",
                set("attributes", oversized_attributes()),
                RejectReason::AttributesTooLarge,
            ),
            // The first broken rule is reported, but unreadable attributes are not echoed.
            (
                "another field and the attributes",
                broken_body_and_attributes,
                RejectReason::InvalidCallee,
            ),
            (
                "absent",
                with(|m| {
                    m.insert("callee".into(), json!("12345"));
                    m.remove("attributes");
                }),
                RejectReason::InvalidCallee,
            ),
            (
                "not JSON",
                br#"{"request_id":"r","attributes":{"a":1},"#.to_vec(),
                RejectReason::InvalidJson,
            ),
            ("body too large", too_big, RejectReason::BodyTooLarge),
        ];
        for (name, body, reason) in cases {
            let r = rejection(&body, Some("m-1"));
            assert_eq!(r.reason, reason, "{name}: {r}");
            assert!(r.attributes.is_none(), "{name}: {r:?}");
        }
    }

    #[test]
    fn dates_more_than_the_horizon_ahead_are_rejected() {
        let now: Timestamp = "2026-12-06T20:00:00Z".parse().expect("timestamp");
        let horizon = now + SCHEDULE_HORIZON;
        assert_eq!(horizon.to_string(), "2028-01-10T20:00:00Z");
        let decode_with = |field: &str, at: String| {
            let body = with(|m| {
                m.remove("not_before");
                m.remove("expires_at");
                m.insert(field.to_owned(), json!(at));
            });
            decode_at(&body, None, now)
        };
        for (field, reason) in [
            ("not_before", RejectReason::InvalidNotBefore),
            ("expires_at", RejectReason::InvalidExpiresAt),
        ] {
            // The horizon itself is still accepted, in any offset.
            assert!(decode_with(field, horizon.to_string()).is_ok(), "{field}");
            assert!(decode_with(field, "2028-01-11T04:00:00+08:00".into()).is_ok());
            // Dates in the past are not this rule's business.
            assert!(decode_with(field, "0001-01-01T00:00:00Z".into()).is_ok());
            for beyond in [
                "2028-01-10T20:00:00.000000001Z",
                "2028-01-11T04:00:01+08:00",
                "9999-12-30T00:00:00Z",
                // Past the end of jiff's range, yet real dates: the usual "never" sentinels.
                "9999-12-31T23:59:59Z",
                "9999-12-31T23:59:59.999999999+00:00",
                "9999-12-31T00:00:00-05:00",
            ] {
                let r = decode_with(field, beyond.into()).expect_err(beyond);
                assert_eq!(r.reason, reason, "{field} = {beyond}");
                assert_eq!(r.detail, format!("{field}: more than 400 days ahead"));
                assert_detail_is_safe(&r);
            }
        }
        // Unreal dates stay malformed, in year 9999 too.
        for unreal in ["9999-02-30T00:00:00Z", "9999-12-31T24:00:00Z"] {
            let r = decode_with("expires_at", unreal.into()).expect_err(unreal);
            assert!(r.detail.contains("expected an RFC 3339"), "{unreal}: {r}");
        }
        // The horizon moves with the clock: what is too far today is fine a day later.
        let r = decode_with("not_before", "2028-01-11T20:00:00Z".into()).expect_err("too far");
        assert_eq!(r.reason, RejectReason::InvalidNotBefore);
        let body = with(|m| {
            m.insert("not_before".into(), json!("2028-01-11T20:00:00Z"));
            m.remove("expires_at");
        });
        let tomorrow = now + SignedDuration::from_hours(24);
        assert!(decode_at(&body, None, tomorrow).is_ok());
        assert_eq!(SCHEDULE_HORIZON.as_hours(), 400 * 24);
    }

    #[test]
    fn wrong_types_name_the_field() {
        use RejectReason as R;
        let fields = [
            ("request_id", R::InvalidRequestId),
            ("instance_id", R::InvalidInstanceId),
            ("caller", R::InvalidCaller),
            ("callee", R::InvalidCallee),
            ("answer_mode", R::InvalidAnswerMode),
            ("rout_point", R::InvalidRoutPoint),
            ("provider", R::InvalidProvider),
            ("not_before", R::InvalidNotBefore),
            ("expires_at", R::InvalidExpiresAt),
        ];
        let wrong = [
            (json!(7), "number"),
            (json!(15732036617_u64), "number"),
            (json!(-1.5), "number"),
            (json!(true), "a boolean"),
            (json!([]), "an array"),
            (json!({"a": 1}), "an object"),
        ];
        for (field, reason) in fields {
            for (value, kind) in &wrong {
                let r = rejection(&set(field, value.clone()), None);
                assert_eq!(r.reason, reason, "{field} = {value}");
                assert!(r.detail.starts_with(&format!("{field}: ")), "{}", r.detail);
                assert!(r.detail.contains(kind), "{field} = {value}: {}", r.detail);
                assert_detail_is_safe(&r);
            }
        }
        for value in [json!("{}"), json!(1), json!(false), json!([{}])] {
            let r = rejection(&set("attributes", value), None);
            assert_eq!(r.reason, R::InvalidAttributes);
            assert!(r.detail.starts_with("attributes: expected a JSON object"));
        }
    }

    #[test]
    fn message_id_is_the_request_id_fallback() {
        let body = without("request_id");
        let request = accepted(&body, Some("amqp-msg-42"));
        assert_eq!(request.request_id().as_str(), "amqp-msg-42");

        let body_wins = accepted(&with(|_| {}), Some("amqp-msg-42"));
        assert_eq!(body_wins.request_id().as_str(), "req-0001");

        let null_id = accepted(&set("request_id", Value::Null), Some("amqp-msg-42"));
        assert_eq!(null_id.request_id().as_str(), "amqp-msg-42");

        let r = rejection(&body, Some(""));
        assert_eq!(r.reason, RejectReason::MissingRequestId);
        assert_eq!(r.request_id, None);

        let r = rejection(&body, Some("has space"));
        assert_eq!(r.reason, RejectReason::InvalidRequestId);
        assert!(r.detail.contains("message_id"), "{}", r.detail);
        assert_eq!(r.request_id, None);

        let r = rejection(&body, Some(&"m".repeat(129)));
        assert_eq!(r.reason, RejectReason::InvalidRequestId);
    }

    #[test]
    fn request_id_is_recovered_for_later_failures() {
        let id = |s: &str| Some(RequestId::parse(s).expect("valid id"));

        let r = rejection(&set("callee", json!("nope")), Some("amqp-1"));
        assert_eq!(r.reason, RejectReason::InvalidCallee);
        assert_eq!(r.request_id, id("req-0001"));

        let r = rejection(
            &with(|m| {
                m.remove("request_id");
                m.remove("rout_point");
            }),
            Some("amqp-1"),
        );
        assert_eq!(r.reason, RejectReason::MissingRoutPoint);
        assert_eq!(r.request_id, id("amqp-1"));

        // The body's own id is broken: the message id is the best correlation left.
        let r = rejection(&set("request_id", json!("")), Some("amqp-1"));
        assert_eq!(r.reason, RejectReason::InvalidRequestId);
        assert_eq!(r.request_id, id("amqp-1"));
        let r = rejection(&set("request_id", json!("")), None);
        assert_eq!(r.request_id, None);

        // Unparseable bodies only have the message id.
        let r = rejection(b"{", Some("amqp-1"));
        assert_eq!(r.reason, RejectReason::InvalidJson);
        assert_eq!(r.request_id, id("amqp-1"));
        let r = rejection(&vec![b' '; MAX_BODY_BYTES + 1], Some("amqp-1"));
        assert_eq!(r.reason, RejectReason::BodyTooLarge);
        assert_eq!(r.request_id, id("amqp-1"));
        let r = rejection(b"{", Some("bad id"));
        assert_eq!(r.request_id, None);
    }

    #[test]
    fn first_failing_field_in_contract_order_wins() {
        let body = with(|m| {
            m.insert("callee".into(), json!("x"));
            m.insert("caller".into(), json!("x"));
            m.insert("attributes".into(), json!(1));
            m.insert("instance_id".into(), json!(" "));
        });
        assert_eq!(
            rejection(&body, None).reason,
            RejectReason::InvalidInstanceId
        );
        let body = with(|m| {
            m.insert("attributes".into(), json!(1));
            m.insert("expires_at".into(), json!("x"));
            m.insert("provider".into(), json!(1));
        });
        assert_eq!(rejection(&body, None).reason, RejectReason::InvalidProvider);
    }

    #[test]
    fn null_means_absent() {
        let request = accepted(
            &with(|m| {
                for field in ["provider", "not_before", "expires_at", "attributes"] {
                    m.insert(field.into(), Value::Null);
                }
            }),
            None,
        );
        assert_eq!(request.provider(), None);
        assert_eq!(request.not_before(), None);
        assert_eq!(request.expires_at(), None);
        assert!(request.attributes().is_none());

        use RejectReason as R;
        for (field, reason) in [
            ("request_id", R::MissingRequestId),
            ("instance_id", R::MissingInstanceId),
            ("caller", R::MissingCaller),
            ("callee", R::MissingCallee),
            ("answer_mode", R::MissingAnswerMode),
            ("rout_point", R::MissingRoutPoint),
        ] {
            let r = rejection(&set(field, Value::Null), None);
            assert_eq!(r.reason, reason, "{field}");
            assert_eq!(
                r.detail,
                format!("{field}: missing")
                    + if field == "request_id" {
                        ", and the message has no AMQP message_id to fall back on"
                    } else {
                        ""
                    }
            );
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let request = accepted(
            &with(|m| {
                m.insert("priority".into(), json!(5));
                m.insert(
                    "extra".into(),
                    json!({"deep": [1, 2, {"x": null}], "s": "\u{7}"}),
                );
                m.insert("Callee".into(), json!("not a number"));
            }),
            None,
        );
        assert_eq!(request.callee().as_str(), CALLEE);
    }

    #[test]
    fn answer_modes_by_name_and_number() {
        use AnswerMode as M;
        let cases = [
            (json!("ivr"), M::Ivr, "flow-1"),
            (json!(0), M::Ivr, "flow-1"),
            (json!("agent"), M::Agent, "a@b"),
            (json!(1), M::Agent, "a@b"),
            (json!("skill_group"), M::SkillGroup, "sales"),
            (json!(2), M::SkillGroup, "sales"),
        ];
        for (value, mode, rout_point) in cases {
            let request = accepted(
                &with(|m| {
                    m.insert("answer_mode".into(), value.clone());
                    m.insert("rout_point".into(), json!(rout_point));
                }),
                None,
            );
            assert_eq!(request.answer_mode(), mode, "{value}");
        }
        assert_eq!(
            [M::Ivr, M::Agent, M::SkillGroup].map(|m| (m.as_str(), m.dialex_value())),
            [("ivr", "0"), ("agent", "1"), ("skill_group", "2")]
        );
        // Written by hand: serde_json would normalise 1.0 and 1e0 on the way out.
        let escaped = br#"{"request_id":"r","instance_id":"i","caller":"95588","callee":"95588","answer_mode":"\u0069vr","rout_point":"f"}"#;
        assert_eq!(accepted(escaped, None).answer_mode(), M::Ivr);
        for raw in [
            "3",
            "-1",
            "1.0",
            "1e0",
            "-0",
            r#""1""#,
            r#""IVR""#,
            r#""Agent""#,
            r#""""#,
            r#""\ud800""#,
        ] {
            let body = format!(
                r#"{{"request_id":"r","instance_id":"i","caller":"95588","callee":"95588","answer_mode":{raw},"rout_point":"a@b"}}"#
            );
            let r = rejection(body.as_bytes(), None);
            assert_eq!(r.reason, RejectReason::InvalidAnswerMode, "{raw}: {r}");
            assert!(
                r.detail.starts_with(
                    r#"answer_mode: expected "ivr", "agent", "skill_group" or 0-2, got "#
                ),
                "{}",
                r.detail
            );
        }
        let r = rejection(&set("answer_mode", json!("fax")), None);
        assert_eq!(
            r.detail,
            r#"answer_mode: expected "ivr", "agent", "skill_group" or 0-2, got "fax""#
        );
    }

    #[test]
    fn details_quote_little_and_never_phone_numbers() {
        let r = rejection(&set("answer_mode", json!("y".repeat(1000))), None);
        assert!(
            r.detail.ends_with(&format!("\"{}\"...", "y".repeat(40))),
            "{}",
            r.detail
        );
        for value in [
            json!(CALLEE),
            json!("call 157 3203 6617"),
            json!(15732036617_u64),
            // Full-width digits are a number to whoever reads them.
            json!("１５７３２０３６６１７"),
        ] {
            let r = rejection(&set("answer_mode", value), None);
            assert_detail_is_safe(&r);
            assert!(r.detail.contains("withheld"), "{}", r.detail);
        }
        let r = rejection(&set("answer_mode", json!("\u{7}\n")), None);
        assert!(r.detail.ends_with(r#"got "\u{7}\n""#), "{}", r.detail);
        for field in ["caller", "callee"] {
            for value in [
                "1573203661",
                "+1 415 555 0100",
                "022 8519 62",
                "15732036617x",
            ] {
                let r = rejection(&set(field, json!(value)), None);
                assert_detail_is_safe(&r);
                assert!(
                    r.detail
                        .starts_with(&format!("{field}: not a plausible Chinese phone number")),
                    "{}",
                    r.detail
                );
            }
        }
    }

    #[test]
    fn body_size_limit_is_inclusive() {
        let mut body = with(|_| {});
        body.resize(MAX_BODY_BYTES, b' ');
        assert_eq!(body.len(), MAX_BODY_BYTES);
        accepted(&body, None);
        body.push(b' ');
        let r = rejection(&body, None);
        assert_eq!(r.reason, RejectReason::BodyTooLarge);
        assert_eq!(r.detail, "body: 65537 bytes exceeds the 65536-byte limit");
    }

    #[test]
    fn attributes_size_limit_is_inclusive() {
        let overhead = r#"{"blob":""}"#.len();
        let exact = json!({ "blob": "x".repeat(MAX_ATTRIBUTES_BYTES - overhead) });
        let request = accepted(&set("attributes", exact), None);
        let attributes = request.attributes().expect("attributes");
        assert_eq!(attributes.get().len(), MAX_ATTRIBUTES_BYTES);

        let over = json!({ "blob": "x".repeat(MAX_ATTRIBUTES_BYTES - overhead + 1) });
        let r = rejection(&set("attributes", over), None);
        assert_eq!(r.reason, RejectReason::AttributesTooLarge);
        assert_eq!(
            r.detail,
            "attributes: 8193 bytes exceeds the 8192-byte limit"
        );

        let empty = accepted(&set("attributes", json!({})), None);
        assert_eq!(empty.attributes().map(RawValue::get), Some("{}"));
    }

    #[test]
    fn attributes_are_kept_exactly_as_sent() {
        let body = br#"{"request_id":"r","instance_id":"i","caller":"95588","callee":"95588","answer_mode":0,"rout_point":"f","attributes": { "b" : 1.50, "a":"\u00e9" } }"#;
        let request = accepted(body, None);
        assert_eq!(
            request.attributes().map(RawValue::get),
            Some(r#"{ "b" : 1.50, "a":"\u00e9" }"#)
        );
    }

    #[test]
    fn malformed_bodies_are_invalid_json() {
        let cases: [&[u8]; 11] = [
            b"",
            b"   ",
            b"{",
            b"nope",
            b"{\"request_id\": \"\xff\"}",
            b"\xef\xbb\xbf{}",
            b"{} {}",
            b"{}x",
            br#"{"request_id": "a", "request_id": "b"}"#,
            b"{\"request_id\": \"a\x01b\"}",
            b"[1, 2",
        ];
        for body in cases {
            let r = rejection(body, None);
            assert_eq!(r.reason, RejectReason::InvalidJson, "{body:?}: {r}");
            assert!(r.detail.starts_with("body: not valid "), "{}", r.detail);
            assert_detail_is_safe(&r);
        }
        let r = rejection(b"{\"a\": \"\xc3\x28\"}", None);
        assert_eq!(r.detail, "body: not valid UTF-8 (at byte 7)");
    }

    #[test]
    fn other_json_values_are_not_objects() {
        for (body, kind) in [
            (&b"[]"[..], "an array"),
            (b" \"req\" ", "a string"),
            (b"15732036617", "a number"),
            (b"true", "a boolean"),
            (b"null", "null"),
        ] {
            let r = rejection(body, None);
            assert_eq!(r.reason, RejectReason::NotAnObject);
            assert_eq!(
                r.detail,
                format!("body: expected a JSON object, got {kind}")
            );
        }
    }

    #[test]
    fn deep_nesting_is_rejected_without_overflowing_the_stack() {
        let depth = 30_000;
        let nested = |open: &str, close: &str| open.repeat(depth) + &close.repeat(depth);
        let cases = [
            (nested("[", "]"), RejectReason::NotAnObject),
            ("[".repeat(MAX_BODY_BYTES), RejectReason::InvalidJson),
            (
                "{\"a\":".repeat(MAX_BODY_BYTES / 5),
                RejectReason::InvalidJson,
            ),
            (
                format!(r#"{{"request_id": {}}}"#, nested("[", "]")),
                RejectReason::InvalidRequestId,
            ),
            (
                format!(r#"{{"unknown": {}}}"#, nested("[", "]")),
                RejectReason::MissingRequestId,
            ),
        ];
        for (body, reason) in cases {
            assert!(body.len() <= MAX_BODY_BYTES);
            let r = rejection(body.as_bytes(), None);
            assert_eq!(r.reason, reason, "{r}");
        }
        accepted(&set("attributes", json!({"a": {"b": [[[1]]]}})), None);
    }

    #[test]
    fn attributes_nesting_is_limited_to_what_event_consumers_parse() {
        let object_at_depth = |depth: usize| {
            let inner = "[".repeat(depth - 1) + &"]".repeat(depth - 1);
            format!(
                r#"{{"request_id":"r","instance_id":"i","caller":"95588","callee":"95588","answer_mode":0,"rout_point":"f","attributes":{{"k":{inner},"s":"[[[[\"]]]"}}}}"#
            )
        };
        accepted(object_at_depth(MAX_ATTRIBUTES_DEPTH).as_bytes(), None);
        let r = rejection(object_at_depth(MAX_ATTRIBUTES_DEPTH + 1).as_bytes(), None);
        assert_eq!(r.reason, RejectReason::InvalidAttributes);
        assert_eq!(r.detail, "attributes: nested deeper than 64 levels");
        let r = rejection(object_at_depth(20_000).as_bytes(), None);
        assert_eq!(r.reason, RejectReason::AttributesTooLarge);
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let body = br#"{"request_id":"req\u002d1","instance_id":"\u0069nst","caller":"157\u002D3203 6617","callee":"95588","answer_mode":"skill_group","rout_point":"\u9500\u552e\u7ec4","provider":"c\"m"}"#;
        let request = accepted(body, None);
        assert_eq!(request.request_id().as_str(), "req-1");
        assert_eq!(request.instance_id(), "inst");
        assert_eq!(request.caller().as_str(), CALLEE);
        assert_eq!(request.rout_point(), "销售组");
        assert_eq!(request.provider(), Some("c\"m"));

        for (field, raw, reason) in [
            (
                "rout_point",
                r#""flow\u0007""#,
                RejectReason::InvalidRoutPoint,
            ),
            ("rout_point", r#""\ud800""#, RejectReason::InvalidRoutPoint),
            ("provider", r#""a\nb""#, RejectReason::InvalidProvider),
            ("request_id", r#""a\tb""#, RejectReason::InvalidRequestId),
        ] {
            // Written by hand so the escape reaches the decoder exactly as above.
            let mut fields = vec![
                ("request_id", r#""r""#),
                ("instance_id", r#""i""#),
                ("caller", r#""95588""#),
                ("callee", r#""95588""#),
                ("answer_mode", "0"),
                ("rout_point", r#""f""#),
            ];
            fields.retain(|(name, _)| *name != field);
            fields.push((field, raw));
            let members: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!(r#""{k}":{v}"#))
                .collect();
            let body = format!("{{{}}}", members.join(","));
            let r = rejection(body.as_bytes(), None);
            assert_eq!(r.reason, reason, "{field} = {raw}: {r}");
        }
    }

    #[test]
    fn request_id_rules() {
        for ok in ["a", "req-0001", "~!#$%^&*()_+{}|:<>?", &"x".repeat(128)] {
            let id = RequestId::parse(ok).expect(ok);
            assert_eq!(id.as_str(), ok);
            assert_eq!(id.to_string(), ok);
            assert_eq!(format!("{id:?}"), ok);
            assert_eq!(serde_json::to_value(&id).expect("serialize"), json!(ok));
        }
        for bad in [
            "",
            " ",
            "a b",
            "a\tb",
            "é",
            "a\u{7f}",
            "\u{0}",
            &"x".repeat(129),
        ] {
            assert_eq!(
                RequestId::parse(bad),
                Err(RejectReason::InvalidRequestId),
                "{bad:?}"
            );
            let r = rejection(&set("request_id", json!(bad)), None);
            assert_eq!(r.reason, RejectReason::InvalidRequestId);
        }
    }

    #[test]
    fn instance_id_rules() {
        accepted(&set("instance_id", json!("x".repeat(128))), None);
        for bad in ["", " ", "ccc test", "ccc\n", "实例", &"x".repeat(129)] {
            let r = rejection(&set("instance_id", json!(bad)), None);
            assert_eq!(r.reason, RejectReason::InvalidInstanceId, "{bad:?}");
        }
    }

    #[test]
    fn rout_point_rules() {
        let agent = |rout_point: &str| {
            decode(
                &with(|m| {
                    m.insert("answer_mode".into(), json!("agent"));
                    m.insert("rout_point".into(), json!(rout_point));
                }),
                None,
            )
        };
        for ok in ["a@b", "Agent.One@Example.COM", "12345@ccc-test"] {
            let request = agent(ok).unwrap_or_else(|r| panic!("{ok}: {r}"));
            assert_eq!(request.rout_point(), ok);
        }
        for bad in ["no-at", "@domain", "agent@", "a@b@c", "@", "", "   "] {
            let r = agent(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(r.reason, RejectReason::InvalidRoutPoint, "{bad:?}");
        }
        // Other modes take any text, '@' included, up to 256 characters.
        for mode in ["ivr", "skill_group"] {
            let flow = |rout_point: String| {
                decode(
                    &with(|m| {
                        m.insert("answer_mode".into(), json!(mode));
                        m.insert("rout_point".into(), json!(rout_point));
                    }),
                    None,
                )
            };
            assert!(flow("x@y@z".into()).is_ok());
            assert!(flow("组".repeat(256)).is_ok());
            let r = flow("组".repeat(257)).expect_err("too long");
            assert_eq!(r.reason, RejectReason::InvalidRoutPoint);
            let r = flow("".into()).expect_err("empty");
            assert_eq!(r.detail, "rout_point: must not be empty");
        }
    }

    #[test]
    fn provider_rules() {
        assert_eq!(
            accepted(&set("provider", json!("p".repeat(64))), None).provider(),
            Some("p".repeat(64).as_str())
        );
        assert_eq!(accepted(&set("provider", json!("")), None).provider(), None);
        assert_eq!(accepted(&without("provider"), None).provider(), None);
        for bad in ["\u{0}", "a\u{85}b", &"p".repeat(65)] {
            let r = rejection(&set("provider", json!(bad)), None);
            assert_eq!(r.reason, RejectReason::InvalidProvider, "{bad:?}");
        }
    }

    #[test]
    fn timestamps_must_be_rfc3339_with_an_offset() {
        let at = |s: &str| s.parse::<Timestamp>().expect(s);
        let accepted_forms = [
            ("2026-05-01T09:00:00+08:00", at("2026-05-01T01:00:00Z")),
            ("2026-05-01t01:00:00z", at("2026-05-01T01:00:00Z")),
            ("2026-05-01 01:00:00Z", at("2026-05-01T01:00:00Z")),
            (
                "2026-05-01T01:00:00.123456789Z",
                at("2026-05-01T01:00:00.123456789Z"),
            ),
            ("2026-04-30T20:00:00-05:00", at("2026-05-01T01:00:00Z")),
            ("2026-05-01T00:59:00-23:59", at("2026-05-02T00:58:00Z")),
        ];
        for (text, want) in accepted_forms {
            let request = accepted(
                &with(|m| {
                    m.insert("not_before".into(), json!(text));
                    m.remove("expires_at");
                }),
                None,
            );
            assert_eq!(request.not_before(), Some(want), "{text}");
            let request = accepted(
                &with(|m| {
                    m.insert("expires_at".into(), json!(text));
                    m.remove("not_before");
                }),
                None,
            );
            assert_eq!(request.expires_at(), Some(want), "{text}");
        }
        let rejected_forms = [
            "2026-05-01T09:00:00",
            "2026-05-01",
            "2026-05-01T09:00+08:00",
            "2026-05-01T09:00:00+0800",
            "2026-05-01T09:00:00+08",
            "2026-05-01T09:00:00.Z",
            "2026-05-01T09:00:00+08:00[Asia/Shanghai]",
            "20260501T090000Z",
            "2026-02-30T00:00:00Z",
            "2026-05-01T24:00:01Z",
            "2026-05-01T09:00:00Z ",
            " 2026-05-01T09:00:00Z",
            "",
            "tomorrow",
            "2026-05-01T09:00:00.1234567890Z",
            // RFC 3339 offsets go to 23:59.
            "2026-05-01T09:00:00+24:00",
            "2026-05-01T09:00:00-25:59",
            "2026-05-01T09:00:00+08:60",
        ];
        for text in rejected_forms {
            let r = rejection(&set("not_before", json!(text)), None);
            assert_eq!(r.reason, RejectReason::InvalidNotBefore, "{text:?}");
            let r = rejection(&set("expires_at", json!(text)), None);
            assert_eq!(r.reason, RejectReason::InvalidExpiresAt, "{text:?}");
        }
    }

    #[test]
    fn expires_at_must_be_after_not_before() {
        let window = |start: &str, end: &str| {
            decode(
                &with(|m| {
                    m.insert("not_before".into(), json!(start));
                    m.insert("expires_at".into(), json!(end));
                }),
                None,
            )
        };
        assert!(
            window(
                "2026-05-01T09:00:00+08:00",
                "2026-05-01T01:00:00.000000001Z"
            )
            .is_ok()
        );
        for (start, end) in [
            ("2026-05-01T09:00:00+08:00", "2026-05-01T01:00:00Z"),
            ("2026-05-01T09:00:00Z", "2026-05-01T08:59:59Z"),
        ] {
            let r = window(start, end).expect_err("rejected");
            assert_eq!(r.reason, RejectReason::InvalidTimeWindow);
            assert_eq!(r.detail, "expires_at: must be after not_before");
        }
    }

    #[test]
    fn the_request_id_is_recovered_from_the_body_or_else_the_message_id() {
        let id = |body: &[u8], message_id| {
            recover_request_id(body, message_id).map(|id| id.as_str().to_owned())
        };
        assert_eq!(
            id(br#"{"request_id":"r-1","callee":7}"#, None).as_deref(),
            Some("r-1")
        );
        assert_eq!(
            id(br#"{"request_id":"r-1"}"#, Some("m-1")).as_deref(),
            Some("r-1")
        );
        assert_eq!(id(b"not json", Some("m-1")).as_deref(), Some("m-1"));
        assert_eq!(
            id(br#"{"request_id":"has space"}"#, Some("m-1")).as_deref(),
            Some("m-1")
        );
        assert_eq!(id(br#"{"request_id":42}"#, None), None);
        assert_eq!(id(b"", None), None);
    }
}
