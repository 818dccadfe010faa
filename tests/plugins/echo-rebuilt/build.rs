//! Builds `echo`'s source with the `rebuilt` cfg: the same expert, rebuilt
//! with one branch changed (the replay test's divergent component).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(rebuilt)");
    println!("cargo::rustc-cfg=rebuilt");
}
