//! `#[transport::service]`: finds the `#[subscriber]` methods of an inherent impl block,
//! checks them all, and generates their glue next to the untouched block.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::spanned::Spanned;
use syn::{ImplItem, Item, ItemImpl};

use crate::args::{self, Errors};
use crate::expand::{self, GlueIdents, Subscriber};
use crate::signature::{self, Place};
use crate::ws;

pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    if !attr.is_empty() {
        errors.spanned(attr.span(), "`#[transport::service]` takes no arguments");
    }
    let mut block: ItemImpl = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Impl(block)) => block,
        Ok(other) => {
            errors.spanned(
                item_keyword_span(&other),
                "`#[transport::service]` goes on an inherent `impl` block: `#[transport::service] impl MyService { ... }`",
            );
            let errors = errors.to_compile_errors();
            return quote!(#errors #item);
        }
        Err(error) => {
            errors.push(error);
            let errors = errors.to_compile_errors();
            return quote!(#errors #item);
        }
    };
    if let Some((trait_path, _)) = &block.trait_ {
        errors.spanned(
            trait_path.span(),
            "`#[transport::service]` goes on an inherent `impl` block, not a trait impl: move the subscriber methods into `impl Type { ... }`",
        );
    }
    if !block.generics.params.is_empty() {
        errors.spanned(
            block.generics.params.span(),
            "a `#[transport::service]` impl cannot be generic: the App looks services up by their concrete type",
        );
    }

    let self_ty = (*block.self_ty).clone();
    let mut subscribers = Vec::new();
    let mut ws_handlers = Vec::new();
    for impl_item in &mut block.items {
        let ImplItem::Fn(method) = impl_item else {
            continue;
        };
        let mut attrs = Vec::new();
        let mut ws_attrs = Vec::new();
        method.attrs.retain(|attr| {
            if expand::is_subscriber_attr(attr.path()) {
                attrs.push(attr.clone());
                false
            } else if ws::is_ws_attr(attr.path()) {
                ws_attrs.push(attr.clone());
                false
            } else {
                true
            }
        });
        if let Some(first) = ws_attrs.first() {
            for extra in ws_attrs[1..].iter().chain(&attrs) {
                errors.spanned(
                    extra.path().span(),
                    "a `#[ws]` method handles one WebSocket message and nothing else: write one method per message",
                );
            }
            let (tokens, span) = match &first.meta {
                syn::Meta::List(list) if !list.tokens.is_empty() => {
                    (list.tokens.clone(), list.tokens.span())
                }
                other => (TokenStream::new(), other.path().span()),
            };
            let message = ws::parse_args(tokens, span, &mut errors);
            if let Some(message) = message
                && let Some(handler) = ws::check(&method.sig, message, &mut errors)
            {
                ws_handlers.push(handler);
            }
            continue;
        }
        let Some(first) = attrs.first() else {
            continue;
        };
        for extra in &attrs[1..] {
            errors.spanned(
                extra.path().span(),
                "a method takes one `#[subscriber]`; to consume several topics, write one method per topic",
            );
        }
        let (tokens, span) = match &first.meta {
            syn::Meta::List(list) => (list.tokens.clone(), list.tokens.span()),
            other => (TokenStream::new(), other.path().span()),
        };
        let span = if tokens.is_empty() {
            first.path().span()
        } else {
            span
        };
        let parsed = args::parse(tokens, span, &mut errors);
        let handler = signature::check(&method.sig, Place::Method, &mut errors);
        if let (Some(parsed), Some(handler)) = (parsed, handler) {
            subscribers.push((method.sig.ident.clone(), parsed, handler));
        }
    }

    ws::check_one_state(&ws_handlers, &mut errors);
    if !errors.is_empty() {
        let errors = errors.to_compile_errors();
        return quote!(#errors #block);
    }
    let ws_impl = ws::expand(&self_ty, &ws_handlers);

    let mut bind_fns = TokenStream::new();
    let mut registrations = TokenStream::new();
    for (ident, parsed, handler) in subscribers {
        let sub = Subscriber {
            args: parsed,
            handler,
            ident: &ident,
            service: Some(&self_ty),
        };
        let idents = GlueIdents::new(&ident);
        bind_fns.extend(expand::bind_function(&sub, &idents.bind));
        bind_fns.extend(expand::schema_functions(&sub, &idents));
        registrations.extend(expand::registration(
            &sub,
            &idents,
            |hidden| quote!(<#self_ty>::#hidden),
        ));
    }
    quote! {
        #block
        impl #self_ty {
            #bind_fns
        }
        const _: () = {
            #registrations
        };
        #ws_impl
    }
}

fn item_keyword_span(item: &Item) -> Span {
    match item {
        Item::Fn(f) => f.sig.fn_token.span(),
        Item::Struct(s) => s.struct_token.span(),
        Item::Enum(e) => e.enum_token.span(),
        Item::Trait(t) => t.trait_token.span(),
        Item::Mod(m) => m.mod_token.span(),
        other => other.span(),
    }
}
