//! Build script: only turns `NTPKIT_SKIP_INTEROP=1` into the `ntpkit_skip_interop` cfg, so that
//! the interop tests (tests/interop.rs) report as *ignored*, never as passed, when explicitly
//! skipped.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(ntpkit_skip_interop)");
    println!("cargo::rerun-if-env-changed=NTPKIT_SKIP_INTEROP");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("NTPKIT_SKIP_INTEROP").as_deref() == Ok("1") {
        println!("cargo::rustc-cfg=ntpkit_skip_interop");
    }
}
