//! Parsing and checking the arguments of `#[subscriber(...)]`.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Lit, LitStr, MetaNameValue, Path, Token};

/// The keys `#[subscriber]` accepts.
const KEYS: &[&str] = &["topic", "mqtt_filter", "group", "codec", "reply"];

/// The codecs known by name.
pub const CODECS: &[&str] = &["json", "msgpack", "protobuf", "text", "bytes"];

/// A topic: a string literal, or a path to a `Topic<T>` constant.
pub enum TopicArg {
    Name(LitStr),
    Const(Path),
}

/// A codec: a built-in name, or a path to a type implementing `transport::codec::Codec`.
pub enum CodecArg {
    Builtin(LitStr),
    Custom(Path),
}

/// The checked arguments.
pub struct SubscriberArgs {
    /// The topic, or the MQTT filter when `mqtt_filter` is set.
    pub topic: TopicArg,
    /// `topic` came from `mqtt_filter = "..."`.
    pub mqtt_filter: bool,
    pub group: Option<LitStr>,
    pub codec: Option<CodecArg>,
    pub reply: Option<TopicArg>,
}

/// Collects several errors into one.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    pub fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub fn spanned(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn to_compile_errors(&self) -> TokenStream {
        self.0
            .as_ref()
            .map(syn::Error::to_compile_error)
            .unwrap_or_default()
    }
}

/// Parses `topic = ... | mqtt_filter = ..., group = ..., codec = ..., reply = ...`. Every
/// problem is reported; `attr_span` is where a missing `topic` is reported.
pub fn parse(tokens: TokenStream, attr_span: Span, errors: &mut Errors) -> Option<SubscriberArgs> {
    let pairs = match Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(tokens) {
        Ok(pairs) => pairs,
        Err(error) => {
            errors.push(error);
            return None;
        }
    };
    let mut topic = None;
    let mut mqtt_filter = false;
    let mut group = None;
    let mut codec = None;
    let mut reply = None;
    let mut seen: Vec<String> = Vec::new();
    // A misspelt `topic` is reported once, as the typo, not again as missing.
    let mut topic_typo = false;

    for pair in pairs {
        let Some(key) = pair.path.get_ident().map(ToString::to_string) else {
            errors.spanned(
                pair.path.span(),
                unknown_key_message(&path_text(&pair.path)),
            );
            continue;
        };
        if !KEYS.contains(&key.as_str()) {
            topic_typo |= closest_key(&key) == Some("topic");
            errors.spanned(pair.path.span(), unknown_key_message(&key));
            continue;
        }
        if seen.contains(&key) {
            errors.spanned(pair.path.span(), format!("duplicate `{key}`: give it once"));
            continue;
        }
        let other = match key.as_str() {
            "topic" => Some("mqtt_filter"),
            "mqtt_filter" => Some("topic"),
            _ => None,
        };
        if let Some(other) = other
            && seen.iter().any(|k| k == other)
        {
            errors.spanned(
                pair.path.span(),
                "give `topic` (a topic name) or `mqtt_filter` (an MQTT topic filter), not both",
            );
            continue;
        }
        seen.push(key.clone());
        match key.as_str() {
            "topic" => topic = topic_value(&pair.value, "topic", errors),
            "mqtt_filter" => {
                mqtt_filter = true;
                topic = filter_value(&pair.value, errors);
            }
            "reply" => reply = topic_value(&pair.value, "reply", errors),
            "group" => group = group_value(&pair.value, errors),
            "codec" => codec = codec_value(&pair.value, errors),
            _ => unreachable!("checked against KEYS"),
        }
    }

    if !seen.iter().any(|k| k == "topic" || k == "mqtt_filter") && !topic_typo {
        errors.spanned(
            attr_span,
            "missing `topic`: write `#[subscriber(topic = \"orders.created\")]` or `topic = SOME_TOPIC_CONST`",
        );
    }
    Some(SubscriberArgs {
        topic: topic?,
        mqtt_filter,
        group,
        codec,
        reply,
    })
}

fn path_text(path: &Path) -> String {
    path.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}

fn unknown_key_message(key: &str) -> String {
    let expected = KEYS
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match closest_key(key) {
        Some(close) => format!(
            "unknown key `{key}` in `#[subscriber]`: did you mean `{close}`? (expected one of: {expected})"
        ),
        None => format!("unknown key `{key}` in `#[subscriber]`; expected one of: {expected}"),
    }
}

/// The valid key within two edits of `key`, if any (typos like `topik`, `grup`).
fn closest_key(key: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

fn string_literal(value: &Expr) -> Option<&LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Some(lit),
        _ => None,
    }
}

fn topic_value(value: &Expr, key: &str, errors: &mut Errors) -> Option<TopicArg> {
    if let Some(lit) = string_literal(value) {
        let name = lit.value();
        if name.trim().is_empty() {
            errors.spanned(lit.span(), format!("`{key}` must not be empty"));
            return None;
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errors.spanned(
                lit.span(),
                format!("`{key}` must not contain whitespace or control characters"),
            );
            return None;
        }
        // the runtime's portable topic rule (`transport::backend::check_topic`), caught
        // here for literals so the mistake is a compile error on the user's token
        if let Some(c) = name.chars().find(|c| matches!(c, '*' | '>' | '#' | '+')) {
            errors.spanned(
                lit.span(),
                format!(
                    "`{key}` must not contain `{c}`: it is a wildcard on some brokers, so no topic name holds it; to subscribe to an MQTT topic tree, write `mqtt_filter = \"sensors/+/readings\"`"
                ),
            );
            return None;
        }
        if name.split('.').any(str::is_empty) {
            errors.spanned(
                lit.span(),
                format!(
                    "`{key}` must not have an empty `.`-separated segment (`a..b`, `.a`, `a.`)"
                ),
            );
            return None;
        }
        return Some(TopicArg::Name(lit.clone()));
    }
    if let Expr::Path(path) = value
        && path.qself.is_none()
    {
        return Some(TopicArg::Const(path.path.clone()));
    }
    errors.spanned(
        value.span(),
        format!(
            "`{key}` must be a string literal (`{key} = \"orders.created\"`) or a path to a `transport::Topic` constant (`{key} = ORDERS`)"
        ),
    );
    None
}

/// An MQTT topic filter: MQTT's rules (the runtime's `backend::mqtt_filter::check_filter`,
/// caught here so the mistake is a compile error on the user's token).
fn filter_value(value: &Expr, errors: &mut Errors) -> Option<TopicArg> {
    let Some(lit) = string_literal(value) else {
        errors.spanned(
            value.span(),
            "`mqtt_filter` must be a string literal: `mqtt_filter = \"/hfp/v2/journey/+/vp/bus/#\"`",
        );
        return None;
    };
    let filter = lit.value();
    let levels: Vec<&str> = filter.split('/').collect();
    let problem = if filter.is_empty() {
        Some("must not be empty".to_string())
    } else if filter.len() > 65_535 {
        Some("must be at most 65,535 bytes long".to_string())
    } else if filter.chars().any(char::is_control) {
        Some("must not contain control characters".to_string())
    } else if filter.starts_with("$share/") {
        Some("must not begin with `$share/`: give the shared subscription's name as `group = \"...\"`".to_string())
    } else if let Some(level) = levels
        .iter()
        .find(|level| level.contains('#') && **level != "#")
    {
        Some(format!(
            "has `#` inside level `{level}`: `#` must be a whole level (`sensors/#`)"
        ))
    } else if levels[..levels.len() - 1].contains(&"#") {
        Some("has `#` before its last level: `#` stands for all the levels below, so it comes last (`sensors/#`)".to_string())
    } else {
        levels
            .iter()
            .find(|level| level.contains('+') && **level != "+")
            .map(|level| {
                format!(
                    "has `+` in level `{level}`: `+` must be a whole level (`sensors/+/readings`)"
                )
            })
    };
    if let Some(problem) = problem {
        errors.spanned(lit.span(), format!("`mqtt_filter` {problem}"));
        return None;
    }
    Some(TopicArg::Name(lit.clone()))
}

fn group_value(value: &Expr, errors: &mut Errors) -> Option<LitStr> {
    match string_literal(value) {
        Some(lit) if lit.value().trim().is_empty() => {
            errors.spanned(
                lit.span(),
                "`group` must not be empty; leave it out for fan-out (every instance gets every message)",
            );
            None
        }
        Some(lit) => Some(lit.clone()),
        None => {
            errors.spanned(
                value.span(),
                "`group` must be a string literal: `group = \"billing\"`",
            );
            None
        }
    }
}

fn codec_value(value: &Expr, errors: &mut Errors) -> Option<CodecArg> {
    if let Some(lit) = string_literal(value) {
        if CODECS.contains(&lit.value().as_str()) {
            return Some(CodecArg::Builtin(lit.clone()));
        }
        errors.spanned(
            lit.span(),
            format!(
                "unknown codec `{}`; expected one of: {}, or a path to a type implementing `transport::codec::Codec` (`codec = MyCodec`)",
                lit.value(),
                CODECS.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ")
            ),
        );
        return None;
    }
    if let Expr::Path(path) = value
        && path.qself.is_none()
    {
        return Some(CodecArg::Custom(path.path.clone()));
    }
    errors.spanned(
        value.span(),
        "`codec` must be a codec name (`codec = \"json\"`) or a path to a codec type (`codec = MyCodec`)",
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_a_suggestion() {
        assert_eq!(closest_key("topik"), Some("topic"));
        assert_eq!(closest_key("grop"), Some("group"));
        assert_eq!(closest_key("codecs"), Some("codec"));
        assert_eq!(closest_key("queue"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
