//! What a component is, read from its bytes without compiling it: which of
//! our worlds it targets, what it imports and exports.

use std::fmt;

use serde::Serialize;
use wasmparser::{ComponentExternalKind, ComponentTypeRef, Encoding, Parser, Payload};

use super::BundleKind;

/// The package every Tessera interface lives in.
pub const PACKAGE: &str = "tessera:expert";
/// The contract version this host serves (any `0.1.x` import links).
pub const PACKAGE_VERSION: &str = "0.1";

/// A Tessera world a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    /// `tessera:expert/agent`: an expert.
    Agent,
    /// `tessera:expert/router`: a router.
    Router,
    /// `tessera:expert/adapter`: a fine-tune adapter.
    Adapter,
}

impl World {
    const ALL: [World; 3] = [World::Agent, World::Router, World::Adapter];

    /// The functions the world exports.
    pub fn exports(self) -> &'static [&'static str] {
        match self {
            World::Agent => &["describe", "handle"],
            World::Router => &["route"],
            World::Adapter => &["describe", "pre-request", "post-response"],
        }
    }

    /// The Tessera interfaces the world may import.
    pub fn imports(self) -> &'static [&'static str] {
        match self {
            World::Agent => &["types", "model", "experts", "log"],
            World::Router => &["types", "model", "log"],
            World::Adapter => &["types", "log"],
        }
    }

    /// The bundle kind that carries this world.
    pub fn kind(self) -> BundleKind {
        match self {
            World::Agent => BundleKind::Agent,
            World::Router => BundleKind::Router,
            World::Adapter => BundleKind::Adapter,
        }
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind().world_name())
    }
}

/// What a component's bytes say about it.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentInfo {
    /// The world it implements.
    pub world: World,
    /// The interfaces it imports, by name.
    pub imports: Vec<String>,
    /// The functions it exports, by name.
    pub exports: Vec<String>,
    /// Whether it imports WASI (then WASI is linked, with nothing granted).
    pub uses_wasi: bool,
    /// Size in bytes.
    pub size: usize,
    /// What its `producers` sections say made it (`language: Rust`,
    /// `processed-by: rustc 1.96.0`, …), from the component and the
    /// modules inside it, each once. Claims of the author's toolchain, not
    /// proof.
    pub producers: Vec<String>,
}

/// Why bytes are not a component this host can run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ComponentError {
    /// Not WebAssembly at all, or truncated.
    #[error("not a valid WebAssembly binary: {0}")]
    Malformed(String),
    /// A core module, not a component.
    #[error(
        "this is a core WebAssembly module, not a component: build plugins with `tessera build` (which encodes the component), or run `wasm-tools component new` on it"
    )]
    CoreModule,
    /// Exports match none of our worlds.
    #[error("the component exports [{found}], which matches no Tessera world: {expected}")]
    UnknownWorld {
        /// What it exports.
        found: String,
        /// What each world exports.
        expected: String,
    },
    /// Imports something the host does not provide to this world.
    #[error(
        "the component imports `{import}`, which the host does not provide to the {world} world (it provides {provided} and WASI 0.2 with nothing granted)"
    )]
    UnsupportedImport {
        /// The import.
        import: String,
        /// The world it targets.
        world: World,
        /// What the world may import.
        provided: String,
    },
}

impl ComponentInfo {
    /// Read `bytes` and work out which world the component implements.
    pub fn parse(bytes: &[u8]) -> Result<ComponentInfo, ComponentError> {
        if Parser::is_core_wasm(bytes) {
            return Err(ComponentError::CoreModule);
        }
        if !Parser::is_component(bytes) {
            return Err(ComponentError::Malformed(
                "the file does not start with the WebAssembly component header (\\0asm, version 0x0d, layer 1)".into(),
            ));
        }
        let mut imports = Vec::new();
        let mut exports = Vec::new();
        let mut producers = Vec::new();
        // Nested modules and components have their own imports; only the
        // outermost ones (depth 1) face the host.
        let mut depth = 0usize;
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.map_err(|e| ComponentError::Malformed(e.to_string()))? {
                Payload::Version { encoding, .. } => {
                    depth += 1;
                    if depth == 1 && encoding != Encoding::Component {
                        return Err(ComponentError::CoreModule);
                    }
                }
                Payload::End(_) => depth = depth.saturating_sub(1),
                Payload::CustomSection(reader) => {
                    if let wasmparser::KnownCustom::Producers(fields) = reader.as_known() {
                        for field in fields.into_iter().flatten() {
                            for value in field.values.into_iter().flatten() {
                                let line =
                                    format!("{}: {} {}", field.name, value.name, value.version);
                                let line = crate::text::ellipsize(line.trim(), 200);
                                if !producers.contains(&line) && producers.len() < 32 {
                                    producers.push(line);
                                }
                            }
                        }
                    }
                }
                Payload::ComponentImportSection(reader) if depth == 1 => {
                    for import in reader {
                        let import =
                            import.map_err(|e| ComponentError::Malformed(e.to_string()))?;
                        // Types a world `use`s are imported too; only
                        // instances (interfaces) need the host.
                        if matches!(import.ty, ComponentTypeRef::Instance(_)) {
                            imports.push(import.name.name.to_string());
                        }
                    }
                }
                Payload::ComponentExportSection(reader) if depth == 1 => {
                    for export in reader {
                        let export =
                            export.map_err(|e| ComponentError::Malformed(e.to_string()))?;
                        if export.kind == ComponentExternalKind::Func {
                            exports.push(export.name.name.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        let world = World::ALL
            .into_iter()
            .find(|w| {
                let mut want: Vec<&str> = w.exports().to_vec();
                let mut have: Vec<&str> = exports.iter().map(String::as_str).collect();
                want.sort_unstable();
                have.sort_unstable();
                want == have
            })
            .ok_or_else(|| ComponentError::UnknownWorld {
                found: exports.join(", "),
                expected: World::ALL
                    .iter()
                    .map(|w| format!("{w} ({})", w.exports().join(", ")))
                    .collect::<Vec<_>>()
                    .join("; "),
            })?;
        let mut uses_wasi = false;
        for import in &imports {
            if import.starts_with("wasi:") {
                uses_wasi = true;
                continue;
            }
            if !is_provided(world, import) {
                return Err(ComponentError::UnsupportedImport {
                    import: import.clone(),
                    world,
                    provided: world
                        .imports()
                        .iter()
                        .map(|i| format!("{PACKAGE}/{i}@{PACKAGE_VERSION}.x"))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(ComponentInfo {
            world,
            imports,
            exports,
            uses_wasi,
            size: bytes.len(),
            producers,
        })
    }
}

/// A host interface whose use needs a grant in the manifest's
/// `[capabilities]`, and how the component's imports and the grant agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CapabilityUse {
    /// The interface (`model`, `experts`).
    pub interface: &'static str,
    /// Whether the component imports it (calls it somewhere).
    pub used: bool,
    /// Whether the manifest grants it.
    pub granted: bool,
}

impl CapabilityUse {
    /// The line to add to `tessera.toml` when the component uses the
    /// interface without a grant: every such call would fail at run time.
    pub fn missing_grant(&self) -> Option<String> {
        (self.used && !self.granted).then(|| match self.interface {
            "model" => "the component calls the model (tessera:expert/model) but tessera.toml does not grant it; add under [capabilities]: model = true".to_string(),
            _ => "the component calls other experts (tessera:expert/experts) but tessera.toml grants none; add under [capabilities]: experts = [\"NAME\", ...] (or [\"*\"] for any)".to_string(),
        })
    }
}

impl ComponentInfo {
    /// Which granted interfaces the component uses, against what
    /// `capabilities` grants. An adapter's hooks need no `model` grant:
    /// its bundle runs the model with its own adapter.
    pub fn capability_uses(&self, capabilities: &super::Capabilities) -> Vec<CapabilityUse> {
        let imports = |interface: &str| {
            self.imports.iter().any(|i| {
                i.strip_prefix(PACKAGE)
                    .and_then(|r| r.strip_prefix('/'))
                    .and_then(|r| r.split('@').next())
                    == Some(interface)
            })
        };
        vec![
            CapabilityUse {
                interface: "model",
                used: imports("model"),
                granted: capabilities.model.is_granted() || self.world == World::Adapter,
            },
            CapabilityUse {
                interface: "experts",
                used: imports("experts"),
                granted: !capabilities.experts.is_empty(),
            },
        ]
    }
}

fn is_provided(world: World, import: &str) -> bool {
    let Some(rest) = import
        .strip_prefix(PACKAGE)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return false;
    };
    let (interface, version) = rest.split_once('@').unwrap_or((rest, ""));
    let version_ok = version
        .strip_prefix(PACKAGE_VERSION)
        .is_some_and(|patch| patch.is_empty() || patch.starts_with('.'));
    version_ok && world.imports().contains(&interface)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            ComponentInfo::parse(b"hello world"),
            Err(ComponentError::Malformed(_))
        ));
        assert!(matches!(
            ComponentInfo::parse(b""),
            Err(ComponentError::Malformed(_))
        ));
    }

    #[test]
    fn core_module_is_named_as_such() {
        let core = b"\0asm\x01\0\0\0";
        let err = ComponentInfo::parse(core).unwrap_err();
        assert_eq!(err, ComponentError::CoreModule);
        assert!(err.to_string().contains("core WebAssembly module"));
    }

    #[test]
    fn empty_component_matches_no_world() {
        let empty = b"\0asm\x0d\0\x01\0";
        let err = ComponentInfo::parse(empty).unwrap_err();
        assert!(matches!(err, ComponentError::UnknownWorld { .. }), "{err}");
        assert!(err.to_string().contains("agent (describe, handle)"));
    }

    #[test]
    fn import_versions() {
        assert!(is_provided(World::Agent, "tessera:expert/model@0.1.0"));
        assert!(is_provided(World::Agent, "tessera:expert/model@0.1.3"));
        assert!(!is_provided(World::Agent, "tessera:expert/model@0.2.0"));
        assert!(!is_provided(World::Agent, "tessera:expert/model@0.10.0"));
        assert!(!is_provided(World::Router, "tessera:expert/experts@0.1.0"));
        assert!(!is_provided(World::Agent, "acme:evil/model@0.1.0"));
    }
}
