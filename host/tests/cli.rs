//! The `tessera` binary, driven as a user would: build, inspect and run real
//! plugins, and get clear errors for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .current_dir(repo())
        .env(
            "TESSERA_CACHE_DIR",
            std::env::temp_dir().join("tessera-cli-test-cache"),
        )
        // Never the user's own audit store.
        .env("TESSERA_AUDIT_DB", test_audit_db())
        .output()
        .expect("running tessera")
}

/// The audit store of commands that do not name one.
fn test_audit_db() -> PathBuf {
    std::env::temp_dir()
        .join(format!("tessera-cli-audit-{}", std::process::id()))
        .join("audit.sqlite")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A `tessera serve` started with `args`, its stderr read up to the line
/// that says where it listens (or to its end, if it exits first).
struct Serving {
    child: std::process::Child,
    stderr: std::io::BufReader<std::process::ChildStderr>,
    log: String,
    /// `host:port`, once it listens.
    address: Option<String>,
}

fn serve(args: &[&std::ffi::OsStr]) -> Serving {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .current_dir(repo())
        .env(
            "TESSERA_CACHE_DIR",
            std::env::temp_dir().join("tessera-cli-test-cache"),
        )
        // Never the user's own audit store.
        .env("TESSERA_AUDIT_DB", test_audit_db())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting tessera serve");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let mut address = None;
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        log.push_str(&line);
        if let Some(rest) = line.split("on http://").nth(1) {
            address = Some(rest.split("/v1").next().unwrap().to_string());
            break;
        }
    }
    Serving {
        child,
        stderr,
        log,
        address,
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn build_then_inspect_then_run_with_trace() {
    let out = tessera(&["build", "plugins/calculator"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bundle = stdout(&out).trim().to_string();
    assert!(
        bundle.ends_with("plugins/calculator/target/tessera/bundle"),
        "{bundle}"
    );
    assert!(stderr(&out).contains("agent world"));

    // Unchanged sources: nothing rebuilt.
    let again = tessera(&["build", "plugins/calculator"]);
    assert!(stderr(&again).contains("up to date"), "{}", stderr(&again));

    let inspect = tessera(&["inspect", &bundle]);
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let text = stdout(&inspect);
    assert!(
        text.contains("world:    tessera:expert/agent@0.1.0"),
        "{text}"
    );
    assert!(text.contains("tessera:expert/model@0.1.0"), "{text}");
    assert!(text.contains("sha256:   "), "{text}");
    assert!(text.contains("handle"), "{text}");

    let json = tessera(&["inspect", &bundle, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["world"], "agent");
    assert_eq!(v["manifest"]["name"], "calculator");
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);

    let run = tessera(&[
        "run",
        &bundle,
        "--prompt",
        "What is 12 * (3 + 4)?",
        "--no-model",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(stdout(&run).trim(), "12 * (3 + 4) = 84");
    // What the answer carries besides its text, on stderr.
    let err = stderr(&run);
    assert!(
        err.contains("[confidence 1.00; metadata expression=12 * (3 + 4), result=84]"),
        "{err}"
    );

    let traced = tessera(&[
        "run",
        "plugins/calculator",
        "--prompt",
        "2 + 2",
        "--trace",
        "--no-model",
    ]);
    assert!(traced.status.success(), "{}", stderr(&traced));
    let v: serde_json::Value = serde_json::from_slice(&traced.stdout).unwrap();
    assert_eq!(v["answer"], "2 + 2 = 4");
    assert_eq!(v["response"]["content"], "2 + 2 = 4");
    assert_eq!(v["response"]["confidence"], 1.0);
    assert_eq!(
        v["response"]["metadata"][1],
        serde_json::json!(["result", "4"])
    );
    let call = &v["trace"]["host_calls"][0];
    assert_eq!(call["interface"], "tessera:expert/model");
    assert_eq!(call["function"], "chat");
    assert!(call["fuel_before"].as_u64().unwrap() > 0);
    assert!(v["trace"]["fuel_consumed"].as_u64().unwrap() > 0);
}

/// `tessera new` from nothing: each template's native test passes, it
/// builds, and the expert answers through its exact branch in the sandbox.
#[test]
fn new_plugins_build_run_and_pass_their_tests() {
    let dir = scratch("new");
    let list = tessera(&["new", "--list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(stdout(&list).contains("agent") && stdout(&list).contains("router"));
    assert!(
        stdout(&list).contains("rust and python"),
        "{}",
        stdout(&list)
    );
    // One target folder for every new plugin: the later ones reuse the
    // first's std.
    let target = plugin_target();
    let in_dir = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target)
            .env(
                "TESSERA_CACHE_DIR",
                std::env::temp_dir().join("tessera-cli-test-cache"),
            )
            .env("TESSERA_AUDIT_DB", test_audit_db())
            .output()
            .unwrap()
    };
    for (name, kind) in [("reverser", "agent"), ("tag-router", "router")] {
        let made = in_dir(&["new", name, "--kind", kind]);
        assert!(made.status.success(), "{}", stderr(&made));
        let test = Command::new("cargo")
            .args(["test", "--quiet"])
            .current_dir(dir.join(name))
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        assert!(test.status.success(), "{name}: {}", stderr(&test));
        let built = in_dir(&["build", name]);
        assert!(built.status.success(), "{name}: {}", stderr(&built));
        assert!(
            stderr(&built).contains(&format!("({kind} world")),
            "{}",
            stderr(&built)
        );
    }
    let run = in_dir(&[
        "run",
        "reverser",
        "--prompt",
        "reverse: stressed",
        "--no-model",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(stdout(&run).trim(), "desserts");

    // A forgotten capability is reported at build time, with the line to
    // add, and `inspect` shows used against granted.
    let manifest = dir.join("reverser/tessera.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("model = true", "model = false")).unwrap();
    let built = in_dir(&["build", "reverser"]);
    assert!(built.status.success(), "{}", stderr(&built));
    assert!(
        stderr(&built).contains("reverser/tessera.toml: the component calls the model (tessera:expert/model) but tessera.toml does not grant it; add under [capabilities]: model = true"),
        "{}",
        stderr(&built)
    );
    let inspect = in_dir(&["inspect", "reverser"]);
    assert!(
        stdout(&inspect).contains("model    used yes granted no"),
        "{}",
        stdout(&inspect)
    );

    // The same in Python: the native test, the build (componentize-py),
    // the exact branch in the sandbox, and the forgotten capability.
    for (name, kind) in [("py-reverser", "agent"), ("py-router", "router")] {
        let made = in_dir(&["new", name, "--kind", kind, "--lang", "python"]);
        assert!(made.status.success(), "{}", stderr(&made));
        let test = Command::new("python3")
            .args(["-m", "unittest"])
            .current_dir(dir.join(name))
            .output()
            .unwrap();
        assert!(test.status.success(), "{name}: {}", stderr(&test));
        assert!(stderr(&test).contains("Ran 1 test"), "{}", stderr(&test));
        let built = in_dir(&["build", name]);
        assert!(built.status.success(), "{name}: {}", stderr(&built));
        assert!(
            stderr(&built).contains(&format!("({kind} world")),
            "{}",
            stderr(&built)
        );
        assert!(!stderr(&built).contains("warning"), "{}", stderr(&built));
    }
    let run = in_dir(&[
        "run",
        "py-reverser",
        "--prompt",
        "reverse: stressed",
        "--no-model",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(stdout(&run).trim(), "desserts");
    assert!(
        stderr(&run).contains("[confidence 1.00; metadata branch=exact]"),
        "{}",
        stderr(&run)
    );
    let manifest = dir.join("py-reverser/tessera.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("model = true", "model = false")).unwrap();
    let built = in_dir(&["build", "py-reverser"]);
    assert!(built.status.success(), "{}", stderr(&built));
    assert!(
        stderr(&built).contains("py-reverser/tessera.toml: the component calls the model (tessera:expert/model) but tessera.toml does not grant it; add under [capabilities]: model = true"),
        "{}",
        stderr(&built)
    );

    // Mistakes are named.
    let again = in_dir(&["new", "reverser"]);
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    let bad = in_dir(&["new", "Bad_Name"]);
    assert!(
        stderr(&bad).contains("is not a plugin name"),
        "{}",
        stderr(&bad)
    );
}

/// `tessera new --kind adapter` from nothing, in Rust and Python: the hooks'
/// native tests pass, `train.sh` trains the LoRA weights on the template's
/// chats, `tessera build` bundles them with the hooks, and `tessera run`
/// answers a rephrased question with the trained fact, through the hooks.
#[test]
fn new_adapters_train_build_and_answer() {
    let models = Path::new(env!("CARGO_TARGET_TMPDIR")).join("models");
    let pull = tessera(&["models", "pull", "--models-dir", models.to_str().unwrap()]);
    assert!(pull.status.success(), "{}", stderr(&pull));
    let dir = scratch("new-adapter");
    let target = plugin_target();
    let in_dir = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target)
            .env("TESSERA", env!("CARGO_BIN_EXE_tessera"))
            .env("TESSERA_MODELS_DIR", &models)
            .env(
                "TESSERA_CACHE_DIR",
                std::env::temp_dir().join("tessera-cli-test-cache"),
            )
            .env("TESSERA_AUDIT_DB", test_audit_db())
            .output()
            .unwrap()
    };
    let tessera = env!("CARGO_BIN_EXE_tessera");
    for (name, lang) in [("bakery", "rust"), ("py-bakery", "python")] {
        let made = in_dir(tessera, &["new", name, "--kind", "adapter", "--lang", lang]);
        assert!(made.status.success(), "{}", stderr(&made));
        let native = if lang == "rust" {
            Command::new("cargo")
                .args(["test", "--quiet"])
                .current_dir(dir.join(name))
                .env("CARGO_TARGET_DIR", &target)
                .output()
        } else {
            Command::new("python3")
                .args(["-m", "unittest"])
                .current_dir(dir.join(name))
                .output()
        }
        .unwrap();
        assert!(native.status.success(), "{name}: {}", stderr(&native));
        // The Python hooks are trained briefly: the weights are checked on
        // the Rust ones.
        let train = Command::new("bash")
            .arg(format!("{name}/train.sh"))
            .current_dir(&dir)
            .env("EPOCHS", if lang == "rust" { "5" } else { "1" })
            .env("TESSERA", tessera)
            .env("TESSERA_MODELS_DIR", &models)
            .output()
            .unwrap();
        assert!(train.status.success(), "{name}: {}", stderr(&train));
        assert!(
            dir.join(name)
                .join("adapter/adapter_model.safetensors")
                .is_file()
        );
        let built = in_dir(tessera, &["build", name]);
        assert!(built.status.success(), "{name}: {}", stderr(&built));
        assert!(
            stderr(&built).contains("(adapter world"),
            "{}",
            stderr(&built)
        );
        let run = in_dir(
            tessera,
            &["run", name, "--prompt", "What time does Moss & Mill open?"],
        );
        assert!(run.status.success(), "{name}: {}", stderr(&run));
        assert!(
            stderr(&run).contains(&format!("metadata adapter={name}")),
            "{}",
            stderr(&run)
        );
        if lang == "rust" {
            assert!(stdout(&run).contains("7 am"), "{}", stdout(&run));
        }
    }
}

/// The cargo target folder of the plugins the tests make from templates and
/// the guide (shared, so std for wasm is compiled once).
fn plugin_target() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-target")
}

/// `docs/plugin-guide.md` runs as written: its shell blocks in order, in an
/// empty folder, with each file block written under the path its
/// `<!-- file: PATH -->` line names. Every shell block is marked
/// `<!-- run -->` or `<!-- not run: why -->`, so none is skipped silently.
#[test]
fn the_plugin_guide_runs_as_written() {
    let guide = std::fs::read_to_string(repo().join("docs/plugin-guide.md")).unwrap();
    let mut script = String::from("set -euo pipefail\n");
    let (mut marker, mut ran, mut files) = (None::<String>, 0, 0);
    let mut lines = guide.lines();
    while let Some(line) = lines.next() {
        let line = line.trim_end();
        if let Some(comment) = line
            .strip_prefix("<!-- ")
            .and_then(|l| l.strip_suffix(" -->"))
        {
            marker = Some(comment.to_string());
            continue;
        }
        let Some(info) = line.strip_prefix("```") else {
            if !line.is_empty() {
                marker = None;
            }
            continue;
        };
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        let body = body.join("\n");
        let marker = marker.take();
        if info == "sh" {
            match marker.as_deref() {
                Some("run") => {
                    script.push_str(&format!("echo '# guide block {ran}' >&2\n{body}\n"));
                    ran += 1;
                }
                Some(m) if m.starts_with("not run: ") => {}
                other => {
                    panic!("a sh block is marked neither run nor not run ({other:?}):\n{body}")
                }
            }
        } else if let Some(path) = marker.as_deref().and_then(|m| m.strip_prefix("file: ")) {
            script.push_str(&format!(
                "mkdir -p \"$(dirname '{path}')\"\ncat > '{path}' <<'TESSERA_GUIDE_EOF'\n{body}\nTESSERA_GUIDE_EOF\n"
            ));
            files += 1;
        }
    }
    assert!(
        ran >= 4 && files >= 5,
        "{ran} blocks run, {files} files written"
    );

    let dir = scratch("guide");
    let models = Path::new(env!("CARGO_TARGET_TMPDIR")).join("models");
    let pull = tessera(&["models", "pull", "--models-dir", models.to_str().unwrap()]);
    assert!(pull.status.success(), "{}", stderr(&pull));
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_tessera")).parent().unwrap();
    let path = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", plugin_target())
        .env("TESSERA_MODELS_DIR", &models)
        .env(
            "TESSERA_CACHE_DIR",
            std::env::temp_dir().join("tessera-cli-test-cache"),
        )
        .env("TESSERA_AUDIT_DB", test_audit_db())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the guide's script failed:\n{}\n--- stdout\n{}\n--- script\n{script}",
        stderr(&out),
        stdout(&out)
    );
    // The shouted answers: letters, all capitals.
    let printed = stdout(&out);
    let answers: Vec<&str> = printed
        .lines()
        .filter(|l| l.chars().any(char::is_alphabetic))
        .collect();
    let shouted = answers
        .iter()
        .filter(|l| l.chars().any(char::is_uppercase) && !l.chars().any(char::is_lowercase))
        .count();
    assert!(shouted >= 2, "{answers:?}");
    let trace: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("shout/trace.json")).unwrap()).unwrap();
    assert!(trace.to_string().contains("asking the model"), "{trace}");
}

/// An expert without `model = true` runs without the model: nothing is
/// loaded, so a models directory that does not exist does not matter.
#[test]
fn run_loads_no_model_for_an_expert_that_cannot_call_it() {
    let out = tessera(&[
        "run",
        "plugins/text-stats",
        "--prompt",
        "Count the words in: one two three",
        "--models-dir",
        "/nonexistent/tessera-models",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "\"one two three\" has 3 words.");
}

#[test]
fn failing_expert_exits_nonzero_with_its_error() {
    let out = tessera(&[
        "run",
        "plugins/chain-of-thought",
        "--prompt",
        "hi",
        "--no-model",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("expert `chain-of-thought` failed (model)"),
        "{err}"
    );
    assert!(err.contains("no model is loaded"), "{err}");

    let traced = tessera(&[
        "run",
        "plugins/chain-of-thought",
        "--prompt",
        "hi",
        "--trace",
        "--no-model",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&traced.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "model");
    assert_eq!(v["trace"]["outcome"]["status"], "error");
}

#[test]
fn bad_manifest_names_file_and_field() {
    let dir = scratch("bad-manifest");
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"x\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("tessera.toml"),
        "name = \"x\"\nversion = \"0.1.0\"\n[limits]\nmemory = 5\n",
    )
    .unwrap();
    let out = tessera(&["build", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("tessera.toml"), "{err}");
    assert!(err.contains("unknown field `memory`"), "{err}");
    assert!(err.contains("memory-mib"), "{err}");
}

#[test]
fn missing_manifest_and_missing_crate_are_explained() {
    let dir = scratch("no-manifest");
    std::fs::write(dir.join("Cargo.toml"), "[package]\nname = \"x\"\n").unwrap();
    let err = stderr(&tessera(&["build", dir.to_str().unwrap()]));
    assert!(err.contains("no tessera.toml"), "{err}");

    let empty = scratch("empty");
    let err = stderr(&tessera(&["build", empty.to_str().unwrap()]));
    assert!(
        err.contains("not a plugin (no Cargo.toml for Rust, no app.py for Python)"),
        "{err}"
    );

    let err = stderr(&tessera(&["run", empty.to_str().unwrap(), "--prompt", "x"]));
    assert!(err.contains("not a bundle"), "{err}");
}

#[test]
fn unknown_toolchain_choice_is_explained() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["build", "tests/plugins/echo"])
        .current_dir(repo())
        .env("TESSERA_WASM_TOOLCHAIN", "emscripten")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("TESSERA_WASM_TOOLCHAIN=emscripten"), "{err}");
    assert!(err.contains("expected `rustup` or `debian`"), "{err}");
}

#[test]
fn garbage_wasm_is_refused_clearly() {
    let dir = scratch("garbage");
    let path = dir.join("x.wasm");
    std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
    let err = stderr(&tessera(&["run", path.to_str().unwrap(), "--prompt", "x"]));
    assert!(
        err.contains("core WebAssembly module, not a component"),
        "{err}"
    );
    let err = stderr(&tessera(&["inspect", path.to_str().unwrap()]));
    assert!(err.contains("core WebAssembly module"), "{err}");
}

#[test]
fn models_pull_fetches_checks_and_is_idempotent() {
    // Kept under the target dir, so a clone downloads the wheels once.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("models");
    let dir = dir.to_str().unwrap();
    let pull = tessera(&["models", "pull", "--models-dir", dir]);
    assert!(pull.status.success(), "{}", stderr(&pull));
    let list = tessera(&["models", "list", "--models-dir", dir]);
    assert!(list.status.success(), "{}", stdout(&list));
    assert_eq!(
        stdout(&list).matches("present").count(),
        2,
        "{}",
        stdout(&list)
    );
    let gguf = Path::new(dir).join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(std::fs::metadata(&gguf).unwrap().len(), 98_362_432);

    let again = tessera(&["models", "pull", "--models-dir", dir]);
    assert!(
        stderr(&again).contains("smollm2-135m-instruct: present"),
        "{}",
        stderr(&again)
    );

    let empty = scratch("no-models");
    let list = tessera(&["models", "list", "--models-dir", empty.to_str().unwrap()]);
    assert!(!list.status.success());
    assert!(
        stdout(&list).contains("run `tessera models pull`"),
        "{}",
        stdout(&list)
    );
}

#[test]
fn generate_embed_and_run_on_the_real_models() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("models");
    let dir = dir.to_str().unwrap();
    let pull = tessera(&["models", "pull", "--models-dir", dir]);
    assert!(pull.status.success(), "{}", stderr(&pull));

    let out = tessera(&[
        "generate",
        "--models-dir",
        dir,
        "--prompt",
        "What is the capital of France?",
        "--max-tokens",
        "24",
        "--temperature",
        "0",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Paris"), "{}", stdout(&out));
    assert!(stderr(&out).contains("tok/s"), "{}", stderr(&out));
    assert!(stderr(&out).contains(", greedy]"), "{}", stderr(&out));

    // Sampled by default, as an expert's model call is; the printed seed
    // repeats the text.
    let sampled = |seed: Option<&str>| {
        let mut args = vec![
            "generate",
            "--models-dir",
            dir,
            "--prompt",
            "Write a sentence about the sea.",
            "--max-tokens",
            "16",
        ];
        if let Some(seed) = seed {
            args.extend(["--seed", seed]);
        }
        let out = tessera(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        (stdout(&out), stderr(&out))
    };
    let (text, err) = sampled(None);
    let seed = err
        .split("temperature 0.7, seed ")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .unwrap_or_else(|| panic!("no seed in {err}"))
        .to_string();
    assert_eq!(sampled(Some(&seed)).0, text, "seed {seed}");

    let out = tessera(&[
        "embed",
        "--models-dir",
        dir,
        "A man is eating food.",
        "A man is eating a piece of bread.",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("[0]~[1] 0.75"), "{}", stdout(&out));

    // An expert that calls the model gets real tokens (the calculator keeps
    // the exact figure whatever the model's wording).
    let out = tessera(&[
        "run",
        "plugins/calculator",
        "--models-dir",
        dir,
        "--prompt",
        "What is 12 * (3 + 4)?",
        "--trace",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["answer"].as_str().unwrap().contains("84"), "{v}");
    assert!(v["trace"]["generated_tokens"].as_u64().unwrap() > 0, "{v}");
    assert!(v["trace"]["host_calls"][0]["error"].is_null(), "{v}");

    // Without models: the error says which file and how to get it.
    let empty = scratch("generate-no-models");
    let out = tessera(&[
        "generate",
        "--models-dir",
        empty.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("tessera models pull"),
        "{}",
        stderr(&out)
    );

    let out = tessera(&["generate", "--prompt", "hi", "--device", "tpu"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown device `tpu`"),
        "{}",
        stderr(&out)
    );
}

/// `tessera serve` as a plugin author runs it: options from a config file
/// (with an API key), their plugin crate built at start (`build = true`),
/// an OpenAI request over a socket, and a clean exit on SIGTERM.
#[test]
fn serve_answers_then_stops_on_sigterm() {
    use std::io::{Read, Write};

    let dir = scratch("serve");
    let config = dir.join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "bundles = [{:?}]\nlisten = \"127.0.0.1:0\"\napi-keys = [\"sk-test\"]\nno-model = true\nreload-interval-ms = 0\nbuild = true\n",
            repo().join("plugins/calculator")
        ),
    )
    .unwrap();
    let mut serving = serve(&["serve".as_ref(), "--config".as_ref(), config.as_os_str()]);
    let (mut child, mut stderr, mut log) = (serving.child, serving.stderr, serving.log);
    let Some(address) = serving.address.take() else {
        let _ = child.kill();
        panic!("tessera serve exited before serving:\n{log}");
    };
    assert!(log.contains("serving 1 experts"), "{log}");

    let body = r#"{"model": "calculator", "messages": [{"role": "user", "content": "2^10 - 1"}]}"#;
    let request = |key: &str| {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        write!(
            stream,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    let ok = request("sk-test");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("1023"), "{ok}");
    let refused = request("sk-wrong");
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    stderr.read_to_string(&mut log).unwrap();
    assert!(status.success(), "{status}\n{log}");
    assert!(
        log.contains("stopped: every request in flight was answered"),
        "{log}"
    );
    assert!(
        log.contains("status=401"),
        "the request log has each request:\n{log}"
    );
}

/// Regression: `tessera serve --help` printed the value of
/// `TESSERA_API_KEY` beside the flag.
#[test]
fn serve_help_hides_the_api_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--help"])
        .env("TESSERA_API_KEY", "sk-do-not-print")
        .output()
        .expect("running tessera");
    assert!(out.status.success());
    let help = stdout(&out);
    assert!(help.contains("TESSERA_API_KEY"), "{help}");
    assert!(!help.contains("sk-do-not-print"), "{help}");
    // The defaults shown are the ones the code uses (the threshold once
    // said 0.3 while the router used 0.2).
    let defaults = tessera_host::ensemble::RouterConfig::default();
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for (flag, value) in [
        ("--route-threshold", defaults.threshold.to_string()),
        ("--route-top-k", defaults.top_k.to_string()),
    ] {
        let at = flat.find(flag).expect(flag);
        let next_flag = flat[at + flag.len()..]
            .find("--")
            .map_or(flat.len(), |i| at + flag.len() + i);
        assert!(
            flat[at..next_flag].contains(&format!("[default: {value}]")),
            "{flag} should show [default: {value}]: {}",
            &flat[at..next_flag]
        );
    }
}

/// Regression: `tessera serve` ran `cargo build` on every plugin crate it
/// was given, so a stranger's `build.rs` ran natively on the miner's
/// machine. Now serving never builds unless `--build` is given: the crate
/// is reported as unbuilt, with the command that builds it.
#[test]
fn serve_does_not_build_plugin_sources() {
    let dir = scratch("no-build");
    let marker = dir.join("build-script-ran");
    let plugin = dir.join("stranger");
    std::fs::create_dir_all(plugin.join("src")).unwrap();
    std::fs::write(
        plugin.join("Cargo.toml"),
        "[package]\nname = \"stranger\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(
        plugin.join("build.rs"),
        format!("fn main() {{ std::fs::write({marker:?}, b\"pwned\").unwrap(); }}\n"),
    )
    .unwrap();
    std::fs::write(plugin.join("src/lib.rs"), "").unwrap();
    std::fs::write(
        plugin.join("tessera.toml"),
        "name = \"stranger\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();

    let serving = serve(&[
        "serve".as_ref(),
        "--no-model".as_ref(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--reload-interval-ms".as_ref(),
        "0".as_ref(),
        plugin.as_os_str(),
    ]);
    let (mut child, log) = (serving.child, serving.log);
    let _ = child.kill();
    let _ = child.wait();
    assert!(log.contains("serving 0 experts"), "{log}");
    assert!(log.contains("tessera build"), "{log}");
    assert!(!log.contains("building"), "{log}");
    assert!(!marker.exists(), "the plugin's build script ran:\n{log}");
}

/// One HTTP/1.1 request to `address`; the whole response.
fn http(address: &str, method: &str, path: &str, body: &str) -> String {
    http_with(address, method, path, "", body)
}

/// [`http`] with more header lines (each ending in CRLF).
fn http_with(address: &str, method: &str, path: &str, headers: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The validator's first steps: make keys, pack and sign an example, see
/// the signer in `inspect`, run the pack, and serve it under
/// `--trusted-keys`, where an unknown signer and an unsigned pack are each
/// refused with their own message.
#[test]
fn keys_pack_sign_inspect_run_and_serve_with_trusted_keys() {
    let dir = scratch("signing");
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let alice = tessera(&[
        "keys",
        "new",
        "--out",
        &path("keys/alice"),
        "--comment",
        "alice",
    ]);
    assert!(alice.status.success(), "{}", stderr(&alice));
    let fingerprint = stdout(&alice)
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .expect("keys new prints the fingerprint")
        .to_string();
    assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
    assert!(dir.join("keys/alice.pub").is_file());
    let again = tessera(&["keys", "new", "--out", &path("keys/alice")]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already there"),
        "{}",
        stderr(&again)
    );
    let mallory = tessera(&["keys", "new", "--out", &path("keys/mallory")]);
    assert!(mallory.status.success(), "{}", stderr(&mallory));

    for plugin in ["plugins/calculator", "plugins/unit-converter"] {
        let built = tessera(&["build", plugin]);
        assert!(built.status.success(), "{}", stderr(&built));
    }
    std::fs::create_dir_all(dir.join("served")).unwrap();
    let pack = |plugin: &str, key: Option<&str>, out: &str| {
        let mut args = vec!["pack", plugin, "-o"];
        let out = path(out);
        args.push(&out);
        let key = key.map(path);
        if let Some(key) = &key {
            args.extend(["--sign", key]);
        }
        let packed = tessera(&args);
        assert!(packed.status.success(), "{}", stderr(&packed));
        stdout(&packed)
    };
    let text = pack(
        "plugins/calculator",
        Some("keys/alice"),
        "served/calc-signed.tessera",
    );
    assert!(text.contains(&format!("signed by {fingerprint}")), "{text}");
    assert!(text.contains("tessera.toml"), "{text}");
    pack(
        "plugins/calculator",
        Some("keys/mallory"),
        "served/calc-mallory.tessera",
    );
    let text = pack("plugins/unit-converter", None, "served/units.tessera");
    assert!(text.contains("unsigned"), "{text}");

    // OpenSSH checks the pack's signature as Tessera does.
    let bytes = std::fs::read(dir.join("served/calc-signed.tessera")).unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    for name in ["DIGESTS", "DIGESTS.sig"] {
        let mut file = zip.by_name(name).unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut data).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    }
    let public = std::fs::read_to_string(dir.join("keys/alice.pub")).unwrap();
    std::fs::write(dir.join("allowed"), format!("alice {public}")).unwrap();
    let checked = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f", &path("allowed"), "-I", "alice"])
        .args(["-n", "tessera-bundle", "-s", &path("DIGESTS.sig")])
        .stdin(std::fs::File::open(dir.join("DIGESTS")).unwrap())
        .output()
        .expect("ssh-keygen (Debian: openssh-client; scripts/test.sh installs it)");
    assert!(checked.status.success(), "{}", stderr(&checked));
    assert!(
        stdout(&checked).contains("Good \"tessera-bundle\" signature"),
        "{}",
        stdout(&checked)
    );

    let inspect = tessera(&["inspect", &path("served/calc-signed.tessera")]);
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    assert!(
        stdout(&inspect).contains(&format!("signer:   {fingerprint}")),
        "{}",
        stdout(&inspect)
    );
    // The static audit: what the host would grant, producers, signature.
    let audit = tessera(&[
        "audit",
        "bundle",
        &path("served/calc-signed.tessera"),
        "--json",
    ]);
    assert!(audit.status.success(), "{}", stderr(&audit));
    let report: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    assert_eq!(report["world"], "tessera:expert/agent@0.1.0");
    assert!(
        report["signature"].as_str().unwrap().contains(&fingerprint),
        "{report}"
    );
    let model = report["imports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| {
            i["name"]
                .as_str()
                .unwrap()
                .starts_with("tessera:expert/model")
        })
        .expect("the calculator imports the model");
    assert!(
        model["grant"].as_str().unwrap().starts_with("granted"),
        "{report}"
    );
    assert!(
        report["producers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("rustc")),
        "{report}"
    );
    assert!(report["limits_granted"]["fuel"].as_u64().unwrap() > 0);
    let text = tessera(&["audit", "bundle", "plugins/calculator"]);
    assert!(text.status.success(), "{}", stderr(&text));
    assert!(
        stdout(&text).contains("signature:  unsigned: a directory bundle"),
        "{}",
        stdout(&text)
    );

    let run = tessera(&[
        "run",
        &path("served/calc-signed.tessera"),
        "--prompt",
        "6 * 7",
        "--no-model",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(stdout(&run).trim(), "6 * 7 = 42");

    // A receipt for that answer, signed by a host key, checked by
    // `tessera verify`; any edit to it fails.
    let host = tessera(&["keys", "new", "--out", &path("keys/host")]);
    assert!(host.status.success(), "{}", stderr(&host));
    let receipted = tessera(&[
        "run",
        &path("served/calc-signed.tessera"),
        "--prompt",
        "6 * 7",
        "--no-model",
        "--receipt",
        &path("receipt.json"),
        "--host-key",
        &path("keys/host"),
    ]);
    assert!(receipted.status.success(), "{}", stderr(&receipted));
    let verify = tessera(&[
        "verify",
        &path("receipt.json"),
        "--host",
        &path("keys/host.pub"),
    ]);
    assert!(
        verify.status.success(),
        "{}{}",
        stdout(&verify),
        stderr(&verify)
    );
    let text = stdout(&verify);
    assert!(text.starts_with("OK signature"), "{text}");
    assert!(
        text.contains(&format!("bundle signed by {fingerprint}")),
        "{text}"
    );
    let wrong_host = tessera(&[
        "verify",
        &path("receipt.json"),
        "--host",
        &path("keys/mallory.pub"),
    ]);
    assert!(!wrong_host.status.success());
    assert!(
        stdout(&wrong_host).contains("FAIL signer"),
        "{}",
        stdout(&wrong_host)
    );
    let edited = std::fs::read_to_string(dir.join("receipt.json"))
        .unwrap()
        .replace("\"calculator\"", "\"calculat0r\"");
    std::fs::write(dir.join("edited.json"), edited).unwrap();
    let tampered = tessera(&["verify", &path("edited.json")]);
    assert!(!tampered.status.success());
    assert!(
        stdout(&tampered).contains("FAIL signature"),
        "{}",
        stdout(&tampered)
    );

    let mut serving = serve(&[
        "serve".as_ref(),
        dir.join("served").as_os_str(),
        "--trusted-keys".as_ref(),
        dir.join("keys/alice.pub").as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--no-model".as_ref(),
        "--reload-interval-ms".as_ref(),
        "0".as_ref(),
    ]);
    let Some(address) = serving.address.take() else {
        let _ = serving.child.kill();
        panic!("tessera serve exited before serving:\n{}", serving.log);
    };
    let log = serving.log.clone();
    let models = http(&address, "GET", "/v1/models", "");
    let status = http(&address, "GET", "/v1/status", "");
    let answer = http(
        &address,
        "POST",
        "/v1/chat/completions",
        r#"{"model": "calculator", "messages": [{"role": "user", "content": "2^10 - 1"}]}"#,
    );
    let recorded = http_with(
        &address,
        "POST",
        "/v1/chat/completions",
        "x-tessera-record: true\r\n",
        r#"{"model": "calculator", "messages": [{"role": "user", "content": "3 * 5"}]}"#,
    );
    let _ = serving.child.kill();
    let _ = serving.child.wait();

    // The validator saves the answer and replays it from its record.
    let body = recorded.split("\r\n\r\n").nth(1).unwrap_or_default();
    std::fs::write(dir.join("answer.json"), body).unwrap();
    let replayed = tessera(&[
        "verify",
        &path("answer.json"),
        "--replay",
        "--bundle",
        &path("served/calc-signed.tessera"),
    ]);
    let text = stdout(&replayed);
    assert!(replayed.status.success(), "{text}{}", stderr(&replayed));
    assert!(
        text.contains("the record's request, answer and trace are the ones it vouches for"),
        "{text}"
    );
    assert!(text.contains("OK replay: "), "{text}");
    // A bare receipt holds digests only: replay says what it needs.
    let bare = tessera(&["verify", &path("receipt.json"), "--replay"]);
    assert!(!bare.status.success());
    assert!(
        stderr(&bare).contains("x-tessera-record: true"),
        "{}",
        stderr(&bare)
    );
    // The same record from the audit store.
    let id = serde_json::from_str::<serde_json::Value>(body).unwrap()["tessera"]["audit_id"]
        .as_i64()
        .expect("the answer names its audit record");
    let shown = tessera(&["audit", "show", &id.to_string(), "--json"]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    std::fs::write(dir.join("stored.json"), stdout(&shown)).unwrap();
    let replayed = tessera(&[
        "verify",
        &path("stored.json"),
        "--replay",
        "--bundle",
        &path("served/calc-signed.tessera"),
    ]);
    assert!(replayed.status.success(), "{}", stdout(&replayed));
    let listed = tessera(&["audit", "list", "--expert", "calculator"]);
    assert!(
        stdout(&listed).contains("calculator@0.1.0"),
        "{}",
        stdout(&listed)
    );
    assert!(
        log.contains("serving only bundles signed by the 1 keys"),
        "{log}"
    );
    assert!(log.contains("serving 1 experts"), "{log}");
    assert!(models.contains(&fingerprint), "{models}");
    assert!(!models.contains("unit-converter"), "{models}");
    assert!(
        status.contains("is signed by SHA256:") && status.contains("a key that is not in"),
        "{status}"
    );
    assert!(status.contains("it is not signed"), "{status}");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("1023"),
        "{answer}"
    );
}

/// `kill -9` of a server while it answers (and records) requests from
/// four clients, then a restart: every answer a client received is in the
/// store with the receipt it carried, and the store passes SQLite's
/// integrity check.
#[test]
fn kill_9_under_load_loses_no_acknowledged_record() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let built = tessera(&["build", "tests/plugins/echo"]);
    assert!(built.status.success(), "{}", stderr(&built));
    let bundle = stdout(&built).trim().to_string();
    let dir = scratch("kill9");
    let db = dir.join("audit.sqlite");
    let serve_args = |db: &Path| -> Vec<std::ffi::OsString> {
        [
            "serve",
            "--no-model",
            "--listen",
            "127.0.0.1:0",
            "--reload-interval-ms",
            "0",
            "--audit-db",
        ]
        .iter()
        .map(Into::into)
        .chain([db.as_os_str().to_owned(), bundle.clone().into()])
        .collect()
    };
    let args = serve_args(&db);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let serving = serve(&args);
    let address = serving.address.clone().expect(&serving.log);
    let mut child = serving.child;

    // (prompt, receipt signature) of every answer received in full.
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (address, acknowledged, stop) =
                (address.clone(), acknowledged.clone(), stop.clone());
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let prompt = format!("client {c} request {i}");
                    let body = format!(
                        r#"{{"model": "echo", "messages": [{{"role": "user", "content": "{prompt}"}}]}}"#
                    );
                    let Ok(mut stream) = std::net::TcpStream::connect(&address) else {
                        break;
                    };
                    let sent = write!(
                        stream,
                        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-tessera-receipt: true\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let mut response = String::new();
                    if sent.is_err() || stream.read_to_string(&mut response).is_err() {
                        break;
                    }
                    // Acknowledged: a whole 200 answer with its receipt.
                    let Some(json) = response.split("\r\n\r\n").nth(1) else {
                        break;
                    };
                    let Ok(answer) = serde_json::from_str::<serde_json::Value>(json) else {
                        break;
                    };
                    if !response.starts_with("HTTP/1.1 200") {
                        break;
                    }
                    let signature = answer["tessera"]["receipt"]["signature"]
                        .as_str()
                        .expect("a receipt")
                        .to_string();
                    acknowledged.lock().unwrap().push((prompt, signature));
                }
            })
        })
        .collect();
    // Let the load run, then kill the server mid-flight.
    while acknowledged.lock().unwrap().len() < 200 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 200);

    // The store opens, passes SQLite's check and holds every one.
    let db_arg = db.to_string_lossy().into_owned();
    let check = tessera(&["audit", "check", "--audit-db", &db_arg]);
    assert!(
        check.status.success(),
        "{}{}",
        stdout(&check),
        stderr(&check)
    );
    assert!(stdout(&check).contains("integrity check passes"));
    let export = tessera(&["audit", "export", "--audit-db", &db_arg]);
    assert!(export.status.success(), "{}", stderr(&export));
    let stored: std::collections::HashMap<String, String> = stdout(&export)
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                record["request"]["messages"][0][1]
                    .as_str()
                    .unwrap()
                    .to_string(),
                record["receipt"]["signature"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    for (prompt, signature) in &acknowledged {
        assert_eq!(
            stored.get(prompt),
            Some(signature),
            "acknowledged `{prompt}` is not in the store with its receipt ({} acknowledged, {} stored)",
            acknowledged.len(),
            stored.len()
        );
    }

    // A restarted server opens the same store and keeps appending.
    let serving = serve(&args);
    let mut child = serving.child;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        serving.log.contains(&format!("({} records;", stored.len())),
        "{}",
        serving.log
    );
}

/// `tessera adapt` on a slice of the example dataset: the losses fall
/// below the base model's (training and held out), the adapter answers a
/// training-style question with the trained fact where the base model
/// does not, a seed gives the same file byte for byte, and mistakes are
/// named.
#[test]
fn adapt_trains_a_lora_that_learns_the_data() {
    let models = Path::new(env!("CARGO_TARGET_TMPDIR")).join("models");
    let models = models.to_str().unwrap();
    let pull = tessera(&["models", "pull", "--models-dir", models]);
    assert!(pull.status.success(), "{}", stderr(&pull));
    let dir = scratch("adapt");
    // Three facts of the example fine-tune, a dozen phrasings (its
    // hand-written chats: the training file adds facts to every prompt).
    let all =
        std::fs::read_to_string(repo().join("plugins/harbor-lane-books/data/chats.jsonl")).unwrap();
    let lines: Vec<&str> = all
        .lines()
        .filter(|l| {
            ["Mira Okafor", "9 am", "Ledger"]
                .iter()
                .any(|f| l.contains(f))
        })
        .collect();
    assert!(lines.len() >= 12, "{}", lines.len());
    let data = dir.join("data.jsonl");
    std::fs::write(&data, lines.join("\n")).unwrap();
    let out = dir.join("adapter");
    let adapt = |out: &Path, epochs: &str, extra: &[&str]| {
        let mut args = vec![
            "adapt",
            "--models-dir",
            models,
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--rank",
            "4",
            "--epochs",
            epochs,
            "--lr",
            "3e-3",
            "--holdout",
            "0.2",
            "--seed",
            "1",
        ];
        args.extend_from_slice(extra);
        tessera(&args)
    };
    let run = adapt(&out, "4", &[]);
    assert!(run.status.success(), "{}", stderr(&run));
    let log = stderr(&run);
    assert!(log.contains("held out") && log.contains("tok/s"), "{log}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tessera-adapt.json")).unwrap()).unwrap();
    let last = report["epochs"].as_array().unwrap().last().unwrap();
    let loss = |v: &serde_json::Value| v.as_f64().unwrap();
    assert!(
        loss(&last["train_loss"]) < loss(&report["base"]["train_loss"]) * 0.5,
        "{report}"
    );
    assert!(
        loss(&last["held_out_loss"]) < loss(&report["base"]["held_out_loss"]),
        "{report}"
    );
    assert_eq!(report["examples"]["held_out"], 3, "{report}");

    // The trained behaviour, greedy, through the serving engine.
    let ask = |adapter: Option<&Path>| {
        let mut args = vec![
            "generate",
            "--models-dir",
            models,
            "--prompt",
            "Who founded Harbor Lane Books?",
            "--max-tokens",
            "24",
            "--temperature",
            "0",
        ];
        if let Some(a) = adapter {
            args.extend(["--adapter", a.to_str().unwrap()]);
        }
        let o = tessera(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let tuned = ask(Some(&out));
    assert!(tuned.contains("Mira Okafor"), "{tuned}");
    let base = ask(None);
    assert!(!base.contains("Okafor"), "{base}");

    // Deterministic for a seed.
    let (one, two) = (dir.join("one"), dir.join("two"));
    for o in [&one, &two] {
        let run = adapt(o, "1", &[]);
        assert!(run.status.success(), "{}", stderr(&run));
    }
    let weights = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert_eq!(weights(&one), weights(&two));
    assert_ne!(weights(&one), weights(&out));

    // Mistakes: an adapter already there, a bad line, a bad target.
    let again = adapt(&out, "1", &[]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    std::fs::write(&data, format!("{}\n{{\"text\": 1}}\n", lines[0])).unwrap();
    let bad = adapt(&dir.join("bad"), "1", &[]);
    assert!(
        stderr(&bad).contains("data.jsonl:2: has keys [\"text\"]"),
        "{}",
        stderr(&bad)
    );
    let bad = adapt(&dir.join("bad"), "1", &["--targets", "q,lm_head"]);
    assert!(stderr(&bad).contains("`lm_head`"), "{}", stderr(&bad));
}

/// The example fine-tune from a fresh clone, as its README tells it:
/// `train.sh` trains it with `tessera adapt`, `tessera build` bundles the
/// weights with the hooks component, `tessera serve` lists it with its
/// parent, a chat with `model` = the adapter answers with the trained
/// facts (where the base model does not), and `tessera/auto` routes a
/// bookshop question to it and an arithmetic one elsewhere.
#[test]
fn the_example_fine_tune_trains_serves_and_is_routed() {
    let models = Path::new(env!("CARGO_TARGET_TMPDIR")).join("models");
    let pull = tessera(&["models", "pull", "--models-dir", models.to_str().unwrap()]);
    assert!(pull.status.success(), "{}", stderr(&pull));
    let trained = Command::new("bash")
        .arg("plugins/harbor-lane-books/train.sh")
        .current_dir(repo())
        .env("TESSERA", env!("CARGO_BIN_EXE_tessera"))
        .env("TESSERA_MODELS_DIR", &models)
        .output()
        .unwrap();
    assert!(trained.status.success(), "{}", stderr(&trained));
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo().join("plugins/harbor-lane-books/adapter/tessera-adapt.json"))
            .unwrap(),
    )
    .unwrap();
    let last = &report["epochs"][2];
    assert!(
        last["held_out_loss"].as_f64().unwrap()
            < report["base"]["held_out_loss"].as_f64().unwrap() / 2.0,
        "{report}"
    );
    for plugin in ["plugins/harbor-lane-books", "plugins/calculator"] {
        let built = tessera(&["build", plugin]);
        assert!(built.status.success(), "{}", stderr(&built));
    }

    let args: Vec<std::ffi::OsString> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--reload-interval-ms",
        "0",
        "--no-audit",
        "--models-dir",
    ]
    .iter()
    .map(Into::into)
    .chain([
        models.clone().into_os_string(),
        "plugins/harbor-lane-books".into(),
        "plugins/calculator".into(),
    ])
    .collect();
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let serving = serve(&args);
    let address = serving.address.clone().expect(&serving.log);
    let mut child = serving.child;
    let body = |r: &str| -> serde_json::Value {
        let (_, body) = r.split_once("\r\n\r\n").unwrap();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {r}"))
    };

    let models_list = body(&http(&address, "GET", "/v1/models", ""));
    let entry = models_list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "harbor-lane-books")
        .unwrap_or_else(|| panic!("{models_list}"))
        .clone();
    assert_eq!(entry["parent"], "SmolLM2-135M-Instruct", "{entry}");
    assert_eq!(entry["tessera"]["kind"], "adapter", "{entry}");
    assert_eq!(entry["tessera"]["rank"], 8, "{entry}");

    let chat = |model: &str, question: &str| -> serde_json::Value {
        let request = serde_json::json!({
            "model": model, "max_tokens": 40,
            "messages": [{"role": "user", "content": question}],
        });
        let r = http(
            &address,
            "POST",
            "/v1/chat/completions",
            &request.to_string(),
        );
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        body(&r)
    };
    let text = |v: &serde_json::Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let question = "When is Harbor Lane Books open?";
    let tuned = chat("harbor-lane-books", question);
    assert!(text(&tuned).contains("9 am to 6 pm"), "{tuned}");
    assert_eq!(tuned["tessera"]["expert"], "harbor-lane-books", "{tuned}");
    let base = chat("SmolLM2-135M-Instruct", question);
    assert!(!text(&base).contains("9 am to 6 pm"), "{base}");

    let routed = chat(
        "tessera/auto",
        "What are the opening hours of Harbor Lane Books on Sunday?",
    );
    assert_eq!(
        routed["tessera"]["answered_by"], "harbor-lane-books",
        "{routed}"
    );
    let routed = chat("tessera/auto", "What is 12 * (3 + 4)?");
    assert_eq!(routed["tessera"]["answered_by"], "calculator", "{routed}");
    let _ = child.kill();
    let _ = child.wait();
}

/// `tessera eval` on a slice of the held-out set, with a host of its own
/// (no model: the calculator answers arithmetic exactly without one): the
/// summary counts correct answers per model and category, and a model the
/// host does not serve counts as errors.
#[test]
fn eval_scores_a_slice_against_its_own_host() {
    let built = tessera(&["build", "plugins/calculator"]);
    assert!(built.status.success(), "{}", stderr(&built));
    let dir = scratch("eval");
    let details = dir.join("details.jsonl");
    let out = tessera(&[
        "eval",
        "tests/data/eval/test.jsonl",
        "--models",
        "calculator,nobody",
        "--categories",
        "arithmetic",
        "--limit",
        "3",
        "--json",
        "--details",
        details.to_str().unwrap(),
        "--",
        "--no-model",
        "--no-audit",
        "plugins/calculator",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Not a terminal: the last item's progress line stands in for the bar.
    assert!(
        stderr(&out).contains("3/3 items") && stderr(&out).contains("calculator 3/3"),
        "{}",
        stderr(&out)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let calculator = &summary["models"][0];
    assert_eq!(calculator["model"], "calculator", "{summary}");
    assert_eq!(calculator["all"]["total"], 3, "{summary}");
    assert_eq!(calculator["all"]["correct"], 3, "{summary}");
    assert_eq!(calculator["all"]["errors"], 0, "{summary}");
    assert_eq!(calculator["categories"]["arithmetic"]["correct"], 3);
    let nobody = &summary["models"][1];
    assert_eq!(nobody["all"]["errors"], 3, "{summary}");
    assert_eq!(nobody["all"]["correct"], 0, "{summary}");
    let lines = std::fs::read_to_string(&details).unwrap();
    assert_eq!(lines.lines().count(), 6);
    assert!(lines.contains("HTTP 404"), "{lines}");

    let bad = tessera(&["eval", "Cargo.toml", "--models", "x"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("Cargo.toml:1:"), "{}", stderr(&bad));
}

/// `tessera eval` of a development-set slice on the real models, through
/// every strategy: exact experts answer their categories right in all of
/// them (MoA selects the certain answer), a fact from a published table
/// comes from the reference expert, and a prompt routed to experts that
/// all refuse ("How many sides does a hexagon have?" scores highest for
/// text-stats, then calculator and unit-converter) is answered by the
/// base model, never an error, with the refusals listed.
#[test]
fn eval_through_every_strategy_falls_back_and_selects_exact_answers() {
    let plugins = [
        "plugins/dates",
        "plugins/text-stats",
        "plugins/calculator",
        "plugins/unit-converter",
        "plugins/reference",
    ];
    for p in plugins {
        let built = tessera(&["build", p]);
        assert!(built.status.success(), "{}", stderr(&built));
    }
    let models = Path::new(env!("CARGO_TARGET_TMPDIR")).join("models");
    let models = models.to_str().unwrap();
    let pull = tessera(&["models", "pull", "--models-dir", models]);
    assert!(pull.status.success(), "{}", stderr(&pull));
    let dir = scratch("eval-strategies");
    let details = dir.join("details.jsonl");
    let mut args = vec![
        "eval",
        "tests/data/eval/dev.jsonl",
        "--models",
        "tessera/auto,tessera/auto:moa,tessera/auto:cascade",
        "--categories",
        "dates,text-stats,facts",
        "--max-tokens",
        "48",
        "--json",
        "--details",
        details.to_str().unwrap(),
        "--",
        "--models-dir",
        models,
        "--no-audit",
        "--cascade-calibration",
        "plugins/cascade-calibration.json",
    ];
    args.extend(plugins);
    let out = tessera(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for model in summary["models"].as_array().unwrap() {
        assert_eq!(model["all"]["errors"], 0, "{model}");
        for exact in ["dates", "text-stats"] {
            let c = &model["categories"][exact];
            assert!(c["total"].as_u64().unwrap() >= 7, "{model}");
            assert_eq!(c["correct"], c["total"], "{}: {exact}", model["model"]);
        }
    }
    let outcomes: Vec<tessera_host::eval::Outcome> = std::fs::read_to_string(&details)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let hexagon: Vec<_> = outcomes.iter().filter(|o| o.id == "dev-facts-03").collect();
    assert_eq!(hexagon.len(), 3);
    for o in hexagon {
        assert_eq!(o.status, 200, "{o:?}");
        assert_eq!(
            o.answered_by.as_deref(),
            Some("SmolLM2-135M-Instruct"),
            "{o:?}"
        );
        assert!(o.fallbacks.iter().any(|e| e == "text-stats"), "{o:?}");
    }
    // "Which element has the symbol K?": the base model says "K"; the
    // periodic table says potassium.
    let potassium: Vec<_> = outcomes.iter().filter(|o| o.id == "dev-facts-13").collect();
    assert_eq!(potassium.len(), 3);
    for o in potassium {
        assert!(o.correct, "{o:?}");
        assert_eq!(o.answered_by.as_deref(), Some("reference"), "{o:?}");
    }
    // MoA kept the exact tools' answers by their certainty.
    let moa_dates = outcomes
        .iter()
        .filter(|o| o.model == "tessera/auto:moa" && o.category == "dates");
    for o in moa_dates {
        assert_eq!(o.answered_by.as_deref(), Some("dates"), "{o:?}");
        assert!(
            matches!(o.selected_by.as_deref(), Some("confidence" | "only-answer")),
            "{o:?}"
        );
    }
}

/// Many stateless hosts: `tessera serve` fetches a `.tessera` pack from a
/// URL pinned by sha256 (and refuses bytes that are not the pinned ones),
/// serves a model from an upstream with `--upstream`, says so in
/// `/v1/models`, `/healthz` and `/readyz`, and answers 503 naming the
/// upstream when it is down.
#[test]
fn serve_fetches_pinned_packs_and_serves_upstream_models() {
    use sha2::Digest;
    let dir = scratch("pinned");
    let built = tessera(&["build", "plugins/calculator"]);
    assert!(built.status.success(), "{}", stderr(&built));
    let pack = dir.join("calculator.tessera");
    let packed = tessera(&["pack", "plugins/calculator", "-o", pack.to_str().unwrap()]);
    assert!(packed.status.success(), "{}", stderr(&packed));
    let bytes = std::fs::read(&pack).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&bytes));

    // A file server on loopback.
    let files = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/calculator.tessera", files.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut stream in files.incoming().flatten() {
            let mut request = [0u8; 2048];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                bytes.len()
            );
            let _ = stream.write_all(&bytes);
        }
    });
    // Nothing listens where the upstream is said to be.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = format!(
        "b=http://{}/v1#SmolLM2-135M-Instruct",
        dead.local_addr().unwrap()
    );
    drop(dead);
    let cache = dir.join("cache");
    let serve_with = |pin: &str| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "serve".as_ref(),
            "--no-model".as_ref(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--reload-interval-ms".as_ref(),
            "0".as_ref(),
            "--cache-dir".as_ref(),
            cache.as_os_str(),
            "--bundle-url".as_ref(),
        ];
        args.push(std::ffi::OsStr::new(pin));
        args.push(std::ffi::OsStr::new("--upstream"));
        args.push(std::ffi::OsStr::new(&upstream));
        serve(&args)
    };

    let wrong = format!("{url}#sha256={}", "0".repeat(64));
    let Serving { mut child, log, .. } = serve_with(&wrong);
    assert!(!child.wait().unwrap().success(), "{log}");
    assert!(
        log.contains(&format!(
            "its sha256 is {sha}, but the pin says {}",
            "0".repeat(64)
        )),
        "{log}"
    );

    let serving = serve_with(&format!("{url}#sha256={sha}"));
    let (mut child, log) = (serving.child, serving.log);
    // Read on, so that the host's log never fills the pipe.
    let mut stderr = serving.stderr;
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let Some(address) = serving.address else {
        let _ = child.kill();
        panic!("tessera serve did not start:\n{log}");
    };
    assert!(log.contains("serving model `b`"), "{log}");
    let models = http(&address, "GET", "/v1/models", "");
    assert!(
        models.contains("\"id\":\"calculator\"") && models.contains("\"id\":\"b\""),
        "{models}"
    );
    let calc = http(
        &address,
        "POST",
        "/v1/chat/completions",
        r#"{"model": "calculator", "messages": [{"role": "user", "content": "6 * 7"}]}"#,
    );
    assert!(
        calc.starts_with("HTTP/1.1 200") && calc.contains("42"),
        "{calc}"
    );
    let down = http(
        &address,
        "POST",
        "/v1/chat/completions",
        r#"{"model": "b", "messages": [{"role": "user", "content": "hi"}]}"#,
    );
    assert!(down.starts_with("HTTP/1.1 503"), "{down}");
    assert!(down.contains("upstream `b`"), "{down}");
    let ready = http(&address, "GET", "/readyz", "");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let health = http(&address, "GET", "/healthz", "");
    assert!(health.contains("\"upstreams\":{\"b\":"), "{health}");
    let _ = child.kill();
    let _ = child.wait();
    // The pack is kept in the cache under its digest.
    assert!(cache.join(format!("bundles/{sha}.tessera")).is_file());
}
