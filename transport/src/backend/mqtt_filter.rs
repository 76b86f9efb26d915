//! MQTT topic filters (`#[subscriber(mqtt_filter = "/hfp/v2/+/bus/#")]`): their syntax,
//! and matching a topic against one. The mqtt backend hands filters to the broker; the
//! in-process broker matches them itself, so a service using one runs on either.
//!
//! A filter names a foreign MQTT topic tree as it is: levels separated by `/` (a leading
//! `/` is an empty first level), `+` one whole level, `#` the whole rest (last level
//! only). A topic name is matched against it in its MQTT form: a name holding `/` as it
//! is, a dotted name with its dots as level separators (`sensor.readings` is
//! `sensor/readings`), as the mqtt backend publishes it.

use std::borrow::Cow;

use crate::error::BackendError;

/// Longest filter accepted, in bytes (MQTT's string length limit).
pub const MAX_FILTER_BYTES: usize = 65_535;

/// The MQTT form of a topic name: as it is when it holds `/` (an MQTT topic already),
/// otherwise its dots as level separators.
pub fn mqtt_name(topic: &str) -> Cow<'_, str> {
    // (this runs on every MQTT publish: one scan to decide and a copy mapped, both
    // loops the compiler vectorizes, since neither stops early nor stores conditionally)
    let bytes = topic.as_bytes();
    let (slash, dot) = bytes.iter().fold((false, false), |(slash, dot), &byte| {
        (slash | (byte == b'/'), dot | (byte == b'.'))
    });
    if slash || !dot {
        return Cow::Borrowed(topic);
    }
    let mut mapped = bytes.to_vec();
    for byte in &mut mapped {
        *byte = if *byte == b'.' { b'/' } else { *byte };
    }
    // (one ASCII byte for another: still UTF-8)
    Cow::Owned(String::from_utf8(mapped).unwrap_or_else(|_| topic.replace('.', "/")))
}

/// Whether `filter` is a filter this framework subscribes with: MQTT's own rules, and no
/// `$share/` prefix (a shared subscription is what `group` declares).
///
/// ```
/// use transport::backend::mqtt_filter::check_filter;
/// assert!(check_filter("mqtt", "/hfp/v2/journey/ongoing/vp/bus/#").is_ok());
/// assert!(check_filter("mqtt", "sensor/+/readings").is_ok());
/// assert!(check_filter("mqtt", "sensor/#/readings").is_err());
/// assert!(check_filter("mqtt", "sensor/a+").is_err());
/// ```
pub fn check_filter(backend: &'static str, filter: &str) -> Result<(), BackendError> {
    match filter_problem(filter) {
        None => Ok(()),
        Some(reason) => Err(BackendError::InvalidTopic {
            backend,
            topic: filter.to_string(),
            reason,
        }),
    }
}

/// What is wrong with `filter`, if anything.
fn filter_problem(filter: &str) -> Option<String> {
    if filter.is_empty() {
        return Some("is an empty MQTT filter".into());
    }
    if filter.len() > MAX_FILTER_BYTES {
        return Some(format!(
            "is {} bytes long (an MQTT filter holds at most {MAX_FILTER_BYTES})",
            filter.len()
        ));
    }
    if let Some(c) = filter.chars().find(|c| c.is_control()) {
        return Some(format!("contains a control character ({c:?})"));
    }
    if filter.starts_with("$share/") {
        return Some(
            "begins with `$share/`: declare the shared subscription's name as the subscriber's `group`"
                .into(),
        );
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (index, level) in levels.iter().enumerate() {
        if level.contains('#') && *level != "#" {
            return Some(format!(
                "has `#` inside level `{level}`: `#` must be a whole level"
            ));
        }
        if *level == "#" && index + 1 != levels.len() {
            return Some(
                "has `#` before its last level: `#` stands for all the levels below, so it comes last"
                    .into(),
            );
        }
        if level.contains('+') && *level != "+" {
            return Some(format!(
                "has `+` in level `{level}`: `+` must be a whole level"
            ));
        }
    }
    None
}

/// Whether the MQTT topic name `topic` matches `filter` (a filter [`check_filter`]
/// accepts). As in MQTT, `a/#` matches `a` itself, and wildcards in the first level do
/// not match names beginning with `$`.
///
/// ```
/// use transport::backend::mqtt_filter::matches;
/// assert!(matches("/hfp/v2/+/bus/#", "/hfp/v2/journey/bus/0018/00423"));
/// assert!(matches("sensor/#", "sensor"));
/// assert!(!matches("sensor/+", "sensor/a/b"));
/// assert!(!matches("+/status", "$SYS/status"));
/// ```
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut names = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if names.next().is_none() {
                    return false;
                }
            }
            literal => {
                if names.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    names.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_mqtt_says() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a/", true),
            ("a/+", "a", false),
            ("a/+/c", "a/b/c", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "anything/at/all", true),
            ("#", "$SYS/x", false),
            ("/hfp/#", "/hfp/v2/journey", true),
            ("/hfp/#", "hfp/v2", false),
            ("+/hfp", "/hfp", true),
            ("$SYS/#", "$SYS/broker/uptime", true),
        ];
        for (filter, topic, expected) in cases {
            assert!(check_filter("memory", filter).is_ok(), "{filter}");
            assert_eq!(matches(filter, topic), expected, "{filter} vs {topic}");
        }
    }

    #[test]
    fn malformed_filters_are_refused_with_the_reason() {
        for (filter, says) in [
            ("", "empty"),
            (
                "a/#/b",
                "`#` stands for all the levels below, so it comes last",
            ),
            ("a/b#", "`#` must be a whole level"),
            ("a/b+", "`+` must be a whole level"),
            ("$share/g/a/b", "group"),
            ("a/\u{0}", "control character"),
        ] {
            let error = check_filter("mqtt", filter).unwrap_err().to_string();
            assert!(error.contains(says), "{filter}: {error}");
        }
        let long = "a".repeat(MAX_FILTER_BYTES + 1);
        assert!(check_filter("mqtt", &long).is_err());
    }

    #[test]
    fn dotted_names_take_their_mqtt_form() {
        assert_eq!(mqtt_name("sensor.readings"), "sensor/readings");
        assert_eq!(mqtt_name("/hfp/v2/a.b"), "/hfp/v2/a.b");
        assert_eq!(mqtt_name("plain"), "plain");
        assert_eq!(mqtt_name("zähler.stand.ä"), "zähler/stand/ä");
        assert!(matches!(mqtt_name("sensor.readings/x"), Cow::Borrowed(_)));
    }
}
