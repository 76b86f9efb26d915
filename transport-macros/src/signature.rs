//! Checking a handler's signature: `async`, receiver, one payload, optional `&Context`,
//! no generics.

use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, PathArguments, ReturnType, Signature, Type};

use crate::args::Errors;

/// Where the handler lives.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A free function.
    Free,
    /// A method of a `#[transport::service]` impl.
    Method,
}

/// What the glue needs to know about a checked handler.
pub struct Handler {
    pub payload: Type,
    /// Whether `&Context` is taken, and its position relative to the payload.
    pub context: ContextParam,
    /// The return type, `()` when absent.
    pub output: Type,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ContextParam {
    None,
    AfterPayload,
    BeforePayload,
}

/// Checks `sig`; reports every problem found into `errors`.
pub fn check(sig: &Signature, place: Place, errors: &mut Errors) -> Option<Handler> {
    let before = errors.is_empty();
    if sig.asyncness.is_none() {
        errors.spanned(
            sig.fn_token.span(),
            "a subscriber must be an `async fn`: write `async fn`",
        );
    }
    if let Some(constness) = &sig.constness {
        errors.spanned(constness.span(), "a subscriber cannot be a `const fn`");
    }
    if let syn::Safety::Unsafe(unsafety) = &sig.safety {
        errors.spanned(unsafety.span(), "a subscriber cannot be an `unsafe fn`");
    }
    if let Some(abi) = &sig.abi {
        errors.spanned(abi.span(), "a subscriber cannot declare an ABI");
    }
    if let Some(variadic) = &sig.variadic {
        errors.spanned(variadic.span(), "a subscriber cannot be variadic");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let span = if sig.generics.params.is_empty() {
            sig.generics.where_clause.span()
        } else {
            sig.generics.params.span()
        };
        errors.spanned(
            span,
            "a subscriber cannot be generic: the payload type must be concrete so the codec can decode it",
        );
    }

    let mut payload: Option<Type> = None;
    let mut context = ContextParam::None;
    let mut receiver_seen = false;
    // A payload parameter already reported as wrong is not also reported as missing.
    let mut payload_reported = false;
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => {
                receiver_seen = true;
                if place == Place::Free {
                    errors.spanned(
                        receiver.span(),
                        "`#[subscriber]` on a method needs `#[transport::service]` on its `impl` block",
                    );
                } else if !matches!(receiver.kind, syn::ReceiverKind::Reference(_, _, None)) {
                    errors.spanned(
                        receiver.span(),
                        "a subscriber method must take `&self`: handlers of one service run concurrently on a shared instance (use interior mutability for state)",
                    );
                }
            }
            FnArg::Typed(param) => {
                let ty = &*param.ty;
                if is_context(ty) {
                    if !matches!(ty, Type::Reference(r) if r.mutability.is_none()) {
                        errors.spanned(
                            ty.span(),
                            "take the context by shared reference: `ctx: &Context`",
                        );
                    } else if context != ContextParam::None {
                        errors.spanned(ty.span(), "a subscriber takes `&Context` at most once");
                    } else {
                        context = if payload.is_some() {
                            ContextParam::AfterPayload
                        } else {
                            ContextParam::BeforePayload
                        };
                    }
                    continue;
                }
                if let Type::Reference(reference) = ty {
                    errors.spanned(
                        reference.span(),
                        "the payload is passed by value: remove the `&` (the decoded value is owned by the handler)",
                    );
                    payload_reported = true;
                    continue;
                }
                if payload.is_some() {
                    errors.spanned(
                        param.span(),
                        "a subscriber takes one payload parameter (plus an optional `&Context`); put several values in one payload type",
                    );
                    continue;
                }
                payload = Some(ty.clone());
            }
        }
    }
    if place == Place::Method && !receiver_seen {
        errors.spanned(
            sig.ident.span(),
            "a subscriber method must take `&self`; for an associated function without `self`, use a free `async fn` with `#[transport::subscriber]`",
        );
    }
    if payload.is_none() && !payload_reported {
        errors.spanned(
            sig.paren_token.span.join(),
            "a subscriber needs a payload parameter, e.g. `report: Report` (plus an optional `ctx: &Context`)",
        );
    }

    let output = match &sig.output {
        ReturnType::Default => syn::parse_quote_spanned!(sig.paren_token.span.close()=> ()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    if !before || !errors.is_empty() {
        return None;
    }
    Some(Handler {
        payload: payload?,
        context,
        output,
    })
}

/// `&Context`, `&transport::Context`, `&mut Context`, `Context`: the last segment decides.
fn is_context(ty: &Type) -> bool {
    let ty = match ty {
        Type::Reference(reference) => &*reference.elem,
        other => other,
    };
    match ty {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "Context" && s.arguments.is_none()),
        _ => false,
    }
}

/// The `T` of `Result<T, E>` when written so; for registrations.
pub fn ok_type(output: &Type) -> Option<&Type> {
    let Type::Path(path) = output else {
        return None;
    };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    }
}
