//! `transport add subscriber`: adds a handler method to the `#[transport::service]` impl
//! block of a service file, with its typed topic constant and payload type when the file
//! has none yet. The file is parsed (syn) to find where things go; the text around them
//! is left as it was, and the result must parse again before it is written.

use std::path::{Path, PathBuf};

use proc_macro2::{LineColumn, TokenTree};
use quote::ToTokens;
use syn::{Fields, ImplItem, Item, ItemConst, ItemImpl, Type};

use crate::codec::Codec;
use crate::error::CliError;
use crate::subscriber::Subscriber;

/// What `add subscriber` was asked for.
#[derive(Clone, Debug)]
pub struct AddSpec {
    /// The handler method's name.
    pub name: String,
    /// Its topic.
    pub topic: String,
    /// Its group.
    pub group: Option<String>,
    /// Its codec; the existing topic constant's, else JSON, when `None`.
    pub codec: Option<Codec>,
    /// Its payload type; see [`Subscriber::new`].
    pub payload: Option<String>,
    /// The service file.
    pub file: PathBuf,
    /// The service type, when the file has several.
    pub service: Option<String>,
}

/// What [`add`] did.
#[derive(Clone, Debug)]
pub struct Added {
    /// The file changed.
    pub file: PathBuf,
    /// The service the method was added to.
    pub service: String,
    /// The subscriber added.
    pub subscriber: Subscriber,
    /// Whether the typed topic constant was added (else an existing one is used).
    pub added_topic: bool,
    /// Whether the payload type was added (else an existing one is used).
    pub added_payload: bool,
}

/// The default service file of a crate: `<dir>/src/service.rs`.
pub fn default_file(crate_dir: &Path) -> PathBuf {
    crate_dir.join("src").join("service.rs")
}

/// Adds the subscriber to the file, or changes nothing and says why.
pub fn add(spec: &AddSpec) -> Result<Added, CliError> {
    let source = std::fs::read_to_string(&spec.file).map_err(|source| CliError::Io {
        action: "read",
        path: spec.file.clone(),
        source,
    })?;
    let (updated, added) = add_to_source(spec, &source)?;
    let temporary = spec.file.with_extension("rs.transport-new");
    std::fs::write(&temporary, updated).map_err(|source| CliError::Io {
        action: "write",
        path: temporary.clone(),
        source,
    })?;
    std::fs::rename(&temporary, &spec.file).map_err(|source| CliError::Io {
        action: "replace",
        path: spec.file.clone(),
        source,
    })?;
    Ok(added)
}

fn parse(path: &Path, source: &str) -> Result<syn::File, CliError> {
    syn::parse_file(source).map_err(|error| {
        let start = error.span().start();
        CliError::Parse {
            path: path.to_path_buf(),
            line: start.line,
            column: start.column + 1,
            message: error.to_string(),
        }
    })
}

/// Whether an attribute is `#[transport::service]` (or `#[service]` imported from it).
fn is_service_attribute(attribute: &syn::Attribute) -> bool {
    let segments: Vec<String> = attribute
        .path()
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    matches!(
        segments.iter().map(String::as_str).collect::<Vec<_>>()[..],
        ["transport", "service"] | ["service"]
    )
}

fn type_text(ty: &Type) -> String {
    ty.to_token_stream().to_string().replace(' ', "")
}

/// The last path segment of a type (`crate::Orders` -> `Orders`).
fn last_segment(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(path) => path.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

/// The same edit, on text: the new source and what was done.
pub fn add_to_source(spec: &AddSpec, source: &str) -> Result<(String, Added), CliError> {
    let path = spec.file.as_path();
    let file = parse(path, source)?;

    // the service impl block
    let services: Vec<&ItemImpl> = file
        .items
        .iter()
        .filter_map(|item| match item {
            Item::Impl(block) if block.attrs.iter().any(is_service_attribute) => Some(block),
            _ => None,
        })
        .collect();
    let names: Vec<String> = services.iter().map(|s| type_text(&s.self_ty)).collect();
    let block = match (&spec.service, services.as_slice()) {
        (_, []) => {
            return Err(CliError::NoService {
                path: path.to_path_buf(),
            });
        }
        (None, [only]) => *only,
        (None, _) => {
            return Err(CliError::AmbiguousService {
                path: path.to_path_buf(),
                services: names,
            });
        }
        (Some(wanted), all) => match all.iter().find(|s| {
            type_text(&s.self_ty) == *wanted || last_segment(&s.self_ty).as_deref() == Some(wanted)
        }) {
            Some(found) => *found,
            None => {
                return Err(CliError::ServiceNotFound {
                    path: path.to_path_buf(),
                    wanted: wanted.clone(),
                    found: names,
                });
            }
        },
    };
    let service = type_text(&block.self_ty);

    // the method must be new to the service (in any of its impl blocks of this file)
    crate::names::method(&spec.name)?;
    for item in file.items.iter().filter_map(|item| match item {
        Item::Impl(other) if type_text(&other.self_ty) == service => Some(other),
        _ => None,
    }) {
        for impl_item in &item.items {
            if let ImplItem::Fn(method) = impl_item
                && method.sig.ident == spec.name
            {
                return Err(CliError::MethodExists {
                    service,
                    method: spec.name.clone(),
                    path: path.to_path_buf(),
                    line: method.sig.ident.span().start().line,
                });
            }
        }
    }

    // the typed topic: reuse the file's constant for it, or declare one
    let fresh = Subscriber::new(
        &spec.name,
        &spec.topic,
        spec.group.as_deref(),
        spec.codec.unwrap_or(Codec::Json),
        spec.payload.as_deref(),
    )?;
    let existing_const = file.items.iter().find_map(|item| match item {
        Item::Const(constant) if constant.ident == fresh.topic_const => Some(constant),
        _ => None,
    });
    let (subscriber, added_topic) = match existing_const {
        None => (fresh, true),
        Some(constant) => (reuse_topic(spec, path, constant, fresh)?, false),
    };
    let payload_declared = file.items.iter().any(|item| match item {
        Item::Struct(s) => s.ident == subscriber.payload,
        Item::Enum(e) => e.ident == subscriber.payload,
        Item::Type(t) => t.ident == subscriber.payload,
        _ => false,
    });
    let added_payload = added_topic && subscriber.defines_payload() && !payload_declared;

    // count handled messages when the service has the generated counter
    let counts = file.items.iter().any(|item| match item {
        Item::Struct(s) if Some(s.ident.to_string()) == last_segment(&block.self_ty) => {
            match &s.fields {
                Fields::Named(fields) => fields.named.iter().any(|f| {
                    f.ident.as_ref().is_some_and(|i| i == "handled")
                        && last_segment(&f.ty).as_deref() == Some("AtomicU64")
                }),
                _ => false,
            }
        }
        _ => false,
    });

    // where things go: the method before the block's closing brace, new items before the
    // block (and its doc comments and attributes)
    let lines = LineIndex::new(source);
    let close = block.brace_token.span.close().start();
    let close_offset = lines.offset(close);
    let before_close = &source[lines.line_start(close.line)..close_offset];
    let method = subscriber.method(counts)?;
    let method_insert = if before_close.trim().is_empty() {
        // the brace starts its line: insert whole lines before it
        (lines.line_start(close.line), format!("\n{method}"))
    } else {
        (close_offset, format!("\n{method}"))
    };
    let block_start = block.attrs.first().map_or_else(
        || block.impl_token.span.start(),
        |a| a.pound_token.span.start(),
    );
    let mut items = String::new();
    if added_payload {
        items.push_str(&subscriber.payload_definition()?);
    }
    if added_topic {
        items.push_str(&subscriber.topic_definition()?);
    }
    let items_insert = (lines.line_start(block_start.line), items);

    let mut updated = source.to_string();
    for (offset, text) in [method_insert, items_insert] {
        // method first: it comes later in the file, so the items' offset stays valid
        updated.insert_str(offset, &text);
    }
    // what is written must still be Rust
    parse(path, &updated)?;
    Ok((
        updated,
        Added {
            file: path.to_path_buf(),
            service,
            subscriber,
            added_topic,
            added_payload,
        },
    ))
}

/// Uses an existing constant for the topic, after checking it is that topic and agrees
/// with the options given.
fn reuse_topic(
    spec: &AddSpec,
    path: &Path,
    constant: &ItemConst,
    fresh: Subscriber,
) -> Result<Subscriber, CliError> {
    let line = constant.ident.span().start().line;
    let names_topic = constant
        .expr
        .to_token_stream()
        .into_iter()
        .flat_map(flatten)
        .any(|token| match token {
            TokenTree::Literal(literal) => syn::parse_str::<syn::LitStr>(&literal.to_string())
                .is_ok_and(|lit| lit.value() == spec.topic),
            _ => false,
        });
    if !names_topic {
        return Err(CliError::ConstantClash {
            constant: fresh.topic_const,
            topic: spec.topic.clone(),
            path: path.to_path_buf(),
            line,
        });
    }
    let declaration = format!("{}: {}", fresh.topic_const, type_text(&constant.ty));
    let disagrees = |option: String| CliError::TopicDisagrees {
        topic: spec.topic.clone(),
        declaration: declaration.clone(),
        option,
        path: path.to_path_buf(),
        line,
    };
    // `Topic<P>` or `Topic<P, C>`
    let arguments = match &*constant.ty {
        Type::Path(ty) => ty.path.segments.last().and_then(|s| match &s.arguments {
            syn::PathArguments::AngleBracketed(args) => Some(
                args.args
                    .iter()
                    .filter_map(|a| match a {
                        syn::GenericArgument::Type(t) => Some(t.clone()),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        }),
        _ => None,
    };
    let Some(arguments) = arguments.filter(|a| !a.is_empty() && a.len() <= 2) else {
        return Err(disagrees(
            "a typed topic (`transport::Topic<Payload, Codec>`)".into(),
        ));
    };
    let payload = type_text(&arguments[0]);
    let codec = match arguments.get(1) {
        None => Codec::Json,
        Some(ty) => last_segment(ty)
            .as_deref()
            .and_then(Codec::from_type_name)
            .ok_or_else(|| disagrees("a built-in codec".into()))?,
    };
    if let Some(wanted) = spec.codec
        && wanted != codec
    {
        return Err(disagrees(format!("--codec {}", wanted.name())));
    }
    if let Some(wanted) = &spec.payload
        && wanted.replace(' ', "") != payload
    {
        return Err(disagrees(format!("--payload {wanted}")));
    }
    Ok(Subscriber {
        codec,
        payload,
        ..fresh
    })
}

fn flatten(token: TokenTree) -> Vec<TokenTree> {
    match token {
        TokenTree::Group(group) => group.stream().into_iter().flat_map(flatten).collect(),
        other => vec![other],
    }
}

/// Byte offsets of line/column positions (1-based lines, columns in characters).
struct LineIndex<'a> {
    source: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(source: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { source, starts }
    }

    fn line_start(&self, line: usize) -> usize {
        self.starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(self.source.len())
    }

    fn offset(&self, position: LineColumn) -> usize {
        let start = self.line_start(position.line);
        let line = &self.source[start..];
        start
            + line
                .char_indices()
                .nth(position.column)
                .map_or(line.len(), |(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, topic: &str) -> AddSpec {
        AddSpec {
            name: name.into(),
            topic: topic.into(),
            group: None,
            codec: None,
            payload: None,
            file: PathBuf::from("src/service.rs"),
            service: None,
        }
    }

    const SERVICE: &str = r#"//! A service.

use std::sync::atomic::{AtomicU64, Ordering};

/// The payload of `orders`.
#[derive(serde::Deserialize)]
pub struct Orders {
    pub id: u64,
}

/// `orders`.
pub const ORDERS: transport::Topic<Orders> = transport::Topic::new("orders");

#[derive(Debug, Default)]
pub struct Billing {
    handled: AtomicU64,
}

/// The subscribers.
#[transport::service]
impl Billing {
    #[subscriber(topic = ORDERS)]
    async fn handle(&self, message: Orders) {
        let _ = message; // a brace in a comment: }
        let _ = "a brace in a string: }";
    }
}

fn helper() {}
"#;

    #[test]
    fn a_subscriber_on_a_new_topic_brings_its_constant_and_payload() {
        let mut spec = spec("on_refund", "refunds");
        spec.group = Some("billing".into());
        let (updated, added) = add_to_source(&spec, SERVICE).unwrap();
        assert!(added.added_topic && added.added_payload);
        assert_eq!(added.service, "Billing");
        // the method sits inside the impl block, after the existing one
        let handle = updated.find("async fn handle").unwrap();
        let method = updated.find("async fn on_refund(").unwrap();
        let helper = updated.find("fn helper()").unwrap();
        assert!(handle < method && method < helper, "{updated}");
        assert!(updated.contains("#[subscriber(topic = REFUNDS, group = \"billing\")]"));
        assert!(
            updated.contains("self.handled"),
            "the counter is kept up: {updated}"
        );
        // the new items come before the impl block's doc comment
        let constant = updated
            .find("pub const REFUNDS: transport::Topic<Refunds> = transport::Topic::new(\"refunds\");")
            .unwrap();
        let payload = updated.find("pub struct Refunds {").unwrap();
        let doc = updated.find("/// The subscribers.").unwrap();
        assert!(payload < constant && constant < doc, "{updated}");
        // and the rest of the file is untouched
        assert!(updated.starts_with(&SERVICE[..SERVICE.find("/// The subscribers.").unwrap()]));
        assert!(updated.ends_with("}\n\nfn helper() {}\n"), "{updated}");
        // adding to the result works again
        let (again, _) = add_to_source(&self::spec("on_return", "returns"), &updated).unwrap();
        assert!(again.contains("async fn on_return("));
    }

    #[test]
    fn a_subscriber_on_a_declared_topic_reuses_its_constant_and_payload() {
        let mut spec = spec("audit", "orders");
        spec.group = Some("audit".into());
        let (updated, added) = add_to_source(&spec, SERVICE).unwrap();
        assert!(!added.added_topic && !added.added_payload);
        assert_eq!(updated.matches("pub const ORDERS").count(), 1);
        assert_eq!(updated.matches("pub struct Orders").count(), 1);
        assert!(updated.contains("message: Orders,"), "{updated}");

        spec.codec = Some(Codec::Msgpack);
        let error = add_to_source(&spec, SERVICE).unwrap_err().to_string();
        assert_eq!(
            error,
            "topic `orders` is declared as `ORDERS: transport::Topic<Orders>` (src/service.rs:12), which disagrees with --codec msgpack"
        );
    }

    #[test]
    fn mistakes_change_nothing_and_say_why() {
        let error = add_to_source(&spec("handle", "refunds"), SERVICE).unwrap_err();
        assert_eq!(
            error.to_string(),
            "`Billing` already has a method `handle` (src/service.rs:23)"
        );
        let error = add_to_source(&spec("on_x", "x"), "fn main() {}\n").unwrap_err();
        assert!(matches!(error, CliError::NoService { .. }), "{error}");
        let error = add_to_source(&spec("on_x", "x"), "fn main( {}\n").unwrap_err();
        assert!(matches!(error, CliError::Parse { line: 1, .. }), "{error}");
        let clash = SERVICE.replace(
            "pub struct Billing",
            "pub const X: &str = \"other\";\npub struct Billing",
        );
        let error = add_to_source(&spec("on_x", "x"), &clash).unwrap_err();
        assert!(matches!(error, CliError::ConstantClash { .. }), "{error}");
        let untyped = clash.replace("\"other\"", "\"x\"");
        let error = add_to_source(&spec("on_x", "x"), &untyped).unwrap_err();
        assert!(
            error.to_string().ends_with(
                "which disagrees with a typed topic (`transport::Topic<Payload, Codec>`)"
            ),
            "{error}"
        );
        let error = add_to_source(&spec("On", "x"), SERVICE).unwrap_err();
        assert!(error.to_string().contains("snake_case"), "{error}");
        let two = format!("{SERVICE}\n#[transport::service]\nimpl Other {{}}\n");
        let error = add_to_source(&spec("on_x", "x"), &two).unwrap_err();
        assert_eq!(
            error.to_string(),
            "src/service.rs has several services (Billing, Other): choose one with --service"
        );
        let mut chosen = spec("on_x", "x");
        chosen.service = Some("Other".into());
        let (updated, added) = add_to_source(&chosen, &two).unwrap();
        assert_eq!(added.service, "Other");
        // `Other` has no counter, so the method does not count
        let method = &updated[updated.find("async fn on_x").unwrap()..];
        assert!(!method.contains("handled"), "{updated}");
    }
}
