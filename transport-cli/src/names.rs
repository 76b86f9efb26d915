//! Names the user gives (crate, topic, group, handler, types) and the Rust names derived
//! from them: validated here, once, with an error that says what is allowed.

use crate::error::CliError;

/// Rust's keywords (strict, reserved and edition 2024's `gen`): not usable as identifiers.
const KEYWORDS: [&str; 52] = [
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub",
    "ref", "return", "self", "Self", "static", "struct", "super", "trait", "true", "type",
    "unsafe", "use", "where", "while", "abstract", "become", "box", "do", "final", "gen", "macro",
    "override", "priv", "try", "typeof", "unsized", "virtual", "yield",
];

/// Crate names that would clash with the standard library, cargo, or the framework itself.
const RESERVED_CRATES: [&str; 7] = [
    "core",
    "std",
    "alloc",
    "proc_macro",
    "test",
    "transport",
    "transport_macros",
];

/// The longest topic or group name accepted (Kafka's limit, the strictest of the brokers).
const MAX_TOPIC_LEN: usize = 249;

fn invalid(what: &'static str, value: &str, reason: impl Into<String>) -> CliError {
    CliError::InvalidName {
        what,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Checks a crate (package) name: ASCII letters, digits, `-` and `_`, starting with a
/// letter; not a keyword nor a crate every build already has.
pub fn crate_name(name: &str) -> Result<(), CliError> {
    const WHAT: &str = "crate name";
    let Some(first) = name.chars().next() else {
        return Err(invalid(WHAT, name, "it is empty"));
    };
    if !first.is_ascii_alphabetic() {
        return Err(invalid(WHAT, name, "it must start with an ASCII letter"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(invalid(
            WHAT,
            name,
            format!("`{bad}` is not allowed: use ASCII letters, digits, `-` and `_`"),
        ));
    }
    if name.len() > 64 {
        return Err(invalid(WHAT, name, "it is longer than 64 characters"));
    }
    let lib = snake_case(name);
    if KEYWORDS.contains(&lib.as_str()) {
        return Err(invalid(WHAT, name, "it is a Rust keyword"));
    }
    if RESERVED_CRATES.contains(&lib.as_str()) {
        return Err(invalid(
            WHAT,
            name,
            "it is the name of a crate every consumer already depends on",
        ));
    }
    Ok(())
}

/// Checks a topic or group name: ASCII letters, digits, `.`, `-` and `_`, up to 249
/// characters, no empty `.`-separated segment. Wildcards are refused: a subscriber names
/// one topic on every broker.
fn broker_name(what: &'static str, name: &str) -> Result<(), CliError> {
    if name.is_empty() {
        return Err(invalid(what, name, "it is empty"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        let hint = if matches!(bad, '*' | '>' | '#' | '+') {
            " (wildcards are not supported: subscribe to each topic)"
        } else {
            ""
        };
        return Err(invalid(
            what,
            name,
            format!("`{bad}` is not allowed: use ASCII letters, digits, `.`, `-` and `_`{hint}"),
        ));
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(invalid(
            what,
            name,
            format!("it is longer than {MAX_TOPIC_LEN} characters"),
        ));
    }
    if name.split('.').any(str::is_empty) {
        return Err(invalid(
            what,
            name,
            "it has an empty `.`-separated part (a leading, trailing or doubled `.`)",
        ));
    }
    Ok(())
}

/// Checks a topic name: ASCII letters, digits, `.`, `-`, `_`; no wildcards.
pub fn topic(name: &str) -> Result<(), CliError> {
    broker_name("topic", name)
}

/// Checks a group name: the same rules as a topic name.
pub fn group(name: &str) -> Result<(), CliError> {
    broker_name("group", name)
}

/// Checks a method name: a snake_case Rust identifier that is not a keyword.
pub fn method(name: &str) -> Result<(), CliError> {
    const WHAT: &str = "subscriber name";
    identifier(WHAT, name)?;
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(invalid(
            WHAT,
            name,
            format!("methods are snake_case: `{}`", snake_case(name)),
        ));
    }
    if name.starts_with("__transport") {
        return Err(invalid(
            WHAT,
            name,
            "names starting with `__transport` are the framework's",
        ));
    }
    Ok(())
}

/// Checks a type name: a CamelCase Rust identifier that is not a keyword.
pub fn type_name(what: &'static str, name: &str) -> Result<(), CliError> {
    identifier(what, name)?;
    if !name.starts_with(|c: char| c.is_ascii_uppercase()) {
        return Err(invalid(
            what,
            name,
            format!("types are CamelCase: `{}`", camel_case(name)),
        ));
    }
    Ok(())
}

fn identifier(what: &'static str, name: &str) -> Result<(), CliError> {
    let Some(first) = name.chars().next() else {
        return Err(invalid(what, name, "it is empty"));
    };
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Err(invalid(
            what,
            name,
            "it must start with an ASCII letter or `_`",
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(invalid(
            what,
            name,
            format!("`{bad}` is not allowed in a Rust identifier"),
        ));
    }
    if name == "_" {
        return Err(invalid(what, name, "`_` is not a name"));
    }
    if KEYWORDS.contains(&name) {
        return Err(invalid(what, name, "it is a Rust keyword"));
    }
    Ok(())
}

/// The words of a name: split at `-`, `_`, `.` and lower-to-upper case changes.
fn words(name: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            previous_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && previous_lower && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        current.push(c);
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// `orders-consumer` -> `orders_consumer`.
pub fn snake_case(name: &str) -> String {
    words(name)
        .iter()
        .map(|w| w.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join("_")
}

/// `sensor.readings` -> `SENSOR_READINGS`.
pub fn screaming_snake_case(name: &str) -> String {
    snake_case(name).to_ascii_uppercase()
}

/// `orders-consumer` -> `OrdersConsumer`.
pub fn camel_case(name: &str) -> String {
    words(name)
        .iter()
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => {
                    first.to_ascii_uppercase().to_string() + &chars.as_str().to_ascii_lowercase()
                }
                None => String::new(),
            }
        })
        .collect()
}

/// A name usable where Rust wants an identifier: prefixed when it starts with a digit.
pub fn with_prefix_if_digit(prefix: &str, name: String) -> String {
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("{prefix}{name}")
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(result: Result<(), CliError>) -> String {
        match result {
            Ok(()) => panic!("expected an error"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn crate_names() {
        assert!(crate_name("orders-consumer").is_ok());
        assert!(crate_name("a1_b").is_ok());
        assert_eq!(
            reason(crate_name("1orders")),
            "invalid crate name `1orders`: it must start with an ASCII letter"
        );
        assert_eq!(
            reason(crate_name("orders consumer")),
            "invalid crate name `orders consumer`: ` ` is not allowed: use ASCII letters, digits, `-` and `_`"
        );
        assert!(reason(crate_name("")).contains("it is empty"));
        assert!(reason(crate_name("fn")).contains("keyword"));
        assert!(reason(crate_name("transport")).contains("already depends on"));
        assert!(reason(crate_name("Proc-Macro")).contains("already depends on"));
        assert!(reason(crate_name(&"a".repeat(65))).contains("longer than 64"));
    }

    #[test]
    fn topic_and_group_names() {
        assert!(topic("sensor.readings").is_ok());
        assert!(topic("orders_v2-eu").is_ok());
        assert!(group("billing").is_ok());
        assert!(reason(topic("sensor.*")).contains("wildcards are not supported"));
        assert!(reason(topic("a..b")).contains("empty `.`-separated part"));
        assert!(reason(topic(".a")).contains("empty `.`-separated part"));
        assert!(reason(topic("a/b")).contains("`/` is not allowed"));
        assert!(reason(topic(&"t".repeat(250))).contains("longer than 249"));
        assert_eq!(reason(group("")), "invalid group ``: it is empty");
    }

    #[test]
    fn rust_names() {
        assert!(method("on_order").is_ok());
        assert!(reason(method("onOrder")).contains("snake_case: `on_order`"));
        assert!(reason(method("match")).contains("keyword"));
        assert!(reason(method("9lives")).contains("must start with"));
        assert!(reason(method("on-order")).contains("`-` is not allowed"));
        assert!(reason(method("__transport_bind_x")).contains("framework's"));
        assert!(type_name("payload type", "Order").is_ok());
        assert!(reason(type_name("payload type", "order_line")).contains("CamelCase: `OrderLine`"));
    }

    #[test]
    fn case_conversions() {
        assert_eq!(snake_case("orders-consumer"), "orders_consumer");
        assert_eq!(snake_case("OrdersConsumer"), "orders_consumer");
        assert_eq!(camel_case("sensor.readings"), "SensorReadings");
        assert_eq!(camel_case("orders_v2-eu"), "OrdersV2Eu");
        assert_eq!(screaming_snake_case("sensor.readings"), "SENSOR_READINGS");
        assert_eq!(with_prefix_if_digit("TOPIC_", "2FA".into()), "TOPIC_2FA");
        assert_eq!(with_prefix_if_digit("TOPIC_", "ORDERS".into()), "ORDERS");
    }
}
