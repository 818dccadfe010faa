//! `echo`, rebuilt with one branch changed (see `build.rs`).

#[path = "../../echo/src/lib.rs"]
mod echo;
