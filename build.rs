//! Builds the cxx bridge and the Mesos-independent C++ (always), finds a
//! Mesos install and, when found, compiles the Mesos shim and exports the
//! module symbol from the cdylib.
//!
//! Mesos is found through, in this order (all combine):
//! - `MESOS_HOME`: an install prefix; `$MESOS_HOME/include` must hold
//!   `mesos/`, `stout/`, `process/` and the generated `*.pb.h`;
//! - `pkg-config mesos`;
//! - `MESOS_CXXFLAGS`: extra compiler flags appended verbatim (`-I` dirs of a
//!   build tree, the defines Mesos was built with: `-DUSE_SSL_SOCKET=1` ...).
//!
//! It counts as found when `mesos/version.hpp` is in one of the `-I` dirs.
//! `MESOS_CXX_STD` picks the standard (default `c++11`, Mesos 1.11's).
//! With `--features mesos` a missing Mesos is an error.

use std::path::{Path, PathBuf};

const MODULE_SYMBOL: &str = "org_mesos_gelf_GelfContainerLogger";
const PROBE_SYMBOL: &str = "mesos_gelf_export_probe";

fn mesos_flags() -> Vec<String> {
    let mut flags = Vec::new();
    if let Ok(home) = std::env::var("MESOS_HOME") {
        flags.push(format!("-I{home}/include"));
    }
    if let Ok(out) = std::process::Command::new("pkg-config")
        .args(["--cflags", "mesos"])
        .output()
    {
        if out.status.success() {
            flags.extend(
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(String::from),
            );
        }
    }
    if let Ok(extra) = std::env::var("MESOS_CXXFLAGS") {
        flags.extend(extra.split_whitespace().map(String::from));
    }
    flags
}

fn find_version_hpp(flags: &[String]) -> Option<PathBuf> {
    flags
        .iter()
        .filter_map(|f| f.strip_prefix("-I").or_else(|| f.strip_prefix("-isystem")))
        .map(|d| Path::new(d).join("mesos/version.hpp"))
        .find(|p| p.is_file())
}

fn mesos_version(hpp: &Path) -> String {
    let text = std::fs::read_to_string(hpp).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("#define MESOS_VERSION ")
                .map(|v| v.trim().trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    for v in [
        "MESOS_HOME",
        "MESOS_CXXFLAGS",
        "MESOS_CXX_STD",
        "PKG_CONFIG_PATH",
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    for f in [
        "cpp/shim_core.cpp",
        "cpp/shim_selftest.cpp",
        "cpp/export_probe.cpp",
        "cpp/logger.cpp",
        "include/shim_core.hpp",
        "include/logger.hpp",
        "src/bridge.rs",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    let std_flag = format!(
        "-std={}",
        std::env::var("MESOS_CXX_STD").unwrap_or_else(|_| "c++11".into())
    );

    let mflags = mesos_flags();
    let found = find_version_hpp(&mflags);

    let mut b = cxx_build::bridge("src/bridge.rs");
    b.file("cpp/shim_core.cpp")
        .file("cpp/shim_selftest.cpp")
        .file("cpp/export_probe.cpp")
        .flag(&std_flag)
        .flag_if_supported("-Wno-unused-parameter");
    let mut exported = vec![PROBE_SYMBOL];
    match &found {
        Some(hpp) => {
            let version = mesos_version(hpp);
            println!(
                "cargo:warning=building the Mesos shim against Mesos {version} ({})",
                hpp.display()
            );
            b.file("cpp/logger.cpp");
            // Mesos' own headers as system headers: their warnings are not
            // ours to fix, and would bury ours.
            for f in &mflags {
                match f.strip_prefix("-I") {
                    Some(dir) => b.flag(format!("-isystem{dir}")),
                    None => b.flag(f),
                };
            }
            b.define(
                "MESOS_GELF_BUILT_AGAINST",
                Some(format!("\"{version}\"").as_str()),
            );
            exported.push(MODULE_SYMBOL);
        }
        None => {
            if std::env::var("CARGO_FEATURE_MESOS").is_ok() {
                panic!(
                    "feature `mesos`: no Mesos install found (no mesos/version.hpp under MESOS_HOME/include, \
                     `pkg-config mesos` or the -I dirs of MESOS_CXXFLAGS)"
                );
            }
            println!("cargo:warning=Mesos not found (set MESOS_HOME or MESOS_CXXFLAGS): building without the Mesos shim; everything else is built and tested");
        }
    }
    b.compile("mesos-gelf-bridge");

    // The lean companion needs no C++ runtime: let the linker drop the
    // libraries it does not use (libstdc++ comes with the cxx bridge).
    println!("cargo:rustc-link-arg-bin=mesos-gelf-companion=-Wl,--as-needed");
    // Not position-independent: nothing to relocate at load, so its
    // read-only data stays shared clean instead of becoming ~1 MB private
    // dirty in each of hundreds of companions.
    println!("cargo:rustc-link-arg-bin=mesos-gelf-companion=-no-pie");

    // Export the module global from the cdylib: pull its object in and make
    // it global in the version script (merged with rustc's `local: *`).
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let script = out.join("exports.map");
    let body: String = exported.iter().map(|s| format!("{s}; ")).collect();
    std::fs::write(&script, format!("{{ global: {body}}};\n")).unwrap();
    for s in &exported {
        println!("cargo:rustc-cdylib-link-arg=-Wl,--undefined={s}");
    }
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        script.display()
    );
}
