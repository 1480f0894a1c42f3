//! `refold new`: a module crate from the templates in `host/templates/`,
//! which are compiled into the binary.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::Kind;

const CARGO_TOML: &str = include_str!("../../../templates/Cargo.toml.tmpl");
const AGGREGATE_RS: &str = include_str!("../../../templates/aggregate.rs.tmpl");
const PROJECTION_RS: &str = include_str!("../../../templates/projection.rs.tmpl");
const README_MD: &str = include_str!("../../../templates/README.md.tmpl");
const GITIGNORE: &str = include_str!("../../../templates/gitignore.tmpl");

/// The SDK of the source tree this binary was built from.
fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk")
}

/// A crate `new` wrote.
pub(crate) struct Created {
    pub path: PathBuf,
    pub sdk: PathBuf,
    /// The lockfile it starts from: the SDK's workspace's, so it builds with
    /// the dependency versions Refold itself is tested with (and offline).
    pub lockfile: Option<PathBuf>,
}

/// Writes the crate `name` of `kind` at `dir/name`, depending on the SDK at
/// `sdk` (default: this build's source tree). Refuses a non-empty directory.
pub(crate) fn create(
    name: &str,
    kind: Kind,
    dir: &Path,
    sdk: Option<&Path>,
) -> Result<Created, String> {
    validate_crate_name(name)?;
    let sdk = find_sdk(sdk)?;
    let path = dir.join(name);
    match std::fs::read_dir(&path) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(format!(
                    "{} already exists and is not empty; refusing to overwrite it",
                    path.display()
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(format!("{} already exists as a file", path.display()));
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;

    let sdk_text = sdk
        .to_str()
        .ok_or_else(|| format!("the SDK path {} is not UTF-8", sdk.display()))?;
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{Type}}", &type_name(name, kind))
            .replace("{{kind}}", kind.as_str())
            .replace("{{sdk}}", &toml_string(sdk_text))
    };
    let lib = match kind {
        Kind::Aggregate => AGGREGATE_RS,
        Kind::Projection => PROJECTION_RS,
    };
    let lockfile = sdk
        .parent()
        .map(|workspace| workspace.join("Cargo.lock"))
        .filter(|lock| lock.is_file());
    let mut files = vec![
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/lib.rs", fill(lib)),
        ("README.md", fill(README_MD)),
        (".gitignore", fill(GITIGNORE)),
    ];
    // Cargo drops the entries the crate does not use on its first build.
    if let Some(lock) = &lockfile {
        let text = std::fs::read_to_string(lock)
            .map_err(|e| format!("cannot read {}: {e}", lock.display()))?;
        files.push(("Cargo.lock", text));
    }
    // Written beside the destination, then renamed into place: the crate
    // appears whole or not at all.
    let staging = dir.join(format!(".{name}.refold-new-{}", std::process::id()));
    let write_all = || -> std::io::Result<()> {
        std::fs::create_dir_all(staging.join("src"))?;
        for (file, text) in &files {
            std::fs::write(staging.join(file), text)?;
        }
        // Over an empty directory, if one is there: rename replaces it.
        std::fs::rename(&staging, &path)
    };
    if let Err(e) = write_all() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(format!("cannot write {}: {e}", path.display()));
    }
    Ok(Created {
        path,
        sdk,
        lockfile,
    })
}

fn find_sdk(given: Option<&Path>) -> Result<PathBuf, String> {
    let (path, from) = match given {
        Some(path) => (path.to_path_buf(), "--sdk"),
        None => (default_sdk(), "the source tree this binary was built from"),
    };
    let sdk = path.canonicalize().map_err(|e| {
        format!(
            "the Refold SDK is not at {} ({from}): {e}; pass --sdk PATH, the guest-sdk directory of a Refold checkout",
            path.display()
        )
    })?;
    let manifest = std::fs::read_to_string(sdk.join("Cargo.toml")).unwrap_or_default();
    if !manifest.contains("name = \"refold-sdk\"") {
        return Err(format!(
            "{} is not the Refold SDK (its Cargo.toml does not name the package refold-sdk); pass --sdk PATH, the guest-sdk directory of a Refold checkout",
            sdk.display()
        ));
    }
    Ok(sdk)
}

/// Module names (lowercase letters, digits, `-`, `_`, starting with a letter)
/// that cargo also accepts as a package in this crate's place.
pub(crate) fn validate_crate_name(name: &str) -> Result<(), String> {
    crate::modules::validate_name(name).map_err(|e| e.to_string())?;
    let ident = name.replace('-', "_");
    if KEYWORDS.contains(&ident.as_str()) {
        return Err(format!(
            "invalid module name {name:?}: it is a Rust keyword, which cargo refuses as a package name"
        ));
    }
    if RESERVED.contains(&ident.as_str()) {
        return Err(format!(
            "invalid module name {name:?}: it is taken by Rust's standard library or by a dependency of the crate"
        ));
    }
    Ok(())
}

const KEYWORDS: &[&str] = &[
    "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate",
    "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl",
    "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub", "ref",
    "return", "self", "static", "struct", "super", "trait", "true", "try", "type", "typeof",
    "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

const RESERVED: &[&str] = &[
    "alloc",
    "core",
    "proc_macro",
    "std",
    "test",
    "refold_sdk",
    "serde",
    "serde_json",
];

/// `my-counter` -> `MyCounter`, unless that clashes with a name the template
/// uses, then `MyCounterModule`.
fn type_name(name: &str, kind: Kind) -> String {
    let mut out = String::new();
    for part in name.split(['-', '_']).filter(|p| !p.is_empty()) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    let taken: &[&str] = match kind {
        Kind::Aggregate => &[
            "Aggregate",
            "Command",
            "Context",
            "Deserialize",
            "Event",
            "Rejection",
            "Serialize",
        ],
        Kind::Projection => &[
            "Deserialize",
            "Docs",
            "Envelope",
            "Projection",
            "QueryError",
            "Selector",
            "Serialize",
            "Total",
            "TypeCount",
            "Value",
        ],
    };
    const PRELUDE: &[&str] = &[
        "Box", "Clone", "Copy", "Default", "Err", "None", "Ok", "Option", "Result", "Self", "Some",
        "String", "Vec",
    ];
    if taken.contains(&out.as_str()) || PRELUDE.contains(&out.as_str()) {
        out.push_str("Module");
    }
    out
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_camel_case_and_avoid_clashes() {
        assert_eq!(type_name("my-counter", Kind::Aggregate), "MyCounter");
        assert_eq!(type_name("todo_list2", Kind::Aggregate), "TodoList2");
        assert_eq!(type_name("a--b", Kind::Aggregate), "AB");
        assert_eq!(type_name("event", Kind::Aggregate), "EventModule");
        assert_eq!(type_name("docs", Kind::Projection), "DocsModule");
        assert_eq!(type_name("docs", Kind::Aggregate), "Docs");
        assert_eq!(type_name("option", Kind::Projection), "OptionModule");
    }

    #[test]
    fn crate_names_follow_module_names_and_cargo() {
        assert!(validate_crate_name("counter").is_ok());
        assert!(validate_crate_name("todo-list_2").is_ok());
        for bad in [
            "",
            "Counter",
            "2fast",
            "-x",
            "a b",
            "a.b",
            "fn",
            "self",
            "async",
            "test",
            "serde",
            "serde-json",
            "refold-sdk",
            "std",
        ] {
            assert!(validate_crate_name(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn toml_strings_escape_quotes_and_backslashes() {
        assert_eq!(toml_string(r#"/a "b"\c"#), r#""/a \"b\"\\c""#);
        assert_eq!(toml_string("x\ny"), "\"x\\u000Ay\"");
    }
}
