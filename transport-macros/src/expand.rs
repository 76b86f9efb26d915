//! Generating the glue: decode with the codec, call the handler, map the outcome, and
//! register a static description through `inventory`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, ItemFn, Path, Type};

use crate::args::{self, CodecArg, Errors, SubscriberArgs, TopicArg};
use crate::signature::{self, ContextParam, Handler, Place};

/// A checked subscriber, ready to expand.
pub struct Subscriber<'a> {
    pub args: SubscriberArgs,
    pub handler: Handler,
    pub ident: &'a Ident,
    /// The service type, for methods.
    pub service: Option<&'a Type>,
}

/// `#[transport::subscriber]` on a free function.
pub fn free_function(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr_span = attr_span(&attr);
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(_) => {
            let error = syn::Error::new(
                Span::call_site(),
                "`#[subscriber]` goes on an `async fn` (or, inside a `#[transport::service]` impl block, on an `async fn` method)",
            );
            let error = error.to_compile_error();
            return quote!(#error #item);
        }
    };
    let mut errors = Errors::default();
    let parsed = args::parse(attr, attr_span, &mut errors);
    let handler = signature::check(&function.sig, Place::Free, &mut errors);
    for attr in &function.attrs {
        if is_subscriber_attr(attr.path()) {
            errors.spanned(
                attr.path().span(),
                "a function takes one `#[subscriber]`; to consume several topics, write one handler per topic",
            );
        }
    }
    let (Some(parsed), Some(handler), true) = (parsed, handler, errors.is_empty()) else {
        let errors = errors.to_compile_errors();
        return quote!(#errors #function);
    };
    let subscriber = Subscriber {
        args: parsed,
        handler,
        ident: &function.sig.ident,
        service: None,
    };
    let idents = GlueIdents::new(&function.sig.ident);
    let bind_fn = bind_function(&subscriber, &idents.bind);
    let schema_fns = schema_functions(&subscriber, &idents);
    let registration = registration(&subscriber, &idents, |ident| quote!(#ident));
    quote! {
        #function
        const _: () = {
            #bind_fn
            #schema_fns
            #registration
        };
    }
}

/// The names of the hidden functions generated for one handler.
pub struct GlueIdents {
    /// `fn(&Instances) -> Option<HandlerFn>`.
    pub bind: Ident,
    /// The payload type's schema function.
    pub payload_schema: Ident,
    /// The reply type's schema function.
    pub reply_schema: Ident,
}

impl GlueIdents {
    pub fn new(handler: &Ident) -> Self {
        GlueIdents {
            bind: format_ident!("__transport_bind_{}", handler),
            payload_schema: format_ident!("__transport_payload_schema_{}", handler),
            reply_schema: format_ident!("__transport_reply_schema_{}", handler),
        }
    }
}

/// Whether an attribute path names `subscriber` (`subscriber`, `transport::subscriber`).
pub fn is_subscriber_attr(path: &Path) -> bool {
    path.segments
        .last()
        .is_some_and(|s| s.ident == "subscriber")
}

/// Where errors about the attribute as a whole go: its arguments, or the call site.
pub fn attr_span(attr: &TokenStream) -> Span {
    if attr.is_empty() {
        Span::call_site()
    } else {
        attr.span()
    }
}

fn builtin_codec_type(name: &str) -> TokenStream {
    match name {
        "msgpack" => quote!(::transport::__private::MsgPack),
        "protobuf" => quote!(::transport::__private::Protobuf),
        "text" => quote!(::transport::__private::Text),
        "bytes" => quote!(::transport::__private::RawBytes),
        _ => quote!(::transport::__private::Json),
    }
}

fn builtin_payload_trait(name: &str) -> TokenStream {
    match name {
        "msgpack" => quote!(::transport::__private::MsgPackPayload),
        "protobuf" => quote!(::transport::__private::ProtobufPayload),
        "text" => quote!(::transport::__private::TextPayload),
        "bytes" => quote!(::transport::__private::BytesPayload),
        _ => quote!(::transport::__private::JsonPayload),
    }
}

fn codec_content_type(codec: TokenStream) -> TokenStream {
    quote!(<#codec as ::transport::__private::Codec>::CONTENT_TYPE)
}

fn path_string(path: &Path) -> String {
    quote!(#path).to_string().replace(' ', "")
}

/// The hidden `fn(&Instances) -> Option<HandlerFn>` that binds the handler.
pub fn bind_function(sub: &Subscriber<'_>, bind_ident: &Ident) -> TokenStream {
    let payload = &sub.handler.payload;
    let payload_span = payload.span();
    let output = &sub.handler.output;
    let output_span = output.span();
    let ident = sub.ident;

    let decode = match (&sub.args.codec, &sub.args.topic) {
        (Some(CodecArg::Builtin(name)), _) => {
            let check = builtin_payload_trait(&name.value());
            quote_spanned!(payload_span=> <#payload as #check>::decode_payload(__ctx.payload()))
        }
        (Some(CodecArg::Custom(codec)), _) => quote_spanned!(payload_span=>
            <#codec as ::transport::__private::Decoder<#payload>>::decode(__ctx.payload())
        ),
        (None, TopicArg::Const(topic)) => quote_spanned!(payload_span=>
            ::transport::__private::decode_with_topic_codec::<#payload, _>(&#topic, __ctx.payload())
        ),
        (None, TopicArg::Name(_)) => quote_spanned!(payload_span=>
            <#payload as ::transport::__private::JsonPayload>::decode_payload(__ctx.payload())
        ),
    };

    let mut checks = TokenStream::new();
    if let TopicArg::Const(topic) = &sub.args.topic {
        checks.extend(topic_payload_check(topic, payload, "topic"));
        if let Some(codec) = &sub.args.codec {
            checks.extend(topic_codec_check(topic, codec));
        }
    }

    let call_args = match sub.handler.context {
        ContextParam::None => quote!(__payload),
        ContextParam::AfterPayload => quote!(__payload, &__ctx),
        ContextParam::BeforePayload => quote!(&__ctx, __payload),
    };
    let call = match sub.service {
        Some(_) => quote!(__service.#ident(#call_args).await),
        None => quote!(#ident(#call_args).await),
    };

    let outcome = match &sub.args.reply {
        None => quote_spanned!(output_span=>
            <#output as ::transport::__private::HandlerReturn>::into_outcome(__result)
        ),
        Some(reply) => {
            let publish = match reply {
                TopicArg::Name(name) => {
                    let codec = match &sub.args.codec {
                        Some(CodecArg::Builtin(name)) => builtin_codec_type(&name.value()),
                        Some(CodecArg::Custom(path)) => quote!(#path),
                        None => builtin_codec_type("json"),
                    };
                    quote_spanned!(output_span=>
                        ::transport::__private::reply_with::<#codec, _>(&__ctx, #name, &__value).await
                    )
                }
                TopicArg::Const(topic) => {
                    let value_ty: Type = syn::parse_quote_spanned!(output_span=>
                        <#output as ::transport::__private::ReplyReturn>::Value
                    );
                    checks.extend(topic_payload_check(topic, &value_ty, "reply"));
                    quote_spanned!(output_span=>
                        ::transport::__private::reply_to_topic(&__ctx, &#topic, &__value).await
                    )
                }
            };
            quote_spanned!(output_span=>
                match <#output as ::transport::__private::ReplyReturn>::into_reply(__result) {
                    ::core::result::Result::Ok(__value) => #publish,
                    ::core::result::Result::Err(__error) => ::transport::__private::Outcome::Failed(__error),
                }
            )
        }
    };

    let glue = quote! {
        async move {
            let __payload: #payload = match #decode {
                ::core::result::Result::Ok(__value) => __value,
                ::core::result::Result::Err(__error) => {
                    return ::transport::__private::Outcome::Undecodable(__error);
                }
            };
            let __result = #call;
            #outcome
        }
    };
    let body = match sub.service {
        Some(_) => quote! {
            let __service = __instances.get::<Self>()?;
            ::core::option::Option::Some(::transport::__private::handler(
                move |__ctx: ::transport::__private::Context| {
                    let __service = ::std::sync::Arc::clone(&__service);
                    #glue
                },
            ))
        },
        None => quote! {
            let _ = __instances;
            ::core::option::Option::Some(::transport::__private::handler(
                move |__ctx: ::transport::__private::Context| #glue,
            ))
        },
    };
    quote! {
        #[doc(hidden)]
        #[allow(non_snake_case, clippy::all)]
        fn #bind_ident(
            __instances: &::transport::__private::Instances,
        ) -> ::core::option::Option<::transport::__private::HandlerFn> {
            #checks
            #body
        }
    }
}

/// The hidden schema functions of the payload and reply types: `Some` JSON schema when the
/// type implements `schemars::JsonSchema`, `None` otherwise (chosen by auto-ref, so any
/// type compiles).
pub fn schema_functions(sub: &Subscriber<'_>, idents: &GlueIdents) -> TokenStream {
    let payload = &sub.handler.payload;
    let payload_fn = schema_function(&idents.payload_schema, Some(quote!(#payload)));
    let reply_ty = sub.args.reply.as_ref().map(|_| {
        let output = &sub.handler.output;
        match signature::ok_type(output) {
            Some(ty) => quote!(#ty),
            None => quote!(<#output as ::transport::__private::ReplyReturn>::Value),
        }
    });
    let reply_fn = schema_function(&idents.reply_schema, reply_ty);
    quote!(#payload_fn #reply_fn)
}

fn schema_function(ident: &Ident, ty: Option<TokenStream>) -> TokenStream {
    let body = match ty {
        Some(ty) => quote! {
            #[allow(unused_imports)]
            use ::transport::__private::{WithSchema as _, WithoutSchema as _};
            (&::transport::__private::SchemaProbe::<#ty>::new()).schema(__generator)
        },
        None => quote! {
            ::transport::__private::no_schema(__generator)
        },
    };
    quote! {
        #[doc(hidden)]
        #[allow(non_snake_case, clippy::all)]
        fn #ident(
            __generator: &mut ::transport::__private::schemars::SchemaGenerator,
        ) -> ::core::option::Option<::transport::__private::schemars::Schema> {
            #body
        }
    }
}

/// Checks that `topic` is a `Topic<ty, _>`; the error names the constant and both types.
fn topic_payload_check(topic: &Path, ty: &Type, key: &str) -> TokenStream {
    let name = path_string(topic);
    let span = ty.span();
    let (message, label, note) = if key == "reply" {
        (
            format!("the reply type `{{P}}` does not match reply topic `{name}`"),
            format!("this returns `{{P}}` for `reply = {name}`"),
            format!(
                "`{name}` is a `{{Self}}`: return its payload type, or reply to a topic that carries `{{P}}`"
            ),
        )
    } else {
        (
            format!("the payload type `{{P}}` does not match topic `{name}`"),
            format!("this takes `{{P}}` from `topic = {name}`"),
            format!(
                "`{name}` is a `{{Self}}`: take its payload type, or subscribe to a `transport::Topic<{{P}}>`"
            ),
        )
    };
    quote_spanned! {span=>
        {
            #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
            trait __TopicCarries<P> {}
            impl<T, C> __TopicCarries<T> for ::transport::__private::Topic<T, C> {}
            fn __check<P, Tp: __TopicCarries<P>>(_: &Tp) {}
            __check::<#ty, _>(&#topic);
        }
    }
}

/// Checks that `codec = ...` agrees with the codec `topic` declares.
fn topic_codec_check(topic: &Path, codec: &CodecArg) -> TokenStream {
    let name = path_string(topic);
    let (codec_ty, written, span) = match codec {
        CodecArg::Builtin(lit) => (
            builtin_codec_type(&lit.value()),
            format!("codec = \"{}\"", lit.value()),
            lit.span(),
        ),
        CodecArg::Custom(path) => (
            quote!(#path),
            format!("codec = {}", path_string(path)),
            path.span(),
        ),
    };
    let message = format!("`{written}` disagrees with the codec of topic `{name}`");
    let label = format!("`{name}` declares another codec");
    let note = format!(
        "`{name}` is a `{{Self}}`: leave `codec` out to use the topic's codec, or make them agree"
    );
    quote_spanned! {span=>
        {
            #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
            trait __TopicCodecIs<C> {}
            impl<T, C> __TopicCodecIs<C> for ::transport::__private::Topic<T, C> {}
            fn __check_codec<C, Tp: __TopicCodecIs<C>>(_: &Tp) {}
            __check_codec::<#codec_ty, _>(&#topic);
        }
    }
}

/// The `inventory::submit!` of the static description; `path` turns the name of a hidden
/// function from [`GlueIdents`] into a path reaching it.
pub fn registration(
    sub: &Subscriber<'_>,
    idents: &GlueIdents,
    path: impl Fn(&Ident) -> TokenStream,
) -> TokenStream {
    let ident = sub.ident;
    let bind = path(&idents.bind);
    let payload_schema = path(&idents.payload_schema);
    let reply_schema = path(&idents.reply_schema);
    let (name, service) = match sub.service {
        Some(ty) => {
            let type_name = quote!(#ty).to_string().replace(' ', "");
            (
                format!("{type_name}::{ident}"),
                quote!(::core::option::Option::Some(::transport::__private::ServiceInfo {
                    type_name: #type_name,
                    type_id: ::transport::__private::type_id::<#ty>,
                })),
            )
        }
        None => (ident.to_string(), quote!(::core::option::Option::None)),
    };
    // A typed topic is read once, into a const: a path that is not a `Topic` then gets
    // one diagnostic, not one per field.
    let mut topic_infos = TokenStream::new();
    let mut topic_info = |path: &Path, which: &str| {
        let info = format_ident!("__TRANSPORT_{}_{}", which, ident);
        topic_infos.extend(quote_spanned! {path.span()=>
            #[allow(non_upper_case_globals)]
            const #info: ::transport::__private::TopicInfo =
                ::transport::__private::TopicInfo::of(&#path);
        });
        info
    };
    let (topic, topic_const, topic_codec, topic_content_type) = match &sub.args.topic {
        TopicArg::Name(lit) => (
            quote!(#lit),
            quote!(::core::option::Option::None),
            quote!("json"),
            codec_content_type(builtin_codec_type("json")),
        ),
        TopicArg::Const(path) => {
            let text = path_string(path);
            let info = topic_info(path, "TOPIC");
            (
                quote!(#info.name),
                quote!(::core::option::Option::Some(#text)),
                quote!(#info.codec),
                quote!(#info.content_type),
            )
        }
    };
    let mqtt_filter = sub.args.mqtt_filter;
    let group = match &sub.args.group {
        Some(lit) => quote!(::core::option::Option::Some(#lit)),
        None => quote!(::core::option::Option::None),
    };
    let (codec, content_type) = match &sub.args.codec {
        Some(CodecArg::Builtin(lit)) => (
            quote!(#lit),
            codec_content_type(builtin_codec_type(&lit.value())),
        ),
        Some(CodecArg::Custom(path)) => (
            quote!(<#path as ::transport::__private::Codec>::NAME),
            codec_content_type(quote!(#path)),
        ),
        // the topic's codec: json for a topic name
        None => (topic_codec, topic_content_type),
    };
    let payload = &sub.handler.payload;
    let payload_type = quote!(#payload).to_string();
    let (reply, reply_type, reply_content_type) = match &sub.args.reply {
        None => (
            quote!(::core::option::Option::None),
            quote!(::core::option::Option::None),
            quote!(::core::option::Option::None),
        ),
        Some(reply) => {
            // the codec the bind function publishes the reply with
            let (topic, content_type) = match reply {
                TopicArg::Name(lit) => {
                    let codec = match &sub.args.codec {
                        Some(CodecArg::Builtin(name)) => builtin_codec_type(&name.value()),
                        Some(CodecArg::Custom(path)) => quote!(#path),
                        None => builtin_codec_type("json"),
                    };
                    (quote!(#lit), codec_content_type(codec))
                }
                TopicArg::Const(path) => {
                    let info = topic_info(path, "REPLY");
                    (quote!(#info.name), quote!(#info.content_type))
                }
            };
            let output = &sub.handler.output;
            let ty = signature::ok_type(output)
                .map(|ty| quote!(#ty).to_string())
                .unwrap_or_else(|| quote!(#output).to_string());
            (
                quote!(::core::option::Option::Some(#topic)),
                quote!(::core::option::Option::Some(#ty)),
                quote!(::core::option::Option::Some(#content_type)),
            )
        }
    };
    let line = quote_spanned!(ident.span()=> ::core::line!());
    quote! {
        #topic_infos
        ::transport::__private::inventory::submit! {
            ::transport::__private::Registration {
                name: #name,
                service: #service,
                topic: #topic,
                mqtt_filter: #mqtt_filter,
                topic_const: #topic_const,
                group: #group,
                codec: #codec,
                payload_type: #payload_type,
                content_type: #content_type,
                payload_schema: #payload_schema,
                reply: #reply,
                reply_type: #reply_type,
                reply_content_type: #reply_content_type,
                reply_schema: #reply_schema,
                file: ::core::file!(),
                line: #line,
                module_path: ::core::module_path!(),
                crate_version: ::core::option_env!("CARGO_PKG_VERSION"),
                bind: #bind,
            }
        }
    }
}
