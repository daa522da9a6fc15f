#![doc = include_str!("../README.md")]
//!
//! The classifier is the first step of the message path: it decides whether a kind exists,
//! checks that the body fits it, and names the channel group that will run the message's
//! handler chain.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// The channel group that built-in kinds go to.
pub const DEFAULT_GROUP: &str = "chat";

/// Why a draft could not be classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// No kind of that name is registered.
    #[error("unknown message kind `{0}`")]
    UnknownKind(String),
    /// The body does not fit the kind.
    #[error("invalid body for kind `{kind}`: {reason}")]
    InvalidBody {
        /// The kind whose validator refused.
        kind: String,
        /// The validator's explanation.
        reason: String,
    },
    /// A kind was registered twice.
    #[error("kind `{0}` is already registered")]
    Duplicate(String),
}

impl From<ClassifyError> for im_protocol::ApiError {
    fn from(e: ClassifyError) -> Self {
        use im_protocol::{ApiError, ErrorCode};
        match e {
            ClassifyError::UnknownKind(_) => ApiError::new(ErrorCode::UnknownKind, e.to_string()),
            ClassifyError::InvalidBody { .. } => {
                ApiError::new(ErrorCode::InvalidBody, e.to_string())
            }
            ClassifyError::Duplicate(_) => ApiError::new(ErrorCode::Internal, e.to_string()),
        }
    }
}

type Validator = dyn Fn(&Value) -> Result<(), String> + Send + Sync;

/// A message kind: its name, its body check and the channel group that handles it.
///
/// Applications register their own kinds (polls, locations, stickers) with the same type
/// the built-in ones use.
#[derive(Clone)]
pub struct KindSpec {
    name: String,
    group: String,
    validator: Arc<Validator>,
}

impl std::fmt::Debug for KindSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindSpec")
            .field("name", &self.name)
            .field("group", &self.group)
            .finish()
    }
}

impl KindSpec {
    /// A kind that accepts any JSON object body and goes to the default group.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            group: DEFAULT_GROUP.to_owned(),
            validator: Arc::new(|body| {
                if body.is_object() {
                    Ok(())
                } else {
                    Err("body must be a JSON object".into())
                }
            }),
        }
    }

    /// Sets the body check; its error text reaches the client in `invalid_body`.
    pub fn validator(
        mut self,
        f: impl Fn(&Value) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.validator = Arc::new(f);
        self
    }

    /// Routes this kind to a channel group other than [`DEFAULT_GROUP`].
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// The kind's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The built-in `text` kind: `{"text": "..."}`, non-empty, at most `max_chars` chars.
    pub fn text(max_chars: usize) -> Self {
        Self::new("text").validator(move |body| {
            let obj = body.as_object().ok_or("body must be an object")?;
            if obj.keys().any(|k| k != "text") {
                return Err("text body has only the field `text`".into());
            }
            let text = obj
                .get("text")
                .and_then(Value::as_str)
                .ok_or("`text` must be a string")?;
            if text.trim().is_empty() {
                return Err("`text` must not be empty".into());
            }
            if text.chars().count() > max_chars {
                return Err(format!("`text` is longer than {max_chars} characters"));
            }
            Ok(())
        })
    }
}

/// Where a classified message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// The kind's registered name.
    pub kind: &'a str,
    /// The channel group that runs it.
    pub group: &'a str,
}

/// Maps message kinds to channel groups: the registry of built-in and application kinds.
#[derive(Debug, Clone, Default)]
pub struct MessageClassifier {
    kinds: HashMap<String, KindSpec>,
}

impl MessageClassifier {
    /// An empty classifier; every kind is unknown until registered.
    pub fn new() -> Self {
        Self::default()
    }

    /// A classifier with the built-in kinds (`text`).
    pub fn with_builtins() -> Self {
        let mut c = Self::new();
        // Built-ins cannot collide in an empty registry.
        let _ = c.register(KindSpec::text(10_000));
        c
    }

    /// Registers a kind; a name can be registered only once.
    pub fn register(&mut self, spec: KindSpec) -> Result<(), ClassifyError> {
        if self.kinds.contains_key(&spec.name) {
            return Err(ClassifyError::Duplicate(spec.name));
        }
        self.kinds.insert(spec.name.clone(), spec);
        Ok(())
    }

    /// Every channel group some kind routes to, so the server can check they all exist.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.kinds.values().map(|k| k.group.as_str())
    }

    /// Checks `kind` and `body` and names the channel group for them.
    pub fn classify(&self, kind: &str, body: &Value) -> Result<Route<'_>, ClassifyError> {
        let spec = self
            .kinds
            .get(kind)
            .ok_or_else(|| ClassifyError::UnknownKind(kind.to_owned()))?;
        (spec.validator)(body).map_err(|reason| ClassifyError::InvalidBody {
            kind: spec.name.clone(),
            reason,
        })?;
        Ok(Route {
            kind: &spec.name,
            group: &spec.group,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtin_text() {
        let c = MessageClassifier::with_builtins();
        assert_eq!(
            c.classify("text", &json!({"text": "hi"})).unwrap().group,
            DEFAULT_GROUP
        );
        assert!(matches!(
            c.classify("text", &json!({"text": 1})),
            Err(ClassifyError::InvalidBody { .. })
        ));
        assert!(matches!(
            c.classify("text", &json!({"text": " "})),
            Err(ClassifyError::InvalidBody { .. })
        ));
        assert!(matches!(
            c.classify("text", &json!({"text": "a", "x": 1})),
            Err(ClassifyError::InvalidBody { .. })
        ));
        assert_eq!(
            c.classify("nope", &json!({})),
            Err(ClassifyError::UnknownKind("nope".into()))
        );
    }

    #[test]
    fn app_kind_and_duplicates() {
        let mut c = MessageClassifier::with_builtins();
        c.register(KindSpec::new("ping").group("bots")).unwrap();
        assert_eq!(c.classify("ping", &json!({})).unwrap().group, "bots");
        assert!(c.register(KindSpec::new("text")).is_err());
    }
}
