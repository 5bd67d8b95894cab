//! Loading: the file's syntax and keys, the environment's names, and the merge of the layers.

use std::collections::HashMap;
use std::path::Path;

use config::{FileFormat, Value};

use super::error::show_path;
use super::reader::Reader;
use super::validate::build;
use super::{Config, ConfigError, DEFAULTS, DEV_SECRET_VAR, ENV_PREFIX, Origin, SCHEMA};
use crate::text::{edit_distance, one_line};

/// Loads the config for a command: the file at `path`, then `DEXSCOPE__SECTION__KEY` variables
/// from `env` (with `DEXSCOPE_CLIENT_SECRET` and `CREDENTIALS_DIRECTORY`). `main` passes
/// `std::env::vars()`; tests pass a literal list, so no test touches the process environment.
/// On error the caller prints `dexscope: <error>` and exits [`EXIT_CONFIG`] before any request.
pub fn load_for_command<I, K, V>(path: &Path, env: I) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    Config::load(path, env)
}

impl Config {
    /// See [`load_for_command`].
    pub fn load<I, K, V>(path: &Path, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let env: HashMap<String, String> =
            env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::ReadFile {
            path: show_path(path),
            reason: one_line(&e.to_string()),
        })?;
        let lines = check_file_keys(path, &text)?;
        let env_vars = check_env_keys(&env)?;
        let merged = merge(&text, &env)?;
        let reader = Reader {
            merged,
            path: show_path(path),
            lines,
            env_vars,
            secrets: Vec::new(),
        };
        build(reader, path, &env)
    }
}

/// Checks the file's syntax and keys; returns the line of every `section.key` for error lines.
fn check_file_keys(path: &Path, text: &str) -> Result<HashMap<String, usize>, ConfigError> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let table = toml::de::DeTable::parse(text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let line = line_of(offset);
        let line_start = text[..offset.min(text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        ConfigError::Syntax {
            path: show_path(path),
            line,
            column: text[line_start..offset.min(text.len())].chars().count() + 1,
            message: one_line(e.message().trim()),
        }
    })?;
    let mut lines = HashMap::new();
    for (section, value) in table.get_ref() {
        let section_name = section.get_ref().as_ref();
        let origin = Origin::File {
            path: show_path(path),
            line: Some(line_of(section.span().start)),
        };
        let Some(keys) = section_keys(section_name) else {
            return Err(top_level_error(section_name, origin));
        };
        let toml::de::DeValue::Table(entries) = value.get_ref() else {
            // `scope = 3`: a known section name used as a key; typing reports it below.
            return Err(ConfigError::Invalid {
                section: schema_section(section_name),
                key: "(section)",
                problem: "must be a table".into(),
                origin,
                todo: format!("write it as [{section_name}] followed by its keys"),
            });
        };
        for (key, entry) in entries {
            let key_name = key.get_ref().as_ref();
            let line = line_of(key.span().start);
            let nested = format!("{section_name}.{key_name}");
            if let (Some(nested_keys), toml::de::DeValue::Table(inner)) =
                (section_keys(&nested), entry.get_ref())
            {
                // A table inside a section (`[scope.git]`): its keys are checked the same way.
                for (key, _) in inner {
                    let key_name = key.get_ref().as_ref();
                    let line = line_of(key.span().start);
                    let origin = Origin::File {
                        path: show_path(path),
                        line: Some(line),
                    };
                    if !nested_keys.contains(&key_name) {
                        return Err(unknown_key(&nested, key_name, origin));
                    }
                    lines.insert(format!("{nested}.{key_name}"), line);
                }
                continue;
            }
            if !keys.contains(&key_name) {
                return Err(unknown_key(
                    section_name,
                    key_name,
                    Origin::File {
                        path: show_path(path),
                        line: Some(line),
                    },
                ));
            }
            lines.insert(format!("{section_name}.{key_name}"), line);
        }
    }
    Ok(lines)
}

/// Checks every `DEXSCOPE__…` variable names a known key; returns `section.key` → variable name.
fn check_env_keys(env: &HashMap<String, String>) -> Result<HashMap<String, String>, ConfigError> {
    let mut names = HashMap::new();
    // Sorted, so the first error reported does not depend on hash order.
    let mut vars: Vec<&String> = env.keys().collect();
    vars.sort();
    for var in vars {
        let lower = var.to_lowercase();
        let Some(rest) = lower.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let origin = Origin::Env { var: one_line(var) };
        let parts: Vec<&str> = rest.split("__").collect();
        match parts.as_slice() {
            [section, key] if section_keys(section).is_some() => {
                if !section_keys(section).unwrap_or_default().contains(key) {
                    return Err(unknown_key(section, key, origin));
                }
                names.insert(format!("{section}.{key}"), one_line(var));
            }
            [section] if section_keys(section).is_some() => {
                return Err(ConfigError::EnvName {
                    var: one_line(var),
                    hint: format!(
                        "it names the section [{section}], not a key: use DEXSCOPE__{}__<KEY>",
                        section.to_ascii_uppercase()
                    ),
                });
            }
            [section, table, key] if section_keys(&format!("{section}.{table}")).is_some() => {
                let nested = format!("{section}.{table}");
                if !section_keys(&nested).unwrap_or_default().contains(key) {
                    return Err(unknown_key(&nested, key, origin));
                }
                names.insert(format!("{nested}.{key}"), one_line(var));
            }
            [section, keys @ ..] if section_keys(section).is_some() => {
                return Err(unknown_key(section, &keys.join("__"), origin));
            }
            [first, ..] => return Err(top_level_error(first, origin)),
            [] => unreachable!("split yields at least one part"),
        }
    }
    Ok(names)
}

fn section_keys(section: &str) -> Option<&'static [&'static str]> {
    SCHEMA
        .iter()
        .find(|(s, _)| *s == section)
        .map(|(_, keys)| *keys)
}

fn schema_section(section: &str) -> &'static str {
    SCHEMA
        .iter()
        .find(|(s, _)| *s == section)
        .map_or("?", |(s, _)| s)
}

/// An unknown name at the top level: either an unknown section or a key outside its section.
fn top_level_error(name: &str, origin: Origin) -> ConfigError {
    if name == "client_secret" {
        return ConfigError::UnknownSection {
            section: one_line(name),
            origin,
            hint: format!(
                "a secret never lives in the config: write it to a file and set [tenant] \
                 client_secret_file (or {DEV_SECRET_VAR} for development)"
            ),
        };
    }
    let home = SCHEMA.iter().find(|(_, keys)| keys.contains(&name));
    let hint = match (home, closest(name, SCHEMA.iter().map(|(s, _)| *s))) {
        (Some((section, _)), _) => format!("\"{name}\" belongs inside [{section}]"),
        (None, Some(near)) => format!("did you mean [{near}]?"),
        (None, None) => format!("known sections are {}", section_list()),
    };
    ConfigError::UnknownSection {
        section: one_line(name),
        origin,
        hint,
    }
}

/// The top-level sections (a table inside one, like `[scope.git]`, is named by its section).
fn section_list() -> String {
    SCHEMA
        .iter()
        .filter(|(s, _)| !s.contains('.'))
        .map(|(s, _)| format!("[{s}]"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unknown_key(section: &str, key: &str, origin: Origin) -> ConfigError {
    let keys = section_keys(section).unwrap_or_default();
    let elsewhere = SCHEMA
        .iter()
        .find(|(s, ks)| *s != section && ks.contains(&key));
    let hint = if section == "tenant" && key == "client_secret" {
        format!(
            "a secret never lives in the config: write it to a file and set client_secret_file \
             (or {DEV_SECRET_VAR} for development)"
        )
    } else if let Some(near) = closest(key, keys.iter().copied()) {
        format!("did you mean \"{near}\"?")
    } else if let Some((other, _)) = elsewhere {
        format!("\"{key}\" belongs in [{other}]")
    } else {
        format!("remove it; [{section}] accepts {}", keys.join(", "))
    };
    ConfigError::UnknownKey {
        section: section.to_string(),
        key: one_line(key),
        origin,
        hint,
    }
}

/// The known name nearest to `name`, if near enough to be a typo.
fn closest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    known
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Merges defaults < file < environment with the `config` crate.
fn merge(
    text: &str,
    env: &HashMap<String, String>,
) -> Result<config::Map<String, Value>, ConfigError> {
    let source: config::Map<String, String> =
        env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let built = config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, FileFormat::Toml))
        .add_source(config::File::from_str(text, FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("DEXSCOPE")
                .prefix_separator("__")
                .separator("__")
                .source(Some(source)),
        )
        .build()
        .map_err(|e| ConfigError::Merge {
            reason: one_line(&e.to_string()),
        })?;
    config::Source::collect(&built).map_err(|e| ConfigError::Merge {
        reason: one_line(&e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULTS;

    #[test]
    fn typo_hints() {
        let cases: &[(&str, Option<&str>)] = &[
            ("max_removal", Some("max_removals")),
            ("devic_tag", Some("device_tag")),
            ("prun", Some("prune")),
            ("colour", None),
        ];
        let keys = section_keys("scope").unwrap();
        for (input, want) in cases {
            assert_eq!(
                closest(input, keys.iter().copied()),
                *want,
                "input {input:?}"
            );
        }
    }

    #[test]
    fn defaults_name_only_known_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("defaults.toml");
        std::fs::write(&path, DEFAULTS).unwrap();
        check_file_keys(&path, DEFAULTS).unwrap();
    }
}
