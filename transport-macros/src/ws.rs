//! `#[ws(message = CONST)]` methods of a `#[transport::service]` impl: WebSocket message
//! handlers. Parsed and checked here (every problem on the user's token); the expansion
//! is one `WsHandlers<State>` impl registering them all on a `WsServerBuilder`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Expr, FnArg, GenericArgument, Ident, MetaNameValue, PathArguments, Signature, Token, Type,
};

use crate::args::Errors;

/// Whether `path` is the `#[ws]` attribute.
pub fn is_ws_attr(path: &syn::Path) -> bool {
    path.is_ident("ws")
}

/// A checked `#[ws]` method.
pub struct WsHandler {
    pub ident: Ident,
    pub message: Expr,
    pub payload: Type,
    pub session: Type,
    /// The `S` of `Session<S>`.
    pub state: Type,
}

/// The `message = CONST` of `#[ws(...)]`.
pub fn parse_args(tokens: TokenStream, span: Span, errors: &mut Errors) -> Option<Expr> {
    let pairs = match Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(tokens) {
        Ok(pairs) => pairs,
        Err(error) => {
            errors.push(error);
            return None;
        }
    };
    let mut message = None;
    for pair in pairs {
        if pair.path.is_ident("message") {
            if message.is_some() {
                errors.spanned(pair.path.span(), "`message` is given twice");
            }
            message = Some(pair.value);
        } else {
            errors.spanned(
                pair.path.span(),
                "unknown key: `#[ws]` takes `message = CONST` (a `transport::ws::WsMessage` constant)",
            );
        }
    }
    if message.is_none() {
        errors.spanned(
            span,
            "`#[ws]` needs the message it handles: `#[ws(message = CHAT)]`, where `const CHAT: transport::ws::WsMessage<Chat> = transport::ws::WsMessage::new(1);`",
        );
    }
    message
}

/// Checks a `#[ws]` method's signature: `async fn name(&self, payload: T, session: Session<S>)`.
pub fn check(sig: &Signature, message: Expr, errors: &mut Errors) -> Option<WsHandler> {
    let before = errors.is_empty();
    if sig.asyncness.is_none() {
        errors.spanned(
            sig.fn_token.span(),
            "a `#[ws]` handler must be an `async fn`: write `async fn`",
        );
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.spanned(
            sig.generics.span(),
            "a `#[ws]` handler cannot be generic: its payload type is the message constant's",
        );
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver)) => {
            if !matches!(receiver.kind, syn::ReceiverKind::Reference(_, _, None)) {
                errors.spanned(
                    receiver.span(),
                    "a `#[ws]` method takes `&self` (sessions are handled at once on one shared instance)",
                );
            }
        }
        _ => errors.spanned(
            sig.ident.span(),
            "a `#[ws]` method takes `&self` first: `async fn name(&self, payload: T, session: Session<S>)`",
        ),
    }
    let typed: Vec<&syn::PatType> = inputs
        .filter_map(|input| match input {
            FnArg::Typed(typed) => Some(typed),
            FnArg::Receiver(_) => None,
        })
        .collect();
    if typed.len() != 2 {
        errors.spanned(
            sig.inputs.span(),
            format!(
                "a `#[ws]` handler takes the payload and the session: `(&self, payload: T, session: Session<S>)` ({} argument{} after `&self` here)",
                typed.len(),
                if typed.len() == 1 { "" } else { "s" }
            ),
        );
        return None;
    }
    let payload = (*typed[0].ty).clone();
    if let Type::Reference(reference) = &payload {
        errors.spanned(
            reference.and_token.span(),
            "the payload is taken by value (it is decoded for this call): remove the `&`",
        );
    }
    let session = (*typed[1].ty).clone();
    let state = session_state(&session);
    if state.is_none() {
        errors.spanned(
            session.span(),
            "the second argument is the session: `transport::ws::Session<S>`, `S` being the server's per-session state",
        );
    }
    if !before || !errors.is_empty() {
        return None;
    }
    Some(WsHandler {
        ident: sig.ident.clone(),
        message,
        payload,
        session,
        state: state?,
    })
}

/// The `S` of a `Session<S>` type as written (`Session<S>`, `ws::Session<S>`, ...).
fn session_state(ty: &Type) -> Option<Type> {
    let Type::Path(path) = ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    if last.ident != "Session" {
        return None;
    }
    let PathArguments::AngleBracketed(arguments) = &last.arguments else {
        return None;
    };
    match arguments.args.iter().collect::<Vec<_>>().as_slice() {
        [GenericArgument::Type(state)] => Some(state.clone()),
        _ => None,
    }
}

/// One state type for every handler of the service (the server's).
pub fn check_one_state(handlers: &[WsHandler], errors: &mut Errors) {
    let Some(first) = handlers.first() else {
        return;
    };
    let first_state = &first.state;
    let expected_text = quote!(#first_state).to_string();
    for handler in &handlers[1..] {
        let state = &handler.state;
        if quote!(#state).to_string() != expected_text {
            errors.spanned(
                state.span(),
                format!(
                    "every `#[ws]` handler of a service serves one server, whose sessions hold one state type: `{expected_text}` above, not this"
                ),
            );
        }
    }
}

/// `impl WsHandlers<State> for Service`, registering every handler.
pub fn expand(self_ty: &Type, handlers: &[WsHandler]) -> TokenStream {
    let Some(first) = handlers.first() else {
        return TokenStream::new();
    };
    let state = &first.state;
    let registrations = handlers.iter().map(|handler| {
        let WsHandler {
            ident,
            message,
            payload,
            session,
            ..
        } = handler;
        let name = quote!(#message).to_string().replace(' ', "");
        let check = payload_check(&name, message, payload);
        quote! {
            #check
            let builder = {
                let this = ::std::sync::Arc::clone(&self);
                // registered with the method's own payload type: a mismatch with the
                // constant is the check's one error, on the payload type
                ::transport::__private::ws_handle::<#payload, _, _, _, _, _>(
                    builder,
                    #message,
                    move |payload: #payload, session: #session| {
                        let this = ::std::sync::Arc::clone(&this);
                        async move { this.#ident(payload, session).await }
                    },
                )
            };
        }
    });
    quote! {
        impl ::transport::ws::WsHandlers<#state> for #self_ty {
            fn register(
                self: ::std::sync::Arc<Self>,
                builder: ::transport::ws::WsServerBuilder<#state>,
            ) -> ::transport::ws::WsServerBuilder<#state> {
                #(#registrations)*
                builder
            }
        }
    }
}

/// Checks that the method's payload type is the one `message` carries, reported on the
/// payload type in the manner of the typed-topic check.
fn payload_check(name: &str, message: &Expr, payload: &Type) -> TokenStream {
    let text = format!("the payload type `{{P}}` does not match WebSocket message `{name}`");
    let label = format!("this takes `{{P}}` from `message = {name}`");
    let note = format!(
        "`{name}` is a `{{Self}}`: take its payload type, or handle a `transport::ws::WsMessage<{{P}}>`"
    );
    quote_spanned! {payload.span()=>
        {
            #[diagnostic::on_unimplemented(message = #text, label = #label, note = #note)]
            trait __WsCarries<P> {}
            impl<T, C> __WsCarries<T> for ::transport::ws::WsMessage<T, C> {}
            fn __check<P, M: __WsCarries<P>>(_: &M) {}
            __check::<#payload, _>(&#message);
        }
    }
}
