//! The compile-time half of `tessera-sdk`: reads the plugin crate's
//! `tessera.toml` so that an expert's `describe()` is its manifest, by
//! construction. Use it through `tessera_sdk::export_expert!`, not directly.

use std::path::{Path, PathBuf};

use proc_macro::{Literal, TokenStream};

/// Manifest fields `describe()` returns, in this order.
struct Described {
    name: String,
    version: String,
    description: String,
    tags: Vec<String>,
    examples: Vec<String>,
}

/// `(name, version, description, tags, examples)` from the `tessera.toml`
/// beside the `Cargo.toml` of the crate being compiled, as literals:
/// `(&str, &str, &str, &[&str], &[&str])`. The manifest is also pulled in
/// with `include_str!`, so that cargo rebuilds the crate when it changes.
///
/// A missing or malformed manifest is a compile error that names the file
/// and what to fix. Checking the values (name syntax, sizes) is left to
/// `tessera build`, which reads the same file.
#[proc_macro]
pub fn manifest_description(input: TokenStream) -> TokenStream {
    if !input.is_empty() {
        return compile_error("manifest_description!() takes no arguments");
    }
    let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") else {
        return compile_error(
            "CARGO_MANIFEST_DIR is not set: build the plugin with cargo (or `tessera build`)",
        );
    };
    let path = PathBuf::from(dir).join("tessera.toml");
    match read(&path) {
        Ok(described) => expand(&path, &described),
        Err(why) => compile_error(&format!("{}: {why}", path.display())),
    }
}

fn read(path: &Path) -> Result<Described, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the expert's manifest ({e}). An expert's name, description, tags and \
             examples live in tessera.toml beside Cargo.toml; `tessera new NAME` makes one"
        )
    })?;
    let table: toml::Table = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
    let string = |key: &str| -> Result<Option<String>, String> {
        match table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!(
                "`{key}` must be a string, not {}",
                other.type_str()
            )),
        }
    };
    let strings = |key: &str| -> Result<Vec<String>, String> {
        match table.get(key) {
            None => Ok(Vec::new()),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Err(format!(
                        "`{key}` must be a list of strings; it holds a {}",
                        other.type_str()
                    )),
                })
                .collect(),
            Some(other) => Err(format!(
                "`{key}` must be a list of strings, not {}",
                other.type_str()
            )),
        }
    };
    let name = string("name")?
        .ok_or("no `name`: add `name = \"my-expert\"` (lowercase letters, digits and dashes)")?;
    let version = match string("version")? {
        Some(version) => version,
        None => std::env::var("CARGO_PKG_VERSION").unwrap_or_default(),
    };
    Ok(Described {
        name,
        version,
        description: string("description")?.unwrap_or_default(),
        tags: strings("tags")?,
        examples: strings("examples")?,
    })
}

fn expand(path: &Path, d: &Described) -> TokenStream {
    let lit = |s: &str| Literal::string(s).to_string();
    let list = |items: &[String]| {
        let items: Vec<String> = items.iter().map(|s| lit(s)).collect();
        format!("&[{}]", items.join(", "))
    };
    let code = format!(
        "{{ const _: &str = ::core::include_str!({path}); \
         ({name}, {version}, {description}, {tags} as &[&str], {examples} as &[&str]) }}",
        path = lit(&path.to_string_lossy()),
        name = lit(&d.name),
        version = lit(&d.version),
        description = lit(&d.description),
        tags = list(&d.tags),
        examples = list(&d.examples),
    );
    code.parse()
        .unwrap_or_else(|e| compile_error(&format!("tessera-sdk-macros made bad code: {e}")))
}

fn compile_error(message: &str) -> TokenStream {
    format!("::core::compile_error!({})", Literal::string(message))
        .parse()
        .expect("a compile_error! call parses")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> Result<Described, String> {
        let dir = std::env::temp_dir().join(format!(
            "tessera-sdk-macros-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tessera.toml");
        std::fs::write(&path, text).unwrap();
        let read = read(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        read
    }

    #[test]
    fn reads_what_describe_returns() {
        let d = read_text(
            "name = \"shout\"\nversion = \"1.2.3\"\nkind = \"agent\"\n\
             description = \"Answers \\\"loudly\\\".\"\ntags = [\"fun\"]\n\
             examples = [\"say hello\", \"line\\nbreak\"]\n\n[limits]\nmemory-mib = 16\n",
        )
        .unwrap();
        assert_eq!(d.name, "shout");
        assert_eq!(d.version, "1.2.3");
        assert_eq!(d.description, "Answers \"loudly\".");
        assert_eq!(d.tags, ["fun"]);
        assert_eq!(d.examples, ["say hello", "line\nbreak"]);
    }

    #[test]
    fn optional_fields_default_to_empty() {
        let d = read_text("name = \"bare\"\n").unwrap();
        assert_eq!(d.description, "");
        assert!(d.tags.is_empty() && d.examples.is_empty());
    }

    #[test]
    fn mistakes_are_named() {
        let no_name = read_text("description = \"x\"\n").err().unwrap();
        assert!(no_name.contains("no `name`"), "{no_name}");
        let wrong_type = read_text("name = \"a\"\ntags = \"math\"\n").err().unwrap();
        assert!(
            wrong_type.contains("`tags` must be a list of strings"),
            "{wrong_type}"
        );
        let mixed = read_text("name = \"a\"\nexamples = [\"x\", 3]\n")
            .err()
            .unwrap();
        assert!(
            mixed.contains("`examples`") && mixed.contains("integer"),
            "{mixed}"
        );
        let broken = read_text("name = \n").err().unwrap();
        assert!(broken.contains("not valid TOML"), "{broken}");
        let missing = read(Path::new("/nonexistent/tessera.toml")).err().unwrap();
        assert!(missing.contains("tessera new"), "{missing}");
    }
}
