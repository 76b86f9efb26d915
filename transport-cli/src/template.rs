//! The templates, embedded in the binary (the tool works offline), and their renderer:
//! `{{name}}` is replaced by the value of `name`; a placeholder without a value is an
//! error, so a template and the code filling it cannot drift apart unnoticed. Templates
//! never hold a literal `{{`.

use std::collections::BTreeMap;

use crate::error::CliError;

/// An embedded template.
#[derive(Clone, Copy, Debug)]
pub struct Template {
    /// Its name (the path under `templates/`).
    pub name: &'static str,
    /// Its text.
    pub text: &'static str,
}

macro_rules! template {
    ($name:literal) => {
        Template {
            name: $name,
            text: include_str!(concat!("../templates/", $name)),
        }
    };
}

/// `Cargo.toml` of a new consumer.
pub const CARGO_TOML: Template = template!("consumer/Cargo.toml.tmpl");
/// `transport.toml` of a new consumer.
pub const TRANSPORT_TOML: Template = template!("consumer/transport.toml.tmpl");
/// `README.md` of a new consumer.
pub const README: Template = template!("consumer/README.md.tmpl");
/// `.gitignore` of a new consumer.
pub const GITIGNORE: Template = template!("consumer/gitignore.tmpl");
/// `src/lib.rs` of a new consumer.
pub const LIB_RS: Template = template!("consumer/lib.rs.tmpl");
/// `src/main.rs` of a new consumer.
pub const MAIN_RS: Template = template!("consumer/main.rs.tmpl");
/// `src/service.rs` of a new consumer.
pub const SERVICE_RS: Template = template!("consumer/service.rs.tmpl");
/// `tests/service.rs` of a new consumer.
pub const TEST_RS: Template = template!("consumer/test.rs.tmpl");
/// A payload struct for serde codecs.
pub const SERDE_PAYLOAD: Template = template!("snippets/serde_payload.rs.tmpl");
/// A payload struct for protobuf.
pub const PROST_PAYLOAD: Template = template!("snippets/prost_payload.rs.tmpl");
/// A typed topic constant.
pub const TOPIC_CONST: Template = template!("snippets/topic.rs.tmpl");
/// A subscriber method.
pub const SUBSCRIBER: Template = template!("snippets/subscriber.rs.tmpl");

/// Every template, for tests.
pub const ALL: [Template; 12] = [
    CARGO_TOML,
    TRANSPORT_TOML,
    README,
    GITIGNORE,
    LIB_RS,
    MAIN_RS,
    SERVICE_RS,
    TEST_RS,
    SERDE_PAYLOAD,
    PROST_PAYLOAD,
    TOPIC_CONST,
    SUBSCRIBER,
];

/// The values of a rendering, by placeholder name.
#[derive(Clone, Debug, Default)]
pub struct Values(BTreeMap<&'static str, String>);

impl Values {
    /// Sets `name` to `value`.
    pub fn set(&mut self, name: &'static str, value: impl Into<String>) -> &mut Self {
        self.0.insert(name, value.into());
        self
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// Renders `template` with `values`.
pub fn render(template: Template, values: &Values) -> Result<String, CliError> {
    let mut out = String::with_capacity(template.text.len() + 256);
    let mut rest = template.text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(CliError::Template {
                template: template.name,
                placeholder: after.chars().take(20).collect(),
            });
        };
        let name = after[..end].trim();
        match values.get(name) {
            Some(value) => out.push_str(value),
            None => {
                return Err(CliError::Template {
                    template: template.name,
                    placeholder: name.to_string(),
                });
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The placeholders `template` uses.
pub fn placeholders(template: Template) -> Vec<&'static str> {
    let mut names = Vec::new();
    let mut rest = template.text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            break;
        };
        names.push(after[..end].trim());
        rest = &after[end + 2..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_and_missing_ones_are_errors() {
        let template = Template {
            name: "t",
            text: "a {{x}} b {{ y }} c",
        };
        let mut values = Values::default();
        values.set("x", "1").set("y", "{{2}}");
        // values are not rendered again
        assert_eq!(render(template, &values).unwrap(), "a 1 b {{2}} c");

        let mut partial = Values::default();
        partial.set("x", "1");
        let error = render(template, &partial).unwrap_err();
        assert_eq!(
            error.to_string(),
            "template `t` uses `{{y}}`, which has no value"
        );
    }

    #[test]
    fn every_template_has_only_well_formed_placeholders() {
        for template in ALL {
            for name in placeholders(template) {
                assert!(
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                    "template {} has a malformed placeholder `{name}`",
                    template.name
                );
            }
            let opened = template.text.matches("{{").count();
            assert_eq!(
                opened,
                placeholders(template).len(),
                "template {} has an unclosed `{{{{`",
                template.name
            );
        }
    }
}
