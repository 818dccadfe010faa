//! JavaScript runner: answers "what does this code print?" by running the
//! code, in the Boa engine compiled into this component. What the snippet
//! can reach is what the engine gives it plus `console`: no files, no
//! network, no clock (the component has no imports for them); loops and
//! recursion are bounded by the engine's limits, and the host's deadline
//! and memory limit bound the rest.
//!
//! The answer is what `console.log` (and `info`, `warn`, `error`, `debug`)
//! wrote, formatted as Node.js does for strings, numbers, arrays and plain
//! objects; when the snippet logs nothing, the value of its last
//! expression. An uncaught exception is part of the answer ("it throws
//! TypeError: ..."). Code that looks like Python, or a question with no
//! code, is refused with `invalid-input` so that `tessera/auto` falls back
//! to the next candidate.

mod source;

use std::cell::RefCell;

use boa_engine::{Context, JsResult, JsValue, NativeFunction, Source, js_string};
use tessera_sdk::prelude::*;

/// Most bytes of output kept; the rest is cut and said to be.
pub const MAX_OUTPUT: usize = 16 * 1024;
/// Most loop iterations a snippet may run (all loops together count per
/// loop, as Boa counts them).
const LOOP_LIMIT: u64 = 1_000_000;
/// Deepest recursion.
const RECURSION_LIMIT: usize = 256;

/// `console`, written in JavaScript over one native `__emit(line)`.
const PRELUDE: &str = r#"
(() => {
  const fmt = (v, depth) => {
    if (typeof v === 'string') return depth ? "'" + v + "'" : v;
    if (typeof v === 'function') return '[Function: ' + (v.name || '(anonymous)') + ']';
    if (typeof v === 'bigint') return String(v) + 'n';
    if (Object.is(v, -0)) return '-0';
    if (v === null || typeof v !== 'object') return String(v);
    if (depth > 2) return Array.isArray(v) ? '[Array]' : '[Object]';
    if (Array.isArray(v)) {
      return v.length ? '[ ' + v.map((x) => fmt(x, depth + 1)).join(', ') + ' ]' : '[]';
    }
    const keys = Object.keys(v);
    return keys.length
      ? '{ ' + keys.map((k) => k + ': ' + fmt(v[k], depth + 1)).join(', ') + ' }'
      : '{}';
  };
  const log = (...args) => __emit(args.map((a) => fmt(a, 0)).join(' '));
  globalThis.console = { log, info: log, warn: log, error: log, debug: log };
})();
"#;

thread_local! {
    /// What the snippet logged, and whether some was cut.
    static OUTPUT: RefCell<(String, bool)> = const { RefCell::new((String::new(), false)) };
}

fn emit(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let line = match args.first() {
        Some(value) => value.to_string(context)?.to_std_string_escaped(),
        None => String::new(),
    };
    OUTPUT.with_borrow_mut(|(out, cut)| {
        if out.len() + line.len() + 1 > MAX_OUTPUT {
            *cut = true;
        } else {
            out.push_str(&line);
            out.push('\n');
        }
    });
    Ok(JsValue::undefined())
}

/// What running `code` showed.
#[derive(Debug, PartialEq)]
pub struct Run {
    /// Logged lines.
    pub output: String,
    /// Output was cut at [`MAX_OUTPUT`].
    pub cut: bool,
    /// The last expression's value, when it is not `undefined`.
    pub value: Option<String>,
    /// The uncaught exception, if one ended the run.
    pub error: Option<String>,
}

/// Run `code` in a fresh engine.
pub fn run(code: &str) -> Run {
    OUTPUT.with_borrow_mut(|o| *o = (String::new(), false));
    let mut context = Context::default();
    let limits = context.runtime_limits_mut();
    limits.set_loop_iteration_limit(LOOP_LIMIT);
    limits.set_recursion_limit(RECURSION_LIMIT);
    let setup = context
        .register_global_builtin_callable(
            js_string!("__emit"),
            1,
            NativeFunction::from_fn_ptr(emit),
        )
        .and_then(|()| context.eval(Source::from_bytes(PRELUDE)).map(drop));
    let result = setup.and_then(|()| context.eval(Source::from_bytes(code)));
    let (value, error) = match result {
        Ok(value) if value.is_undefined() => (None, None),
        Ok(value) => (
            Some(
                value
                    .to_string(&mut context)
                    .map(|s| s.to_std_string_escaped())
                    .unwrap_or_else(|_| value.display().to_string()),
            ),
            None,
        ),
        Err(e) => (None, Some(e.to_string())),
    };
    let (output, cut) = OUTPUT.with_borrow_mut(std::mem::take);
    Run {
        output,
        cut,
        value,
        error,
    }
}

/// The answer for a run: the output itself, so that a reader (or a
/// checker) sees exactly what the console would.
pub fn answer(run: &Run) -> String {
    let mut text = String::new();
    if !run.output.is_empty() {
        text.push_str(&run.output);
        if run.cut {
            text.push_str(&format!("[output cut at {MAX_OUTPUT} bytes]\n"));
        }
    }
    if let Some(error) = &run.error {
        text.push_str(&format!("It throws {error}\n"));
    } else if run.output.is_empty() {
        match &run.value {
            Some(value) => text.push_str(&format!("It logs nothing; its value is {value}\n")),
            None => text.push_str("It logs nothing.\n"),
        }
    }
    text.trim_end().to_string()
}

struct JsRunner;

impl Expert for JsRunner {
    fn handle(req: Request) -> Result<Response, Error> {
        let question = req.require_user_message()?;
        let code = source::javascript(question).map_err(Error::invalid_input)?;
        let run = run(&code);
        log::with_fields(
            log::Level::Info,
            "ran",
            &[
                ("bytes", &code.len().to_string()),
                ("error", run.error.as_deref().unwrap_or("")),
            ],
        );
        let mut response = Response::new(answer(&run))
            .with_confidence(1.0)
            .with_metadata("language", "javascript");
        if let Some(error) = &run.error {
            response = response.with_metadata("error", error.clone());
        }
        Ok(response)
    }
}

export_expert!(JsRunner);

#[cfg(test)]
mod tests {
    use super::*;

    // Expected outputs are Node.js 20's for the same code.
    #[test]
    fn logs_like_node() {
        let out = |code: &str| answer(&run(code));
        assert_eq!(out("console.log(6 * 7 - 2)"), "40");
        assert_eq!(out("console.log([5, 1, 4].sort().join('-'))"), "1-4-5");
        assert_eq!(
            out("console.log([1, 'a', [2]], {x: 1, y: 'b'})"),
            "[ 1, 'a', [ 2 ] ] { x: 1, y: 'b' }"
        );
        assert_eq!(
            out("console.log(0.1 + 0.2); console.log(10 / 4)"),
            "0.30000000000000004\n2.5"
        );
        assert_eq!(
            out("let s = 0; for (let i = 1; i <= 4; i++) { s += i; } console.log(s);"),
            "10"
        );
        assert_eq!(out("console.log(typeof null, [] + [], 7 % 3)"), "object  1");
        assert_eq!(out("2 ** 10"), "It logs nothing; its value is 1024");
    }

    #[test]
    fn exceptions_and_limits_are_answers_not_crashes() {
        let r = run("console.log('before'); null.x");
        assert_eq!(r.output, "before\n");
        assert!(r.error.as_deref().unwrap().contains("TypeError"), "{r:?}");
        let r = run("while (true) {}");
        assert!(r.error.is_some(), "an endless loop ends: {r:?}");
        let r = run("function f(n) { return f(n + 1); } f(0)");
        assert!(r.error.is_some(), "deep recursion ends: {r:?}");
        let r = run("for (let i = 0; i < 100000; i++) console.log('x'.repeat(100))");
        assert!(r.cut && r.output.len() <= MAX_OUTPUT, "output is capped");
    }
}
