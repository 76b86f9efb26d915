//! Secrets out of what people read: the userinfo of broker URLs, for errors, logs and
//! `Debug` output.

/// `url` with the password (or token) of its userinfo replaced by `***`, for errors,
/// logs and `Debug` output: `redis://:hunter2@host:6379` -> `redis://:***@host:6379`,
/// `nats://token@host` -> `nats://***@host`.
///
/// ```
/// use transport::config::redact_url;
/// assert_eq!(redact_url("redis://user:hunter2@db:6379/0"), "redis://user:***@db:6379/0");
/// assert_eq!(redact_url("nats://s3cret@127.0.0.1"), "nats://***@127.0.0.1");
/// assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
/// ```
pub fn redact_url(url: &str) -> String {
    // several URLs may be listed, comma-separated (NATS)
    url.split(',')
        .map(|one| match split_userinfo(one) {
            (scheme, Some(userinfo), host) => match userinfo.split_once(':') {
                Some((user, _password)) => format!("{scheme}{user}:***@{host}"),
                None => format!("{scheme}***@{host}"),
            },
            (_, None, _) => one.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// One URL as `(scheme://, userinfo, the rest after its '@')`. A password may hold `/`,
/// `?` or `#` unescaped, so the userinfo ends at the last `@` before the first `/`, `?`
/// or `#` that follows an `@` (a URL with an `@` only in its query is then taken as
/// having userinfo: over-redacted, never leaked).
pub(crate) fn split_userinfo(url: &str) -> (&str, Option<&str>, &str) {
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    };
    let Some(first_at) = rest.find('@') else {
        return (scheme, None, rest);
    };
    let end = rest[first_at..]
        .find(['/', '?', '#'])
        .map_or(rest.len(), |i| first_at + i);
    match rest[..end].rfind('@') {
        Some(at) => (scheme, Some(&rest[..at]), &rest[at + 1..]),
        None => (scheme, None, rest),
    }
}
