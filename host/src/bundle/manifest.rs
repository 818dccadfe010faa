use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The manifest's file name inside a bundle or plugin crate.
pub const MANIFEST_FILE: &str = "tessera.toml";
/// Longest description (manifest or `describe()`), bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Most tags.
pub const MAX_TAGS: usize = 32;
/// Longest tag, bytes.
pub const MAX_TAG_BYTES: usize = 64;
/// Most example prompts; each is embedded for routing when it loads.
pub const MAX_EXAMPLES: usize = 32;
/// Longest example prompt, bytes.
pub const MAX_EXAMPLE_BYTES: usize = 1024;

/// Check what an expert says about itself (from its manifest or its
/// `describe()`) against the caps above; the error names the field.
pub fn check_description(
    description: &str,
    tags: &[String],
    examples: &[String],
) -> Result<(), (&'static str, String)> {
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err((
            "description",
            format!(
                "is {} bytes; at most {MAX_DESCRIPTION_BYTES}",
                description.len()
            ),
        ));
    }
    let lists = [
        ("tags", tags, MAX_TAGS, MAX_TAG_BYTES),
        ("examples", examples, MAX_EXAMPLES, MAX_EXAMPLE_BYTES),
    ];
    for (field, items, max_count, max_bytes) in lists {
        if items.len() > max_count {
            return Err((
                field,
                format!("holds {} items; at most {max_count}", items.len()),
            ));
        }
        if let Some(i) = items.iter().position(|t| t.len() > max_bytes) {
            return Err((
                field,
                format!(
                    "item {i} is {} bytes; at most {max_bytes} each",
                    items[i].len()
                ),
            ));
        }
    }
    Ok(())
}

/// A bundle's `tessera.toml`.
///
/// ```toml
/// name = "calculator"
/// version = "0.1.0"
/// kind = "agent"
/// description = "Evaluates arithmetic exactly."
/// tags = ["math"]
/// examples = ["What is 12 * (3 + 4)?"]
///
/// [capabilities]
/// model = true          # may call tessera:expert/model
/// experts = []          # experts it may call; "*" for any
///
/// [routing]             # how `tessera/auto` treats it
/// routable = true       # a candidate of the router (false: by name only)
/// cost = 1              # cascades try cheaper experts first
/// margin = 0.0          # chosen only when this far ahead of the rest
///
/// [limits]              # each clamped by the host's policy
/// memory-mib = 64
/// deadline-ms = 10000
/// fuel = 2_000_000_000
/// model-calls = 4
/// generated-tokens = 1024
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Manifest {
    /// Unique name: lowercase letters, digits and dashes.
    pub name: String,
    /// Semantic version `MAJOR.MINOR.PATCH`.
    pub version: String,
    /// Which world the component implements.
    #[serde(default)]
    pub kind: BundleKind,
    /// What the expert is good at, for people and routers.
    #[serde(default)]
    pub description: String,
    /// Topic labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Example prompts it answers well.
    #[serde(default)]
    pub examples: Vec<String>,
    /// The component file, relative to the bundle directory. Set by
    /// `tessera build`; absent in a plugin crate's own manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<PathBuf>,
    /// The component's sha256 (hex), checked at load. Set by `tessera build`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// What the expert may use.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// What it asks for; the host clamps each limit to its policy.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// How the ensemble's router treats it.
    #[serde(default)]
    pub routing: RoutingSpec,
    /// For `kind = "adapter"`: where its LoRA weights are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterSpec>,
}

/// The `[adapter]` section of an adapter bundle's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdapterSpec {
    /// The directory, relative to the bundle, holding the PEFT files
    /// (`adapter_config.json`, `adapter_model.safetensors`).
    #[serde(default = "default_weights_dir")]
    pub weights: PathBuf,
}

/// Default of `adapter.weights`.
pub const DEFAULT_ADAPTER_WEIGHTS_DIR: &str = "adapter";

fn default_weights_dir() -> PathBuf {
    PathBuf::from(DEFAULT_ADAPTER_WEIGHTS_DIR)
}

impl Default for AdapterSpec {
    fn default() -> Self {
        AdapterSpec {
            weights: default_weights_dir(),
        }
    }
}

impl Manifest {
    /// Where an adapter bundle's PEFT files are, relative to the bundle.
    pub fn adapter_weights_dir(&self) -> PathBuf {
        let dir = self.adapter.clone().unwrap_or_default().weights;
        // `"."`: the bundle directory itself.
        dir.components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect()
    }
}

/// How `tessera/auto` treats an expert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RoutingSpec {
    /// Whether the router may pick it. Helpers that only make sense when
    /// called on purpose (an aggregator, say) set this to `false`; they
    /// stay callable by name.
    #[serde(default = "yes")]
    pub routable: bool,
    /// Relative cost of an answer (1 = one short model call), as the
    /// author estimates it: shown in the routing index and in a cascade's
    /// stages, never used to order them (a plugin could claim any cost).
    #[serde(default = "one")]
    pub cost: u32,
    /// How far (in router score) this expert must lead to be chosen: its
    /// score must be at least the router's threshold plus `margin`, and at
    /// least the best other candidate's plus `margin`. For experts that
    /// help only where they clearly fit and hurt elsewhere (chain of
    /// thought turns "count to five" into arithmetic). 0 (the default):
    /// chosen like any other.
    #[serde(default)]
    pub margin: f32,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

impl Default for RoutingSpec {
    fn default() -> Self {
        RoutingSpec {
            routable: true,
            cost: 1,
            margin: 0.0,
        }
    }
}

/// The world a bundle's component implements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BundleKind {
    /// An expert (`agent` world): answers requests.
    #[default]
    Agent,
    /// A router (`router` world): ranks experts for a request.
    Router,
    /// A fine-tune adapter (`adapter` world).
    Adapter,
}

impl BundleKind {
    /// The WIT world's name.
    pub fn world_name(self) -> &'static str {
        match self {
            BundleKind::Agent => "agent",
            BundleKind::Router => "router",
            BundleKind::Adapter => "adapter",
        }
    }
}

/// What a bundle is granted. Everything is denied unless listed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Capabilities {
    /// May call `tessera:expert/model`, and on which model: `true` the
    /// host's default, a name one of the host's configured models.
    #[serde(default)]
    pub model: ModelGrant,
    /// Experts it may call through `experts.call`; `"*"` grants all.
    #[serde(default)]
    pub experts: Vec<String>,
    /// LoRA adapters it may run the model with (`adapter` in model
    /// calls); `"*"` grants all.
    #[serde(default)]
    pub adapters: Vec<String>,
}

/// The `model` capability: `false` (denied), `true` (the host's default
/// model) or a model's name (one the host is configured with, such as an
/// upstream `qwen2.5-7b`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ModelGrant {
    /// No model calls.
    #[default]
    Denied,
    /// The host's default model.
    Default,
    /// The configured model of this name.
    Named(String),
}

/// Longest model name a manifest may give, bytes.
pub const MAX_MODEL_NAME_BYTES: usize = 128;

/// Whether `name` can name a model: 1 to 128 ASCII letters, digits and
/// `.-_/:`, starting with a letter or digit (hub ids such as
/// `Qwen/Qwen2.5-7B-Instruct` included).
pub fn is_valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_MODEL_NAME_BYTES
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_/:".contains(&b))
}

impl ModelGrant {
    /// Whether any model call is granted.
    pub fn is_granted(&self) -> bool {
        !matches!(self, ModelGrant::Denied)
    }

    /// The model named, when one is (rather than the default).
    pub fn name(&self) -> Option<&str> {
        match self {
            ModelGrant::Named(name) => Some(name),
            _ => None,
        }
    }
}

impl From<bool> for ModelGrant {
    fn from(granted: bool) -> Self {
        if granted {
            ModelGrant::Default
        } else {
            ModelGrant::Denied
        }
    }
}

impl Serialize for ModelGrant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ModelGrant::Denied => s.serialize_bool(false),
            ModelGrant::Default => s.serialize_bool(true),
            ModelGrant::Named(name) => s.serialize_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for ModelGrant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Name(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "`model` is true (the host's default model), false, or a model's name such as \"qwen2.5-7b\"",
            )
        })? {
            Raw::Flag(granted) => Ok(granted.into()),
            Raw::Name(name) if is_valid_model_name(&name) => Ok(ModelGrant::Named(name)),
            Raw::Name(name) => Err(serde::de::Error::custom(format!(
                "`model` {:?} is not a model name: 1 to {MAX_MODEL_NAME_BYTES} ASCII letters, digits and `.-_/:`, starting with a letter or digit",
                name.chars().take(MAX_MODEL_NAME_BYTES + 1).collect::<String>()
            ))),
        }
    }
}

impl Capabilities {
    /// Whether running the model with adapter `name` is granted.
    pub fn may_use_adapter(&self, name: &str) -> bool {
        self.adapters.iter().any(|a| a == "*" || a == name)
    }

    /// Whether calling expert `name` is granted.
    pub fn may_call(&self, name: &str) -> bool {
        self.experts.iter().any(|e| e == "*" || e == name)
    }
}

/// Limits a bundle asks for. `None` takes the host's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitsSpec {
    /// Linear memory, MiB.
    pub memory_mib: Option<u64>,
    /// Wall-clock deadline of one invocation, milliseconds.
    pub deadline_ms: Option<u64>,
    /// Fuel (roughly, wasm instructions) for one invocation.
    pub fuel: Option<u64>,
    /// Model calls per invocation.
    pub model_calls: Option<u32>,
    /// Tokens the model may generate per invocation.
    pub generated_tokens: Option<u32>,
}

/// A manifest that could not be read or is invalid. Each case names the file
/// and, where it can, the field and what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The manifest file.
        path: PathBuf,
        /// The I/O error.
        reason: std::io::Error,
    },
    /// The file is not valid TOML for a manifest (unknown or mistyped field).
    #[error("{path}: {message}")]
    Parse {
        /// The manifest file.
        path: PathBuf,
        /// The parser's message, with line, column and field.
        message: String,
    },
    /// A field has a value outside what it accepts.
    #[error("{path}: field `{field}`: expected {expected}, found {found}")]
    Invalid {
        /// The manifest file.
        path: PathBuf,
        /// The field, for example `limits.memory-mib`.
        field: &'static str,
        /// What it accepts.
        expected: &'static str,
        /// What it holds.
        found: String,
    },
}

impl Manifest {
    /// Read and validate `path`.
    pub fn from_file(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|reason| ManifestError::Read {
            path: path.to_path_buf(),
            reason,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parse and validate manifest text; `path` is only used in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        manifest.validate(path)?;
        Ok(manifest)
    }

    /// The manifest a bare `.wasm` runs with: default limits, model access,
    /// no expert calls.
    pub fn for_bare_component(name: &str) -> Manifest {
        Manifest {
            name: name.to_string(),
            version: "0.0.0".into(),
            kind: BundleKind::Agent,
            description: String::new(),
            tags: Vec::new(),
            examples: Vec::new(),
            component: None,
            sha256: None,
            capabilities: Capabilities {
                model: ModelGrant::Default,
                ..Capabilities::default()
            },
            limits: LimitsSpec::default(),
            routing: RoutingSpec::default(),
            adapter: None,
        }
    }

    /// The manifest as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a manifest always serialises")
    }

    fn validate(&self, path: &Path) -> Result<(), ManifestError> {
        let invalid = |field, expected, found: String| ManifestError::Invalid {
            path: path.to_path_buf(),
            field,
            expected,
            found,
        };
        if !is_valid_name(&self.name) {
            return Err(invalid(
                "name",
                "1 to 64 lowercase letters, digits and dashes, starting with a letter",
                format!("{:?}", self.name),
            ));
        }
        if !is_valid_version(&self.version) {
            return Err(invalid(
                "version",
                "a semantic version such as \"0.1.0\"",
                format!("{:?}", self.version),
            ));
        }
        if let Some(component) = &self.component
            && (component.as_os_str().is_empty()
                || !component
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))))
        {
            return Err(invalid(
                "component",
                "a relative path inside the bundle directory, such as \"expert.wasm\" (no `..`, not absolute)",
                format!("{:?}", component.display().to_string()),
            ));
        }
        if let Some(spec) = &self.adapter {
            if self.kind != BundleKind::Adapter {
                return Err(invalid(
                    "adapter",
                    "only in a bundle of kind = \"adapter\"",
                    format!("kind = {:?}", self.kind.world_name()),
                ));
            }
            let w = &spec.weights;
            if !(w.as_os_str() == "."
                || w.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))))
            {
                return Err(invalid(
                    "adapter.weights",
                    "a relative directory inside the bundle, such as \"adapter\" (no `..`, not absolute)",
                    format!("{:?}", w.display().to_string()),
                ));
            }
        }
        if let Some(sha) = &self.sha256
            && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid("sha256", "64 hex digits", format!("{sha:?}")));
        }
        if let Err((field, problem)) =
            check_description(&self.description, &self.tags, &self.examples)
        {
            return Err(invalid(
                match field {
                    "description" => "description",
                    "tags" => "tags",
                    _ => "examples",
                },
                "text within the caps of the plugin guide",
                problem,
            ));
        }
        let margin = self.routing.margin;
        if !(0.0..=1.0).contains(&margin) {
            return Err(invalid(
                "routing.margin",
                "a router score difference between 0 and 1, such as 0.1",
                format!("{margin}"),
            ));
        }
        for expert in &self.capabilities.experts {
            if expert != "*" && !is_valid_name(expert) {
                return Err(invalid(
                    "capabilities.experts",
                    "expert names (lowercase letters, digits, dashes) or \"*\"",
                    format!("{expert:?}"),
                ));
            }
        }
        let positive = [
            ("limits.memory-mib", self.limits.memory_mib),
            ("limits.deadline-ms", self.limits.deadline_ms),
            ("limits.fuel", self.limits.fuel),
        ];
        for (field, value) in positive {
            if value == Some(0) {
                return Err(invalid(field, "a number greater than 0", "0".into()));
            }
        }
        Ok(())
    }
}

/// Whether `name` is a valid expert name: 1 to 64 lowercase letters,
/// digits and dashes, starting with a letter.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 64
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'))
}

/// Whether `version` is a semantic version `MAJOR.MINOR.PATCH` (with an
/// optional pre-release or build suffix), at most 64 bytes.
pub fn is_valid_version(version: &str) -> bool {
    if version.len() > 64 {
        return false;
    }
    let core = version.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::from_toml(text, Path::new("bundle/tessera.toml"))
    }

    #[test]
    fn full_manifest_round_trips() {
        let m = parse(
            r#"
            name = "calculator"
            version = "0.1.0"
            kind = "agent"
            description = "Exact arithmetic."
            tags = ["math"]
            examples = ["2+2?"]
            [capabilities]
            model = true
            experts = ["summariser"]
            [limits]
            memory-mib = 32
            deadline-ms = 500
            fuel = 1000
            model-calls = 2
            generated-tokens = 64
            "#,
        )
        .unwrap();
        assert_eq!(m.limits.memory_mib, Some(32));
        assert!(m.capabilities.may_call("summariser"));
        assert!(!m.capabilities.may_call("other"));
        assert_eq!(parse(&m.to_toml()).unwrap(), m);
    }

    #[test]
    fn unknown_field_names_file_and_field() {
        let err = parse("name = \"a\"\nversion = \"0.1.0\"\n[limits]\nmemory = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bundle/tessera.toml"), "{err}");
        assert!(err.contains("unknown field `memory`"), "{err}");
        assert!(err.contains("memory-mib"), "{err}");
    }

    #[test]
    fn wrong_type_names_field() {
        let err = parse("name = \"a\"\nversion = \"0.1.0\"\n[limits]\nfuel = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("fuel"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_by_field() {
        let err = parse("name = \"Big Name\"\nversion = \"0.1.0\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("field `name`"), "{err}");
        let err = parse("name = \"a\"\nversion = \"one\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("field `version`"), "{err}");
        let err = parse("name = \"a\"\nversion = \"1.0.0\"\nkind = \"robot\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kind"), "{err}");
        let err = parse("name = \"a\"\nversion = \"1.0.0\"\n[limits]\ndeadline-ms = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.deadline-ms"), "{err}");
        for margin in ["-0.1", "1.5", "nan"] {
            let err = parse(&format!(
                "name = \"a\"\nversion = \"1.0.0\"\n[routing]\nmargin = {margin}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains("routing.margin"), "{err}");
        }
    }

    #[test]
    fn missing_name_is_reported() {
        let err = parse("version = \"0.1.0\"\n").unwrap_err().to_string();
        assert!(err.contains("missing field `name`"), "{err}");
    }
}
